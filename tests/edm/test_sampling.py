"""EDM schedule, Euler / Heun samplers and the Gaussian's closed-form probability flow."""

import pytest
import torch

import fastgauss
from fastgauss import reference as ref
from helpers import random_gaussian, rel_err


@pytest.mark.parametrize("n", [1, 2, 18, 40])
def test_edm_sigmas_match_the_formula(n):
    sig = fastgauss.edm_sigmas(n)
    assert sig.shape == (n + 1,) and sig[-1] == 0
    assert torch.allclose(sig, ref.edm_sigmas(n), rtol=1e-12, atol=0)
    assert sig[0] == pytest.approx(80.0) and (n == 1 or sig[n - 1] == pytest.approx(0.002))
    with pytest.raises(ValueError):
        fastgauss.edm_sigmas(0)


def test_closed_form_matches_the_float64_flow_endpoint():
    den, g = random_gaussian(d=7)
    latents = torch.randn(5, 7, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(18)
    expected = ref.gaussian_flow_endpoint(latents * 80.0, 80.0, den.mean, den.eigvals, den.eigvecs)
    assert rel_err(den.sample(latents, sig), expected) < 1e-12
    final, traj = den.sample(latents, sig, return_trajectory=True)
    assert isinstance(traj, fastgauss.Trajectory) and traj.nfe == 0 and traj.jump is None
    assert traj.x.shape == (19, 5, 7) and traj.denoised.shape == (18, 5, 7) and torch.equal(final, traj.x[-1])
    assert traj.sigma.dtype == torch.float64 and torch.equal(traj.sigma, sig)
    assert torch.equal(traj.x[0], latents * 80.0)  # the start is given, not reconstructed
    for i in (0, 3, 10, 17):  # D at each level is the denoiser applied to x at that level
        # |x| / |D| reaches ~40 at high sigma: float64 rounding of x, magnified
        assert rel_err(traj.denoised[i], den(traj.x[i], float(sig[i]))) < 1e-8
    for i in (1, 9, 18):  # every state is the float64 flow at its level
        expected = ref.gaussian_flow(latents * 80.0, 80.0, float(sig[i]), den.mean, den.eigvals, den.eigvecs)
        assert rel_err(traj.x[i], expected) < 1e-12


@pytest.mark.parametrize("rank,lam_rest", [(None, 0.0), (3, 0.0), (3, "isotropic")])
def test_closed_form_equals_euler_as_steps_grow(rank, lam_rest):
    den, g = random_gaussian(d=6, rank=rank, lam_rest=lam_rest)
    latents = torch.randn(4, 6, generator=g, dtype=torch.float64)
    errors, heun = [], []
    for n in (64, 512, 4096):
        sig = fastgauss.edm_sigmas(n)
        exact = den.sample(latents, sig)
        errors.append(rel_err(fastgauss.sample_euler(den, latents, sig), exact))
        heun.append(rel_err(fastgauss.sample_heun(den, latents, sig), exact))
    # Euler is first order: 8x the steps, about 8x less error (about 2.6e-4 left at 4096 steps
    # on the EDM schedule); Heun, second order, gets below 1e-4 there.
    assert errors[0] > 6 * errors[1] > 36 * errors[2], errors
    assert errors[2] < 1e-3 and heun[2] < 1e-4 and heun[2] < errors[2] / 10, (errors, heun)


def test_heun_is_more_accurate_than_euler_and_churn_is_reproducible():
    den, g = random_gaussian(d=5)
    latents = torch.randn(3, 5, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(18)
    exact = den.sample(latents, sig)
    heun, traj = fastgauss.sample_heun(den, latents, sig, return_trajectory=True)
    assert rel_err(heun, exact) < rel_err(fastgauss.sample_euler(den, latents, sig), exact)
    assert traj.x.shape == (19, 3, 5) and traj.denoised.shape == (18, 3, 5) and torch.equal(traj.x[-1], heun)
    assert torch.equal(traj.sigma, sig) and traj.nfe == 35 and traj.jump is None
    for i in (0, 7, 17):  # x[i] is the state at level i and D(x[i]; sigma[i]) the step's first evaluation
        assert torch.equal(traj.denoised[i], den(traj.x[i], torch.full((3,), float(sig[i]), dtype=torch.float64)))
    churned = [fastgauss.sample_heun(den, latents, sig, S_churn=40, generator=torch.Generator().manual_seed(1))
               for _ in range(2)]
    assert torch.equal(churned[0], churned[1]) and not torch.equal(churned[0], heun)


def test_samplers_count_denoiser_calls():
    calls = []

    def identity(x, sigma):
        calls.append(sigma)
        assert sigma.shape == (x.shape[0],)
        return torch.zeros_like(x)

    sig = fastgauss.edm_sigmas(10)
    fastgauss.sample_euler(identity, torch.randn(2, 3), sig)
    assert len(calls) == 10
    calls.clear()
    fastgauss.sample_heun(identity, torch.randn(2, 3), sig)
    assert len(calls) == 2 * 10 - 1


def test_sampler_errors_name_the_problem():
    sig = fastgauss.edm_sigmas(4)
    with pytest.raises(ValueError, match=r"shape.*sigma="):
        fastgauss.sample_euler(lambda x, s: x[:, :2], torch.randn(2, 3), sig)
    with pytest.raises(ValueError, match=r"non-finite.*sigma="):
        fastgauss.sample_euler(lambda x, s: x * float("nan"), torch.randn(2, 3), sig)
    with pytest.raises(ValueError, match="increase"):
        fastgauss.sample_euler(lambda x, s: x, torch.randn(2, 3), torch.tensor([1.0, 2.0, 0.0]))
    den, _ = random_gaussian(d=3)
    with pytest.raises(ValueError, match="sigmas"):
        den.sample(torch.randn(2, 3), torch.tensor([0.0, 0.0]))
