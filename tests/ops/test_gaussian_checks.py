"""The Gaussian op's thin validation path still checks every input that could be new.

x's finiteness is tested through the [B, r] coefficients (x - mu) U on the PyTorch path (ops/gaussian/op.py),
the Gaussian's validity once per tensor version (ops/gaussian/validation.py): these tests make each shortcut
face the input it could let through.
"""

import math

import pytest
import torch

import fastgauss
from fastgauss import reference as ref
from fastgauss.ops.gaussian import _torch as gt
from fastgauss.ops.gaussian import validation

NON_FINITE = r"x: 1 non-finite value\(s\) \(NaN or inf\) out of"


def _gaussian(d, r, basis, g):
    if basis == "axes":  # U = the first r coordinate axes: rows r.. of U are zero
        u = torch.eye(d)[:, :r]
    else:
        u = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0].float()
    return torch.randn(d, generator=g), torch.rand(r, generator=g) + 0.1, u


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("basis,where", [("dense", 0), ("dense", 12), ("axes", 3), ("axes", 12)])
@pytest.mark.parametrize("levels,grad", [(1, False), (3, False), (1, True)])
def test_a_non_finite_x_is_an_error_on_every_path(backend, bad, basis, where, levels, grad):
    """"axes" puts the bad value at coordinate 12, outside span(U): a product that skipped zero factors
    would not carry it into the coefficients, so the op must read x itself there."""
    g = torch.Generator().manual_seed(where)
    mean, lam, u = _gaussian(13, 5, basis, g)
    x = torch.randn(7, 13, generator=g)
    x[4, where] = bad
    sigma = torch.rand(7, levels, generator=g) + 0.1 if levels > 1 else torch.rand(7, generator=g) + 0.1
    x.requires_grad_(grad)
    with pytest.raises(ValueError, match=NON_FINITE):
        fastgauss.gaussian_denoise(x, sigma, mean, lam, u)
    for output in ("score", "eps"):
        with pytest.raises(ValueError, match=NON_FINITE):
            fastgauss.gaussian_denoise(x, sigma, mean, lam, u, lam_rest=0.2, output=output)
    den = fastgauss.GaussianDenoiser(mean, lam, u)
    with pytest.raises(ValueError, match=NON_FINITE):
        den(x, sigma)
    clean = x.detach().clone()
    clean[4, where] = 0.0
    with pytest.raises(ValueError, match=NON_FINITE):
        den.jvp(clean, sigma if levels == 1 else 0.5, x.detach())  # the probes are checked like x
    assert torch.isfinite(fastgauss.gaussian_denoise(clean, sigma, mean, lam, u)).all()


def test_a_non_finite_x_in_the_last_row_chunk_is_an_error(monkeypatch):
    monkeypatch.setattr(gt, "_MEMORY_BUDGET_BYTES", 1)  # one row per chunk
    g = torch.Generator().manual_seed(2)
    mean, lam, u = _gaussian(9, 4, "dense", g)
    x = torch.randn(6, 9, generator=g)
    expected = ref.gaussian_denoiser(x, torch.full((6,), 0.4), mean, lam, u)
    assert ((fastgauss.gaussian_denoise(x, 0.4, mean, lam, u).double() - expected).abs().max() < 1e-5)
    x[5, 8] = math.nan
    with pytest.raises(ValueError, match=NON_FINITE):
        fastgauss.gaussian_denoise(x, 0.4, mean, lam, u)


def test_finite_values_whose_coefficients_overflow_are_not_called_non_finite():
    """The coefficient sum overflows here, x is finite: check_finite, read then, tells them apart (as the
    sum over x did before)."""
    g = torch.Generator().manual_seed(3)
    mean, lam, u = _gaussian(16, 4, "dense", g)
    x = torch.full((3, 16), 3e38)
    out = fastgauss.gaussian_denoise(x, 0.5, mean, lam, u)
    assert out.shape == (3, 16)


def test_the_coordinate_cache_follows_the_eigenvectors_version():
    g = torch.Generator().manual_seed(4)
    _, _, u = _gaussian(10, 3, "dense", g)
    assert validation.reaches_every_coordinate(u)
    assert validation.reaches_every_coordinate(u)  # remembered
    u[6] = 0.0  # in place: the version counter moves on
    assert not validation.reaches_every_coordinate(u)
    assert not validation.reaches_every_coordinate(torch.eye(10)[:, :3])
    assert not validation.reaches_every_coordinate(torch.zeros(10, 0))
    other = u.clone()
    other[6] = 1.0
    assert validation.reaches_every_coordinate(other)


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_a_negative_zero_or_rounding_negative_eigenvalue_is_clamped_as_before(sigma):
    """validated_once lets the op skip eigvals.clamp_min(0) only when no sign bit is set: -0.0 and a
    rounding negative take the clamp, and give the bits of the clamped eigenvalues."""
    g = torch.Generator().manual_seed(5)
    mean, lam, u = _gaussian(12, 5, "dense", g)
    x = torch.randn(4, 12, generator=g)
    for low in (-0.0, -1e-9):
        signed = lam.clone()
        signed[3] = low
        assert torch.equal(fastgauss.gaussian_denoise(x, sigma, mean, signed, u),
                           fastgauss.gaussian_denoise(x, sigma, mean, signed.clamp_min(0), u))
    assert validation.validated_once(mean, lam, u, 12)
    assert not validation.validated_once(mean, signed, u, 12)


@pytest.mark.parametrize("basis,reads_x", [("dense", 0), ("axes", 1)])
def test_x_is_read_for_its_check_only_when_the_coefficients_cannot_stand_for_it(monkeypatch, basis, reads_x):
    """On the PyTorch path a finite x costs no pass of its own when every row of U has a nonzero
    (the coefficients carry any NaN); with a zero row of U (coordinate 12 here) x itself is checked."""
    from fastgauss.ops.gaussian import op

    monkeypatch.setenv("FASTGAUSS_BACKEND", "torch")
    calls = []
    real = op.check_finite
    monkeypatch.setattr(op, "check_finite", lambda t, name: calls.append(name) or real(t, name))
    g = torch.Generator().manual_seed(6)
    mean, lam, u = _gaussian(13, 5, basis, g)
    fastgauss.gaussian_denoise(torch.randn(7, 13, generator=g), 0.3, mean, lam, u)
    assert calls == ["x"] * reads_x


def test_inference_mode_tensors_are_validated_every_time_not_cached():
    """Inference tensors have no version counter to key a cache on: the op validates them on every call."""
    g = torch.Generator().manual_seed(7)
    mean, lam, u = _gaussian(11, 4, "dense", g)
    x = torch.randn(3, 11, generator=g)
    expected = fastgauss.gaussian_denoise(x, 0.4, mean, lam, u)
    with torch.inference_mode():
        mean_i, lam_i, u_i, x_i = (t.clone() for t in (mean, lam, u, x))
        den = fastgauss.GaussianDenoiser(mean_i, lam_i, u_i)
        assert torch.equal(fastgauss.gaussian_denoise(x_i, 0.4, mean_i, lam_i, u_i), expected)
        assert torch.allclose(den(x_i, 0.4), expected, rtol=1e-5, atol=1e-6)
        u_i.mul_(2)  # in place, invisible to a version counter
        with pytest.raises(ValueError, match="orthonormal"):
            fastgauss.gaussian_denoise(x_i, 0.4, mean_i, lam_i, u_i)
        x_i[1, 3] = math.nan
        with pytest.raises(ValueError, match=NON_FINITE):
            fastgauss.gaussian_denoise(x_i, 0.4, mean, lam, u)
    assert torch.allclose(den(x, 0.4), expected, rtol=1e-5, atol=1e-6)  # built in inference mode, called outside
