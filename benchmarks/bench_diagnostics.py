"""Diagnostics on CPU: batched JVP throughput, and closed-form linear distillation against Adam.

    pytest benchmarks/bench_diagnostics.py --benchmark-group-by=group --benchmark-columns=min,mean,rounds -s

- jvp: K = 16 probes through a small UNet-like network (convolutions, group norm, attention)
  with fastgauss.jvp (forward mode under vmap) against a Python loop of
  torch.autograd.functional.jvp (the goal: at least 4x the probes per second).
- distill: the closed form from streamed moments against the paper's Adam procedure (200
  epochs), both fitting the Gaussian denoiser of the digits data (whose exact W is known):
  both times and Frobenius errors are printed.
"""

import time

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import fastgauss
from fastgauss import reference as ref
from fastgauss.data import load_dataset


class UNetish(nn.Module):
    def __init__(self, channels=3, width=32):
        super().__init__()
        self.down = nn.Conv2d(channels, width, 3, padding=1)
        self.norm = nn.GroupNorm(8, width)
        self.mid = nn.Conv2d(width, width, 3, padding=1, stride=2)
        self.attn = nn.MultiheadAttention(width, 4, batch_first=True)
        self.up = nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)
        self.out = nn.Conv2d(2 * width, channels, 3, padding=1)

    def forward(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        h = torch.nn.functional.silu(self.norm(self.down(x / (1 + s))))
        m = self.mid(h)
        b, c, hh, ww = m.shape
        seq = m.flatten(2).transpose(1, 2)
        seq = seq + self.attn(seq, seq, seq, need_weights=False)[0]
        u = self.up(seq.transpose(1, 2).reshape(b, c, hh, ww))
        return x + s * self.out(torch.cat([u, h], 1))


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return UNetish().eval()


@pytest.mark.benchmark(group="jvp K=16 probes, B=8, 3x16x16, UNet-like")
@pytest.mark.parametrize("method", ["autograd.functional loop", "fastgauss.jvp"])
def test_jvp_throughput(benchmark, network, method):
    x = torch.randn(8, 3, 16, 16)
    v = torch.randn(16, 8, 3, 16, 16)
    if method == "fastgauss.jvp":
        fn = lambda: fastgauss.jvp(network, x, 0.5, v)[1]  # noqa: E731
    else:
        def fn():
            # double-backward needs the math attention kernel, as forward mode does in fastgauss.jvp
            with sdpa_kernel(SDPBackend.MATH):
                return torch.stack([torch.autograd.functional.jvp(lambda t: network(t, 0.5), x, vk)[1] for vk in v])
    out = benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    assert out.shape == v.shape


def test_distill_closed_form_against_adam():
    data = load_dataset("digits").double()
    gauss = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data), dtype=torch.float64)
    sigma, target = 0.5, 1e-2
    exact = ref.gaussian_jacobian(sigma, gauss.eigvals, gauss.eigvecs)
    start = time.perf_counter()
    closed = fastgauss.distill_linear(gauss, data, [sigma], generator=torch.Generator().manual_seed(0))
    closed_time = time.perf_counter() - start
    closed_err = ((closed.weight[0] - exact).norm() / exact.norm()).item()
    epochs = 200
    start = time.perf_counter()
    weight = fastgauss.distill_linear(gauss, data, [sigma], method="adam", epochs=epochs, lr=1e-2, batch_size=128,
                                      generator=torch.Generator().manual_seed(0)).weight[0]
    adam_time = time.perf_counter() - start
    adam_err = ((weight - exact).norm() / exact.norm()).item()
    print(f"\ndistill at sigma={sigma} on digits (N=1797, d=64): closed form {closed_time:.3f} s, error {closed_err:.2e}; "
          f"Adam {epochs} epochs {adam_time:.3f} s, error {adam_err:.2e}; speedup {adam_time / closed_time:.1f}x")
    assert closed_err < target
