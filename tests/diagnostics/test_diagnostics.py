"""Linearity and Jacobian diagnostics: jvp, linearity_score, denoiser_rmse, distill_linear, jacobian_spectrum."""

import math

import pytest
import torch
from torch import nn

import fastgauss
from fastgauss import reference as ref
from helpers import rel_err


class TinyUNetish(nn.Module):
    """Conv + GroupNorm + self-attention + skip: the layers a diffusion network has."""

    def __init__(self, channels=1, width=8):
        super().__init__()
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.norm = nn.GroupNorm(2, width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.out = nn.Conv2d(width, channels, 3, padding=1)

    def forward(self, x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        h = torch.nn.functional.silu(self.norm(self.inp(x / (1 + s))))
        b, c, hh, ww = h.shape
        seq = h.flatten(2).transpose(1, 2)
        seq = seq + self.attn(seq, seq, seq, need_weights=False)[0]
        return x + self.out(seq.transpose(1, 2).reshape(b, c, hh, ww)) * s


def _mlp(d):
    return nn.Sequential(nn.Linear(d, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, d))


@pytest.mark.parametrize("k,chunk", [(None, None), (1, None), (16, None), (16, 5)])
@pytest.mark.parametrize("kind", ["mlp", "unet"])
def test_jvp_matches_finite_differences_and_the_autograd_jacobian(kind, k, chunk):
    torch.manual_seed(0)
    if kind == "mlp":
        net = _mlp(6).double().eval()
        denoiser, x = (lambda t, s: net(t) * (1 + s)), torch.randn(3, 6, dtype=torch.float64)
    else:
        net = TinyUNetish().double().eval()
        denoiser, x = net, torch.randn(2, 1, 4, 4, dtype=torch.float64)
    sigma = 0.7
    v = torch.randn(((k,) if k else ()) + tuple(x.shape), dtype=torch.float64)
    d, jv = fastgauss.jvp(denoiser, x, sigma, v, chunk=chunk)
    assert torch.allclose(d, denoiser(x, sigma))
    vk = v if k else v[None]
    jac = torch.autograd.functional.jacobian(lambda t: denoiser(t, sigma), x)  # [*x, *x]
    flat_jac = jac.reshape(x.numel(), x.numel())
    expected = (vk.reshape(vk.shape[0], -1) @ flat_jac.T).reshape(vk.shape)
    assert rel_err(jv if k else jv[None], expected) < 1e-10
    h = 1e-6
    fd = (denoiser(x + h * vk[0], sigma) - denoiser(x - h * vk[0], sigma)) / (2 * h)
    assert rel_err((jv if k else jv[None])[0], fd) < 1e-6


def test_jvp_uses_the_analytic_paths(monkeypatch):
    """fastgauss.jvp hands the Gaussian and empirical denoisers to their own .jvp: proved by
    counting those calls and by making the generic forward-mode path (torch.func.jvp) fail."""
    g = torch.Generator().manual_seed(1)
    den = fastgauss.GaussianDenoiser(torch.zeros(5), torch.tensor([2.0, 1.0]), torch.eye(5)[:, :2], dtype=torch.float64)
    data = torch.randn(30, 5, generator=g, dtype=torch.float64)
    emp = fastgauss.EmpiricalDenoiser(data)
    x, v = torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    analytic = []
    for cls in (fastgauss.GaussianDenoiser, fastgauss.EmpiricalDenoiser):
        monkeypatch.setattr(cls, "jvp", lambda self, *a, _real=cls.jvp, **kw: analytic.append(type(self)) or _real(self, *a, **kw))

    def generic(*args, **kwargs):
        raise AssertionError("the generic forward-mode path ran")

    monkeypatch.setattr(torch.func, "jvp", generic)
    _, jv = fastgauss.jvp(den, x, 0.5, v)
    assert rel_err(jv, v @ ref.gaussian_jacobian(0.5, den.eigvals, den.eigvecs)) < 1e-12
    _, jv = fastgauss.jvp(emp, x, 0.5, v)
    expected = torch.stack([v[:, b] @ ref.empirical_jacobian(x[b], 0.5, data) for b in range(3)], 1)
    assert rel_err(jv, expected) < 1e-6
    assert analytic == [fastgauss.GaussianDenoiser, fastgauss.EmpiricalDenoiser]
    with pytest.raises(AssertionError, match="generic"):  # and a plain function does take the generic path
        fastgauss.jvp(lambda t, s: 2 * t, x, 0.5, v)


def test_linearity_of_linear_gaussian_and_nonlinear_denoisers():
    g = torch.Generator().manual_seed(2)
    data = torch.randn(400, 8, generator=g, dtype=torch.float64)
    a = torch.randn(8, 8, generator=g, dtype=torch.float64)
    sigmas = [0.01, 0.5, 10.0]
    linear = fastgauss.linearity_score(lambda x, s: x @ a.T, data, sigmas, n=50,
                                       generator=torch.Generator().manual_seed(0))
    assert torch.allclose(linear.value, torch.ones(3, dtype=torch.float64), atol=1e-6)
    l2 = fastgauss.linearity_score(lambda x, s: x @ a.T, data, sigmas, n=50, metric="relative_l2")
    assert l2.value.max() < 1e-6
    m = fastgauss.Moments().update(data)
    gauss = fastgauss.GaussianDenoiser(torch.zeros(8), *m.eigh(), dtype=torch.float64)  # mu = 0: linear
    assert torch.allclose(fastgauss.linearity_score(gauss, data, sigmas, n=50).value,
                          torch.ones(3, dtype=torch.float64), atol=1e-6)
    few = fastgauss.EmpiricalDenoiser(data[:4])  # memorizes 4 points: strongly nonlinear at mid sigma
    score = fastgauss.linearity_score(few, data, [0.7], n=100).value
    assert score.item() < 0.9
    assert "linearity" in str(linear) and len(linear.as_dict()["sigma"]) == 3


def test_linearity_reuses_the_same_noise_across_sigmas():
    seen = []

    def spy(x, s):
        seen.append(x.clone())
        return x

    data = torch.randn(20, 3, dtype=torch.float64)
    fastgauss.linearity_score(spy, data, [1.0, 2.0], n=5, generator=torch.Generator().manual_seed(3))
    # x = y + sigma eps: the noise at sigma = 2 is twice the noise at sigma = 1
    y_plus_eps, y_plus_2eps = seen[0][:10], seen[1][:10]
    y = 2 * y_plus_eps - y_plus_2eps
    assert torch.allclose(y_plus_2eps - y, 2 * (y_plus_eps - y))


def test_denoiser_rmse_and_nmse():
    data = torch.randn(50, 4, dtype=torch.float64)
    shift = torch.tensor([3.0, 0.0, 4.0, 0.0], dtype=torch.float64)
    rmse = fastgauss.denoiser_rmse(lambda x, s: x, lambda x, s: x + shift, data, [0.1, 1.0], n=20)
    assert torch.allclose(rmse.value, torch.full((2,), 5.0 / 2, dtype=torch.float64))
    same = fastgauss.denoiser_rmse(lambda x, s: x * 2, lambda x, s: x * 2, data, [0.3], n=20, metric="nmse")
    assert same.value.item() == 0


def test_distill_recovers_a_gaussian_denoiser_and_an_affine_map():
    g = torch.Generator().manual_seed(4)
    d = 6
    data = torch.randn(2000, d, generator=g, dtype=torch.float64) @ torch.randn(d, d, generator=g, dtype=torch.float64)
    data = data + 3.0
    m = fastgauss.Moments().update(data)
    gauss = fastgauss.GaussianDenoiser.from_moments(m, dtype=torch.float64)
    sigmas = [0.05, 1.0, 20.0]
    fit = fastgauss.distill_linear(gauss, data, sigmas, ridge=0.0, generator=g)
    for i, s in enumerate(sigmas):
        w_g = ref.gaussian_jacobian(s, gauss.eigvals, gauss.eigvecs)
        assert rel_err(fit.weight[i], w_g) < 1e-5
        assert rel_err(fit.bias[i], (torch.eye(d, dtype=torch.float64) - w_g) @ gauss.mean) < 1e-5
    assert fit.report.gaussian_distance.max() < 1e-5 and fit.report.residual.abs().max() < 1e-8
    assert fit.report.leading_vector_correlation.min() > 0.999
    x = data[:5]
    assert rel_err(fit(x, 1.0), gauss(x, 1.0)) < 1e-8  # the fit is itself a denoiser
    a, c = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    affine = fastgauss.distill_linear(lambda x, s: x @ a.T + c, data, [0.5], ridge=0.0, generator=g)
    assert rel_err(affine.weight[0], a) < 1e-8 and rel_err(affine.bias[0], c) < 1e-8


def test_adam_approaches_the_closed_form():
    g = torch.Generator().manual_seed(5)
    data = torch.randn(512, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    gauss = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data), dtype=torch.float64)
    closed = fastgauss.distill_linear(gauss, data, [0.8], generator=g)
    errors = [rel_err(fastgauss.distill_linear(gauss, data, [0.8], method="adam", epochs=e, lr=0.05,
                                               batch_size=64, generator=torch.Generator().manual_seed(6)).weight[0],
                      closed.weight[0]) for e in (2, 30)]
    assert errors[1] < errors[0] and errors[1] < 0.05, errors


def test_jacobian_spectrum_of_a_gaussian_denoiser():
    g = torch.Generator().manual_seed(7)
    d = 40
    u = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0]
    lam = torch.logspace(1, -3, d, dtype=torch.float64)
    den = fastgauss.GaussianDenoiser(torch.zeros(d), lam, u, dtype=torch.float64)
    x = torch.randn(1, d, generator=g, dtype=torch.float64)
    left, s, right_h = fastgauss.jacobian_spectrum(den, x, 0.5, k=5, generator=g)
    assert left.shape == (d, 5) and s.shape == (5,) and right_h.shape == (5, d)  # as torch.linalg.svd
    w = lam / (lam + 0.25)
    assert torch.allclose(s, w[:5], rtol=1e-6)
    assert fastgauss.subspace_alignment(left, u[:, :5]).min() > 0.999
    assert fastgauss.subspace_alignment(right_h.T, u[:, :5]).min() > 0.999
    assert fastgauss.subspace_alignment(u[:, :3], u[:, :5]).min() > 0.999999  # nested subspaces
    assert fastgauss.subspace_alignment(u[:, :2], u[:, 2:4]).max() < 1e-10  # orthogonal ones


def test_bad_input_names_the_problem():
    data = torch.randn(10, 3)
    ident = lambda x, s: x  # noqa: E731
    with pytest.raises(ValueError, match="at least one noise level"):
        fastgauss.linearity_score(ident, data, [])
    with pytest.raises(ValueError, match="> 0"):
        fastgauss.linearity_score(ident, data, [0.5, 0.0])
    with pytest.raises(ValueError, match="alpha"):
        fastgauss.linearity_score(ident, data, [0.5], alpha=1.0)
    with pytest.raises(ValueError, match=r"6 pairs need 12 distinct samples, data has 10"):
        fastgauss.linearity_score(ident, data, [0.5], n=6)
    with pytest.raises(ValueError, match=r"returned \(.*\) for input .* at sigma=0.5"):
        fastgauss.linearity_score(lambda x, s: x[:, :2], data, [0.5], n=2)
    with pytest.raises(ValueError, match="non-finite values at sigma=2"):
        fastgauss.denoiser_rmse(ident, lambda x, s: x / 0, data, [2.0], n=4)
    with pytest.raises(ValueError, match="v: expected shape"):
        fastgauss.jvp(ident, torch.randn(2, 3), 0.1, torch.randn(2, 4))
    with pytest.raises(ValueError, match="k: expected"):
        fastgauss.jacobian_spectrum(ident, torch.randn(3), 0.1, k=4)
    assert math.isfinite(fastgauss.linearity_score(ident, data, [0.5], n=2).value.item())


def test_denoiser_rmse_against_several_references_calls_the_network_once():
    calls = []

    def net(x, s):
        calls.append(x.shape[0])
        return x * 0.5

    data = torch.randn(30, 4, dtype=torch.float64)
    tables = fastgauss.denoiser_rmse(net, {"zero": lambda x, s: x * 0, "same": lambda x, s: x * 0.5}, data,
                                     [0.1, 1.0], n=10, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 2  # once per sigma, not once per reference
    assert tables["same"].value.max() == 0 and tables["zero"].value.min() > 0
    single = fastgauss.denoiser_rmse(net, lambda x, s: x * 0, data, [0.1, 1.0], n=10,
                                     generator=torch.Generator().manual_seed(0))
    assert torch.allclose(single.value, tables["zero"].value)
