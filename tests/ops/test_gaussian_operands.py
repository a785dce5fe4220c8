"""The Gaussian kernels' operands (issue 14): x - mu formed once before the projection, the
intermediate C stored in bf16 in bf16 mode and the U^T copy change no bit of what the kernels
consume; strided inputs; the eigenbasis copies are made once per GaussianDenoiser."""

import pytest
import torch
import triton
import triton.language as tl

import fastgauss
from fastgauss import reference as ref
from fastgauss.kernels import gaussian as kernel
from helpers import rel_err


def rne_bf16_bits(v: torch.Tensor) -> torch.Tensor:
    """bf16 bit patterns (int64, 0..65535) of finite fp32 values rounded to nearest, ties to even:
    integer arithmetic on the fp32 bits, independent of any library's conversion."""
    bits = v.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def bf16_bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF


def _operands_with_ties(g, n=45, d=29):
    """x [n, d] and mean [d] fp32 whose differences include exact bf16 ties (mean 0 in the first
    columns, x there with low 16 bits 0x8000 and an odd or even kept bit), subnormals and zeros."""
    x = torch.randn(n, d, generator=g) * torch.logspace(-3, 3, d)
    mean = torch.randn(d, generator=g)
    mean[:6] = 0.0
    bits = torch.randint(0, 2**15, (n, 6), generator=g, dtype=torch.int32) << 16 | 0x8000
    x[:, :6] = bits.view(torch.float32)
    x[0, :6] = torch.tensor([1e-40, -1e-40, 0.0, -0.0, 3e-39, 1.0 + 2**-8])
    return x, mean


def test_precentred_bf16_operand_is_the_rounding_to_nearest_even():
    g = torch.Generator().manual_seed(0)
    x, mean = _operands_with_ties(g)
    difference = x - mean
    assert ((difference.view(torch.int32) & 0xFFFF) == 0x8000).sum() > 100  # ties are exercised
    got = kernel.centred_rows(x, mean, torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.is_contiguous()
    assert torch.equal(bf16_bits(got), rne_bf16_bits(difference))
    assert torch.equal(kernel.centred_rows(x, mean, torch.float32), difference)


_PTX_ROUNDING = """
import sys
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import triton
from fastgauss.kernels import gaussian as kernel
entries = {e[0]: e for e in kernel.gate_entries()}
for name in sys.argv[1:]:
    _, fn, sig, constexprs, warps, stages, _ = entries[name]
    ptx = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs), target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": warps, "num_stages": stages}).asm["ptx"]
    cvt = sorted({line.split()[0] for line in ptx.splitlines() if "cvt." in line and "bf16" in line})
    print(name, " ".join(cvt))
"""


def test_compiled_kernels_round_to_bf16_to_nearest_even():
    """On the GPU the projection's conversion of its in-register x - mu (small tiles) and of the
    C it stores (large tiles) are cvt.rn: the rounding centred_rows and the test above apply,
    so the bf16 operand and intermediate are the same bits with or without pre-centring."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    names = ["gaussian_project[small,bf16]", "gaussian_project[large,bf16]"]
    proc = subprocess.run([sys.executable, "-c", _PTX_ROUNDING, *names], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    for name in names:
        conversions = lines[name].split()
        assert conversions and all(c.startswith("cvt.rn.") for c in conversions), (name, conversions)


@pytest.mark.parametrize("precision", kernel.PRECISIONS)
@pytest.mark.parametrize("config", ["small", "large"])
def test_pre_centred_and_in_kernel_centring_give_the_same_bits(monkeypatch, precision, config):
    """The whole denoiser with x - mu formed before the projection and in its registers, same
    tiles, same order: bit-identical (odd sizes past the tiles, NaN-poisoned outputs)."""
    family = "fma" if precision == "ieee" else "mma"
    cfg = kernel.CONFIGS[(family, config)]
    monkeypatch.setattr(kernel, "choose_config", lambda *_: cfg)
    g = torch.Generator().manual_seed(3)
    b, d, r = cfg.block_m + 5, cfg.block_n + 3, cfg.block_n + 1
    x, mean = torch.randn(b, d, generator=g) * 3, torch.randn(d, generator=g) * 2
    u = torch.linalg.qr(torch.randn(d, r, generator=g))[0]
    basis = kernel.kernel_basis(u, precision)
    lam, sigma = torch.rand(r, generator=g), torch.rand(b, 2, generator=g) + 0.05
    outs = []
    for centre in (False, True):
        out = torch.full((2, b, d), float("nan"))
        kernel._denoise_rows(x, mean, *basis, lam, sigma, torch.full((1,), 0.01), out, output="denoised",
                             precision=precision, centre=centre)
        outs.append(out)
    assert torch.isfinite(outs[0]).all() and torch.equal(outs[0], outs[1])
    expected = ref.gaussian_denoiser(x.double(), sigma[:, 0].double(), mean.double(), lam.double(), u.double(), 0.01)
    assert rel_err(outs[1][0], expected) < (2e-2 if precision == "bf16" else 2e-5)


@pytest.mark.parametrize("centred", [False, True])
def test_bf16_intermediate_is_the_rounding_the_reconstruction_applied(centred):
    """The projection writing C in bf16 stores exactly the bf16 rounding of the fp32 C it wrote
    before (which the reconstruction's dot rounded to bf16): same kernel, same tiles, only the
    store dtype differs."""
    g = torch.Generator().manual_seed(5)
    b, d, r, levels = 70, 67, 41, 3
    x, mean = torch.randn(b, d, generator=g), torch.randn(d, generator=g)
    u = torch.linalg.qr(torch.randn(d, r, generator=g))[0]
    _, u_t = kernel.kernel_basis(u, "bf16")
    lam, sigma = torch.rand(r, generator=g) * 4, torch.rand(b, levels, generator=g) + 0.05
    launch = kernel.plan("bf16", b, levels, d, r).project
    shrunk = {dtype: torch.full((levels, b, r), float("nan"), dtype=dtype) for dtype in (torch.float32, torch.bfloat16)}
    for buffer in shrunk.values():
        kernel.project(x, mean, u_t, lam, sigma, torch.full((1,), 0.1), buffer, launch, centred=centred,
                       precision="bf16")
    wide = shrunk[torch.float32]
    assert torch.isfinite(wide).all()
    assert torch.equal(bf16_bits(shrunk[torch.bfloat16]), rne_bf16_bits(wide))


@pytest.mark.parametrize("layout", ["row-slice", "column-stride", "stride-0"])
def test_strided_inputs_through_the_op(backend, layout):
    g = torch.Generator().manual_seed(9)
    d, r, b = 37, 21, 19
    u = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    lam, mean = torch.rand(r, generator=g, dtype=torch.float64) + 0.1, torch.randn(d, generator=g, dtype=torch.float64)
    if layout == "row-slice":
        x = torch.randn(b, d + 11, generator=g)[:, 3:3 + d]
    elif layout == "column-stride":
        x = torch.randn(b, 2 * d, generator=g)[:, ::2]
    else:
        x = torch.randn(1, d, generator=g).expand(b, d)
    sigma = torch.rand(b, 3, generator=g)[:, 1]  # strided too
    got = fastgauss.gaussian_denoise(x, sigma, mean.float(), lam.float(), u.float(), lam_rest=0.05)
    expected = ref.gaussian_denoiser(x.double(), sigma.double(), mean, lam, u, 0.05)
    assert rel_err(got, expected) < 2e-5


def test_denoiser_builds_its_kernel_basis_once_per_eigenbasis(monkeypatch):
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    built = []
    real = kernel.kernel_basis
    monkeypatch.setattr(kernel, "kernel_basis", lambda *a: built.append(a[1]) or real(*a))
    g = torch.Generator().manual_seed(4)
    d, r = 24, 9
    u = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    lam, mean = torch.rand(r, generator=g, dtype=torch.float64) + 0.1, torch.randn(d, generator=g, dtype=torch.float64)
    den = fastgauss.GaussianDenoiser(mean, lam, u)
    x, s = torch.randn(6, d, generator=g), torch.rand(6, generator=g) + 0.1
    for _ in range(3):
        den(x, s)
        den(x, s, precision="tf32")  # same fp32 operands
    den(x, s, precision="bf16")
    assert built == ["ieee", "bf16"]
    with torch.no_grad():
        den.eigvecs[:, 0].neg_()  # an in-place change: a new version, a new basis
    u2 = u.clone()
    u2[:, 0] = -u2[:, 0]
    assert rel_err(den(x, s), ref.gaussian_denoiser(x.double(), s.double(), mean, lam, u2)) < 2e-5
    assert built == ["ieee", "bf16", "ieee"]
