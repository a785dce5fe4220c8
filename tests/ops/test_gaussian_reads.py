"""What the Gaussian kernels read (issue 14): the basis in the layout each product path wants
(N-contiguous tiles for the FMA dot of the ieee mode, K-major for wgmma) and x only once per
call when lam_rest = 0 and D is wanted; the op and the module tell the launcher when that is."""

import math

import pytest
import torch

import fastgauss
from fastgauss import reference as ref
from fastgauss.kernels import gaussian as kernel
from helpers import rel_err


def _problem(seed: int, b: int = 37, d: int = 45, r: int = 29, levels: int = 1):
    """x [b, d], mean [d], U [d, r] (float64), lam [r], sigma [b, levels]: odd sizes, partial tiles."""
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))[0][:, :r]
    lam = torch.logspace(1, -3, r, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(b, d, generator=g, dtype=torch.float64)
    sigma = torch.rand(b, levels, generator=g, dtype=torch.float64) * 2 + 0.05
    return x, mean, u, lam, sigma


@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
@pytest.mark.parametrize("variant", ["tuned", "before"])
def test_each_product_path_reads_the_basis_in_its_layout(precision, variant):
    fma_tiles = precision == "ieee" and variant == "tuned"
    for b, d, r in ((8192, 3072, 3072), (8192, 3072, 256), (37, 45, 29)):
        p = kernel.plan(precision, b, 1, d, r, variant=variant)
        assert p.project.basis_t is (not fma_tiles)  # U^T [r, d]: K-major tiles of the projection's B
        assert p.reconstruct.basis_t is fma_tiles  # U^T [r, d]: N-contiguous tiles of the reconstruction's B


@pytest.mark.parametrize("variant", ["tuned", "before"])
@pytest.mark.parametrize("output", ["denoised", "score"])
@pytest.mark.parametrize("levels", [1, 3])
def test_both_basis_layouts_give_the_reference_result(variant, output, levels):
    x, mean, u, lam, sigma = _problem(3 + levels, levels=levels)
    lam_rest = 0.02
    got = kernel.denoise(x.float(), sigma.float().contiguous(), mean.float(), lam.float(), u.float().contiguous(),
                         torch.tensor([lam_rest]), output=output, precision="ieee", variant=variant)
    assert got.shape == (levels, *x.shape) and torch.isfinite(got).all()
    for t in range(levels):
        expected = ref.gaussian_denoiser(x, sigma[:, t], mean, lam, u, lam_rest)
        if output == "score":
            expected = (expected - x) / sigma[:, t, None] ** 2
        assert rel_err(got[t], expected) < 1e-5, (t, rel_err(got[t], expected))


@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
def test_reconstruction_reads_no_x_when_lam_rest_is_zero(precision, monkeypatch):
    """x given to the reconstruction is all NaN (the projection is handed the real x): with
    read_x False the output is still mu + U C, with read_x True the NaN shows."""
    x, mean, u, lam, sigma = _problem(11, levels=2)
    clean = x.float()
    real = kernel.project
    monkeypatch.setattr(kernel, "project", lambda _x, *args, **kw: real(clean, *args, **kw))
    basis = kernel.kernel_basis(u, precision)
    outs = {}
    for read_x in (False, True):
        out = torch.full((2, *x.shape), math.nan)
        kernel._denoise_rows(torch.full_like(clean, math.nan), mean.float(), *basis, lam.float(),
                             sigma.float().contiguous(), torch.zeros(1), out, output="denoised", precision=precision,
                             read_x=read_x)
        outs[read_x] = out
    assert torch.isnan(outs[True]).all()
    assert torch.isfinite(outs[False]).all()
    tolerance = 2e-2 if precision == "bf16" else (5e-3 if precision == "tf32" else 1e-5)
    for t in range(2):
        assert rel_err(outs[False][t], ref.gaussian_denoiser(x, sigma[:, t], mean, lam, u, 0.0)) < tolerance


@pytest.mark.parametrize("precision", ["ieee", "tf32", "bf16"])
@pytest.mark.parametrize("output", ["denoised", "score", "eps"])
def test_rest_zero_changes_no_value(precision, output):
    """lam_rest = 0: D without the second read of x equals D with it (a finite x: mu + 0 (x - mu)
    + U C is mu + U C); the score and eps still read x and are unchanged."""
    x, mean, u, lam, sigma = _problem(17, levels=2)
    args = (x.float(), sigma.float().contiguous(), mean.float(), lam.float(), kernel.kernel_basis(u, precision)[0],
            torch.zeros(1))
    with_x = kernel.denoise(*args, output=output, precision=precision)
    without = kernel.denoise(*args, output=output, precision=precision, rest_zero=True)
    assert torch.isfinite(with_x).all() and torch.equal(without, with_x)


def test_the_op_and_the_module_tell_the_launcher_when_lam_rest_is_zero(monkeypatch):
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    seen = []
    real = kernel.denoise
    monkeypatch.setattr(kernel, "denoise", lambda *a, **kw: seen.append(kw["rest_zero"]) or real(*a, **kw))
    x, mean, u, lam, sigma = _problem(23)
    xf, s = x.float(), sigma[:, 0].float()
    for lam_rest in (0.0, 0.1):  # float32 operands: the kernels' path
        got = fastgauss.gaussian_denoise(xf, s, mean.float(), lam.float(), u.float(), lam_rest=lam_rest)
        assert rel_err(got, ref.gaussian_denoiser(x, sigma[:, 0], mean, lam, u, lam_rest)) < 1e-5
    assert seen == [True, False]
    den = fastgauss.GaussianDenoiser(mean, lam, u)  # float32 buffers
    den(xf, s)
    den(xf, s)
    with torch.no_grad():
        den.lam_rest.fill_(0.1)  # in place: a new version, read again
    got = den(xf, s)
    assert rel_err(got, ref.gaussian_denoiser(x, sigma[:, 0], mean, lam, u, 0.1)) < 1e-5
    assert seen == [True, False, True, True, False]


def test_a_denoiser_built_in_inference_mode_caches_nothing_it_cannot_key():
    """Inference tensors have no version counter: the kernel basis and the lam_rest flag are
    formed on every call instead of raising."""
    x, mean, u, lam, sigma = _problem(29)
    with torch.inference_mode():
        den = fastgauss.GaussianDenoiser(mean, lam, u, lam_rest=0.0)
        first = [t.clone() for t in den._kernel_basis("ieee")]
        assert den._rest_zero() is True
        den.lam_rest.fill_(0.3)
        assert den._rest_zero() is False
        den.eigvecs.neg_()
        assert torch.equal(den._kernel_basis("ieee")[0], -first[0])
