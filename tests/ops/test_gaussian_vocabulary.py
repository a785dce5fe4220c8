"""One vocabulary for a Gaussian: data first, then (mean, eigvals, eigvecs, lam_rest), everywhere."""

import inspect
import math

import pytest
import torch

import fastgauss
from fastgauss import reference as ref
from fastgauss.ops.gaussian import _torch as gt
from fastgauss.ops.gaussian import op, validation
from helpers import rel_err

ORDER = r"\(mean, eigvals, eigvecs\)"


def _gaussian(d=10, r=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64))[0]
    lam = torch.rand(r, generator=g, dtype=torch.float64) + 0.1
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(5, d, generator=g, dtype=torch.float64)
    return x, mean, lam, u


def _order(fn):
    return [p for p in inspect.signature(fn).parameters if p in ("mean", "lam", "eigvals", "eigvecs", "lam_rest")]


def test_every_gaussian_signature_takes_mean_eigvals_eigvecs_lam_rest_in_that_order():
    from fastgauss.kernels import gaussian as kernel  # the launcher's signature only: no launch

    expected = ["mean", "eigvals", "eigvecs", "lam_rest"]
    for fn in (fastgauss.gaussian_denoise, op.denoise_validated, kernel.denoise, ref.gaussian_denoiser,
               ref.gaussian_flow, fastgauss.GaussianDenoiser.__init__):
        assert _order(fn) == expected, fn.__qualname__
    assert _order(ref.gaussian_flow_endpoint) == expected[:3]
    assert _order(ref.gaussian_jacobian) == expected[1:]  # J does not depend on the mean
    for fn in (validation.validate_gaussian, validation.validated_once):
        assert _order(fn) == expected[:3], fn.__qualname__
    for fn in (op._compute, op._GaussianDenoise.forward, gt.denoise, gt.sigma_derivative):
        assert _order(fn) == ["mean", "lam", "eigvecs", "lam_rest"], fn.__qualname__
    for fn in (gt.jacobian_product, gt.apply_operator):  # J does not depend on the mean
        assert _order(fn) == ["lam", "eigvecs", "lam_rest"], fn.__qualname__


@pytest.mark.parametrize("d,r", [(10, 4), (6, 6), (7, 1)])
def test_eigvecs_where_eigvals_belong_is_a_clear_error(d, r):
    x, mean, lam, u = _gaussian(d, r)
    swapped = rf"eigvals: expected shape \[r\] \(a Gaussian is passed as {ORDER}\), got \({d}, {r}\)"
    with pytest.raises(ValueError, match=swapped):
        fastgauss.gaussian_denoise(x, 0.3, mean, u, lam)  # the order before issue 15
    with pytest.raises(ValueError, match=swapped):
        fastgauss.GaussianDenoiser(mean, u, lam)
    with pytest.raises(ValueError, match=rf"eigvecs: expected shape \[{d}, r\] \(a Gaussian is passed as {ORDER}\)"):
        fastgauss.gaussian_denoise(x, 0.3, mean, lam, lam)
    with pytest.raises(ValueError, match=rf"eigvals: expected shape \[{r}\] to match eigvecs .*{ORDER}"):
        fastgauss.gaussian_denoise(x, 0.3, mean, torch.ones(r + 1, dtype=torch.float64), u)
    got = fastgauss.gaussian_denoise(x, 0.3, mean, lam, u)  # the right order works
    assert rel_err(got, ref.gaussian_denoiser(x, torch.full((5,), 0.3, dtype=torch.float64), mean, lam, u)) < 1e-12


def test_the_old_keyword_remainder_is_gone():
    x, mean, lam, u = _gaussian()
    with pytest.raises(TypeError, match="remainder"):
        fastgauss.gaussian_denoise(x, 0.3, mean, lam, u, remainder=0.1)
    with pytest.raises(TypeError, match="remainder"):
        fastgauss.GaussianDenoiser.from_covariance(mean, torch.eye(10), rank=3, remainder="isotropic")


def test_gaussian_denoise_lam_rest_is_the_eigenvalue_outside_span_u():
    x, mean, lam, u = _gaussian()
    s = torch.rand(5, generator=torch.Generator().manual_seed(4), dtype=torch.float64) + 0.05
    for lam_rest in (0.0, 0.37, 2):
        got = fastgauss.gaussian_denoise(x, s, mean, lam, u, lam_rest=lam_rest)
        assert rel_err(got, ref.gaussian_denoiser(x, s, mean, lam, u, float(lam_rest))) < 1e-12
    assert torch.equal(fastgauss.gaussian_denoise(x, s, mean, lam, u),
                       fastgauss.gaussian_denoise(x, s, mean, lam, u, lam_rest=0.0))
    for bad in (-0.1, math.nan, math.inf, "isotropic", "zero", True, None, torch.ones(2)):
        with pytest.raises(ValueError, match="lam_rest"):
            fastgauss.gaussian_denoise(x, s, mean, lam, u, lam_rest=bad)


def _covariance(d=9, seed=5):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 1e-2 * torch.eye(d, dtype=torch.float64)
    vals, vecs = torch.linalg.eigh(cov)
    return torch.randn(d, generator=g, dtype=torch.float64), cov, vals.flip(0), vecs.flip(1), g


@pytest.mark.parametrize("build", ["covariance", "moments"])
def test_builders_take_lam_rest_zero_a_float_or_isotropic(build):
    mean, cov, vals, vecs, g = _covariance()
    data = torch.randn(40, 9, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T + mean
    m = fastgauss.Moments().update(data)

    def make(**kw):
        if build == "covariance":
            return fastgauss.GaussianDenoiser.from_covariance(mean, cov, rank=4, dtype=torch.float64, **kw)
        return fastgauss.GaussianDenoiser.from_moments(m, rank=4, dtype=torch.float64, **kw)

    full = fastgauss.GaussianDenoiser.from_covariance(mean, cov, dtype=torch.float64) if build == "covariance" else \
        fastgauss.GaussianDenoiser.from_moments(m, dtype=torch.float64)
    discarded = full.eigvals[4:]
    assert float(make().lam_rest) == 0.0 and float(make(lam_rest=0.0).lam_rest) == 0.0
    assert float(make(lam_rest=0.25).lam_rest) == 0.25  # a float is used as given
    assert float(make(lam_rest="isotropic").lam_rest) == pytest.approx(float(discarded.sum()) / 5, rel=1e-12)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64)
    s = torch.full((6,), 0.4, dtype=torch.float64)
    den = make(lam_rest=0.25)
    assert rel_err(den(x, s), ref.gaussian_denoiser(x, s, den.mean, den.eigvals, den.eigvecs, 0.25)) < 1e-12
    for bad in ("zero", "Isotropic", -1.0, math.nan, True, None):
        with pytest.raises(ValueError, match="lam_rest"):
            make(lam_rest=bad)


def test_isotropic_at_full_rank_has_no_discarded_directions():
    mean, cov, *_ = _covariance()
    assert float(fastgauss.GaussianDenoiser.from_covariance(mean, cov, lam_rest="isotropic").lam_rest) == 0.0
