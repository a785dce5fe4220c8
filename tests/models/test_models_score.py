"""from_score: VE and continuous-VP score models of an exact Gaussian equal the Gaussian denoiser."""

from __future__ import annotations

import math

import pytest
import torch

import fastgauss

D = 12


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _gaussian(seed=0, scale=1.0, offset=0.0):
    g = _gen(seed)
    q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    cov = q @ torch.diag(torch.logspace(0, -3, D, dtype=torch.float64)) @ q.T
    mu = torch.randn(D, generator=g, dtype=torch.float64) * 0.2
    return offset + scale * mu, scale**2 * cov


def _wiener(x, sigma, mu, cov):
    eye = torch.eye(D, dtype=torch.float64)
    return torch.stack([mu + cov @ torch.linalg.solve(cov + s**2 * eye, xi - mu) for xi, s in zip(x, sigma)])


def _check(den, mu, cov, lo, hi, n=17, tol=1e-9):
    sigmas = torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64)
    x = mu + sigmas[:, None] * torch.randn(n, D, generator=_gen(3), dtype=torch.float64)
    got, ref = den(x, sigmas), _wiener(x, sigmas, mu, cov)
    assert ((got - ref).norm(dim=1) / ref.norm(dim=1)).max().item() <= tol
    gauss = fastgauss.GaussianDenoiser.from_covariance(mu, cov, dtype=torch.float64)
    assert torch.allclose(gauss(x, sigmas), ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("output", ["score", "eps"])
def test_ve(output):
    mu, cov = _gaussian()

    def model(x, sigma):  # the exact VE score (or eps) of N(mu, cov)
        d = _wiener(x, sigma, mu, cov)
        return (d - x) / sigma[:, None] ** 2 if output == "score" else (x - d) / sigma[:, None]

    den = fastgauss.from_score(model, kind="ve", output=output)
    assert (den.sigma_min, den.sigma_max) == (0.01, 50.0)
    _check(den, mu, cov, 0.01, 50.0)


@pytest.mark.parametrize("output", ["score", "eps"])
def test_vp_closed_form_time(output):
    mu, cov = _gaussian(seed=1)
    beta_min, beta_max = 0.1, 20.0
    seen = []

    def model(x_vp, t):  # score_sde's VPSDE marginal, written from its own formulas
        seen.append(t)
        log_mean = -0.25 * t**2 * (beta_max - beta_min) - 0.5 * t * beta_min
        alpha = log_mean.exp()[:, None]
        std = (1 - alpha**2).sqrt()
        sigma = (std / alpha)[:, 0]
        x = x_vp / alpha
        d = _wiener(x, sigma, mu, cov)
        score_vp = ((d - x) / sigma[:, None] ** 2) / alpha  # score of x_vp = alpha x
        return score_vp if output == "score" else -score_vp * std

    den = fastgauss.from_score(model, kind="vp", output=output, beta_min=beta_min, beta_max=beta_max)
    assert den.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)))
    _check(den, mu, cov, den.sigma_min, den.sigma_max, tol=1e-8)
    assert 0 < float(torch.cat(seen).min()) and float(torch.cat(seen).max()) == pytest.approx(1.0)


def test_data_range_zero_one():
    """A model of [0, 1] data: D(x; s) = 2 D01((x + 1) / 2; s / 2) - 1 is the [-1, 1] Gaussian denoiser."""
    mu, cov = _gaussian(seed=2)
    mu01, cov01 = (mu + 1) / 2, cov / 4

    def model01(x01, sigma01):
        return (_wiener(x01, sigma01, mu01, cov01) - x01) / sigma01[:, None] ** 2

    den = fastgauss.from_score(model01, kind="ve", data_range=(0, 1), sigma_min=0.01, sigma_max=20.0)
    assert (den.sigma_min, den.sigma_max) == (0.02, 40.0)
    _check(den, mu, cov, 0.02, 40.0)


def test_jvp_and_bad_input():
    a = torch.randn(D, D, generator=_gen(4), dtype=torch.float64)

    def model(x, sigma):
        return torch.tanh(x @ a.T) / sigma[:, None]

    den = fastgauss.from_score(model, kind="vp", output="eps")
    x = torch.randn(3, D, generator=_gen(5), dtype=torch.float64)
    v = torch.randn(2, 3, D, generator=_gen(6), dtype=torch.float64)
    _, jv = fastgauss.jvp(den, x, 0.7, v)
    h = 1e-6
    fd = (den(x + h * v[1], 0.7) - den(x - h * v[1], 0.7)) / (2 * h)
    assert torch.allclose(jv[1], fd, rtol=1e-6, atol=1e-8)
    with pytest.raises(ValueError, match="kind"):
        fastgauss.from_score(model, kind="sub-vp")
    with pytest.raises(ValueError, match="output"):
        fastgauss.from_score(model, output="x0")
    with pytest.raises(ValueError, match="data_range"):
        fastgauss.from_score(model, data_range=(1, 0))
    with pytest.raises(ValueError, match="beta_max"):
        fastgauss.from_score(model, kind="vp", beta_min=5.0, beta_max=1.0)
    with pytest.raises(ValueError, match=r"sigma: 100 is outside the model's range \[0\.01, 50\]"):
        fastgauss.from_score(model, kind="ve")(x, 100.0)
