"""Bugs found in review, each pinned by the smallest input that showed it."""

import math

import pytest
import torch

import fastgauss
from fastgauss import reference as ref
from helpers import rel_err


def test_gaussian_denoise_treats_rounding_negative_eigenvalues_as_flat():
    u, lam = torch.eye(2, dtype=torch.float64), torch.tensor([1.0, -1e-7], dtype=torch.float64)
    out = fastgauss.gaussian_denoise(torch.ones(1, 2, dtype=torch.float64), math.sqrt(1.0001e-7),
                                     torch.zeros(2, dtype=torch.float64), lam, u)
    assert torch.allclose(out, torch.tensor([[1.0, 0.0]], dtype=torch.float64), atol=1e-6)


def _full_rank(d=16, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return fastgauss.GaussianDenoiser.from_covariance(torch.full((d,), 1000.0, dtype=torch.float64), a @ a.T / d,
                                                      dtype=dtype), g


def test_operator_route_checks_input_and_keeps_float64():
    den, g = _full_rank()
    x = torch.randn(100, 16, generator=g, dtype=torch.float64) + 1000
    assert den._operator_pays(100, 0.1, None)
    expected = ref.gaussian_denoiser(x, torch.full((100,), 0.1, dtype=torch.float64), den.mean, den.eigvals, den.eigvecs)
    assert rel_err(den(x, 0.1), expected) < 1e-12
    bad = x.clone()
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        den(bad, 0.1)
    with pytest.raises(ValueError, match="precision"):
        den(x, 0.1, precision="bogus")


def test_operator_route_centres_float64_input_before_rounding():
    den, g = _full_rank(dtype=torch.float32)
    x = torch.randn(100, 16, generator=g, dtype=torch.float64) + 1000
    expected = ref.gaussian_denoiser(x, torch.full((100,), 0.1, dtype=torch.float64), den.mean, den.eigvals, den.eigvecs)
    assert rel_err(den(x, 0.1), expected) < 1e-6


def test_gaussian_jvp_keeps_float64_sigma():
    den, g = _full_rank()
    x, v = torch.randn(3, 16, generator=g, dtype=torch.float64), torch.randn(3, 16, generator=g, dtype=torch.float64)
    _, jv = den.jvp(x, 0.1, v)
    assert rel_err(jv, v @ ref.gaussian_jacobian(0.1, den.eigvals, den.eigvecs)) < 1e-13


def test_from_covariance_rejects_invalid_matrices():
    with pytest.raises(ValueError, match="negative eigenvalue"):
        fastgauss.GaussianDenoiser.from_covariance(torch.zeros(3), torch.diag(torch.tensor([4.0, 1.0, -3.0])))
    with pytest.raises(ValueError, match="symmetric"):
        fastgauss.GaussianDenoiser.from_covariance(torch.zeros(2), torch.tensor([[1.0, 5.0], [0.0, 1.0]]))


def test_empirical_denoise_inside_torch_func_on_the_kernel_backend(monkeypatch):
    monkeypatch.setenv("FASTGAUSS_BACKEND", "triton")
    g = torch.Generator().manual_seed(1)
    data, x = torch.rand(50, 6, generator=g), torch.rand(2, 6, generator=g)
    _, tangent = torch.func.jvp(lambda a: fastgauss.empirical_denoise(a, 0.3, data), (x,), (x,))
    jac = [ref.empirical_jacobian(x[b], 0.3, data) for b in range(2)]
    assert rel_err(tangent, torch.stack([x[b].double() @ jac[b] for b in range(2)])) < 1e-4


def test_empty_batches_return_empty_results():
    data = torch.randn(10, 5)
    assert fastgauss.empirical_denoise(torch.randn(0, 5), 0.5, data).shape == (0, 5)
    dist, idx = fastgauss.nearest_neighbors(torch.randn(0, 5), data, k=3)
    assert dist.shape == (0, 3) and idx.shape == (0, 3)


def test_bad_margin_and_schedules_and_probes():
    data = torch.randn(10, 5)
    with pytest.raises(ValueError, match="margin"):
        fastgauss.nearest_neighbors(torch.randn(2, 5), data, k=2, margin=-1)
    with pytest.raises(ValueError, match="only the last level"):
        fastgauss.sample_euler(lambda x, s: x, torch.randn(2, 3), torch.tensor([80.0, 1.0, 0.0, 0.0]))
    v = torch.randn(2, 5)
    v[0, 0] = float("nan")
    with pytest.raises(ValueError, match="v: 1 non-finite"):
        fastgauss.EmpiricalDenoiser(data).jvp(torch.randn(2, 5), 0.5, v)
