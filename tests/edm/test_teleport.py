"""Gaussian teleportation: the exact Gaussian flow replaces a sampler's first steps."""

import math

import pytest
import torch

import fastgauss
from fastgauss import reference as ref
from fastgauss.edm import teleport
from helpers import rel_err


def _gaussian(d=6, rank=None, remainder="zero", seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.01 * torch.eye(d, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64)
    den = fastgauss.GaussianDenoiser.from_covariance(mean, cov, rank=rank, remainder=remainder, dtype=torch.float64)
    return den, g


@pytest.mark.parametrize("rank,remainder", [(None, "zero"), (3, "zero"), (3, "isotropic")])
@pytest.mark.parametrize("sigma_to", [0.0, 0.002, 0.7, 12.0, 80.0])
def test_jump_matches_the_float64_closed_form(rank, remainder, sigma_to):
    den, g = _gaussian(d=7, rank=rank, remainder=remainder)
    x = 80.0 * torch.randn(5, 7, generator=g, dtype=torch.float64)
    expected = ref.gaussian_flow(x, 80.0, sigma_to, den.mean, den.eigvals, den.eigvecs, float(den.lam_rest))
    assert rel_err(teleport.gaussian_jump(den, x, 80.0, sigma_to), expected) < 1e-12
    x32 = x.float()
    den32 = den.float()
    assert rel_err(teleport.gaussian_jump(den32, x32, 80.0, sigma_to), expected) < 2e-6


def test_jump_to_zero_is_the_closed_form_sample():
    den, g = _gaussian(d=6, rank=4, remainder="isotropic")
    latents = torch.randn(3, 6, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(10)
    assert rel_err(teleport.gaussian_jump(den, latents * 80.0, 80.0, 0.0), den.sample(latents, sig)) < 1e-12


@pytest.mark.parametrize("sampler", [fastgauss.sample_euler, fastgauss.sample_heun])
@pytest.mark.parametrize("rank,remainder", [(None, "zero"), (3, "isotropic")])
def test_with_the_gaussian_as_network_teleporting_changes_only_discretisation_error(sampler, rank, remainder):
    den, g = _gaussian(d=6, rank=rank, remainder=remainder)
    latents = torch.randn(4, 6, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(18)
    exact = den.sample(latents, sig)
    plain = sampler(den, latents, sig)
    plain_err = rel_err(plain, exact)
    assert plain_err > 1e-6  # a real discretisation error to compare with
    for s in (40.0, 5.0, 1.0, 0.1, 0.01):
        jumped = sampler(den, latents, sig, gaussian=den, switch_sigma=s)
        # Fewer steps on the same schedule: the error can only come from the steps still taken.
        assert rel_err(jumped, exact) <= plain_err * 1.01 + 1e-12, s
        assert rel_err(jumped, plain) <= 2 * plain_err + 1e-12, s
    # Switching at the last level (or at 0) is the closed form itself, no network call.
    for s in (0.0, 0.001):
        final, traj = sampler(den, latents, sig, gaussian=den, switch_sigma=s, return_trajectory=True)
        assert rel_err(final, exact) < 1e-12 and traj["nfe"] == 0
        assert traj["jump"] == (80.0, 0.0)


def test_trajectory_records_the_jump_and_the_nfe():
    den, g = _gaussian(d=5)
    latents = torch.randn(2, 5, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(18)
    i = next(k for k, s in enumerate(sig.tolist()) if s <= 1.0)
    final, traj = fastgauss.sample_heun(den, latents, sig, gaussian=den, switch_sigma=1.0, return_trajectory=True)
    steps = 18 - i  # network steps left after the jump
    assert traj["jump"] == (80.0, float(sig[i]))
    assert traj["x"].shape == (steps + 2, 2, 5) and traj["denoised"].shape == (steps + 1, 2, 5)
    assert torch.allclose(traj["sigma"], torch.cat([sig[:1], sig[i:]]))
    assert traj["nfe"] == 2 * steps - 1
    expected_jump = ref.gaussian_flow(latents * 80.0, 80.0, float(sig[i]), den.mean, den.eigvals, den.eigvecs)
    assert rel_err(traj["x"][1], expected_jump) < 1e-12
    assert torch.equal(traj["x"][-1], final)
    _, plain = fastgauss.sample_heun(den, latents, sig, return_trajectory=True)
    assert plain["nfe"] == 2 * 18 - 1 and "jump" not in plain


class _GaussianAbove(torch.nn.Module):
    """The Gaussian denoiser above ``level``, the Gaussian shifted by ``offset`` below it."""

    def __init__(self, gaussian, level, offset):
        super().__init__()
        self.gaussian, self.level, self.offset = gaussian, level, offset

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        low = (sigma < self.level).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return self.gaussian(x, sigma) + low * self.offset


def test_auto_switch_picks_the_lowest_level_where_the_network_is_still_gaussian():
    den, g = _gaussian(d=6)
    data = den.sample(torch.randn(64, 6, generator=g, dtype=torch.float64), fastgauss.edm_sigmas(4))
    sig = fastgauss.edm_sigmas(18)
    net = _GaussianAbove(den, level=2.0, offset=0.5)  # RMSE to the Gaussian: 0.5 below sigma 2
    chosen = teleport.auto_switch_sigma(net, den, sig.tolist(), data=data, tol=0.02)
    assert chosen == min(s for s in sig.tolist() if s >= 2.0)
    # The sampler uses it: the network is called only from that level down.
    calls = []  # the levels of the sampler's own calls (batch 3; the measurement uses the 64 probes)
    spy = lambda x, s: (x.shape[0] == 3 and calls.append(float(s.reshape(-1)[0]))) or net(x, s)  # noqa: E731
    fastgauss.sample_euler(spy, torch.randn(3, 6, generator=g, dtype=torch.float64), sig, gaussian=den,
                           switch_sigma="auto", data=data, tol=0.02)
    assert max(calls) == pytest.approx(chosen)
    # Where the network is never the Gaussian, auto does not jump at all.
    far = _GaussianAbove(den, level=1e9, offset=0.5)
    assert teleport.auto_switch_sigma(far, den, sig.tolist(), data=data, tol=0.02) == 80.0


def test_auto_switch_reads_an_analyze_report(tmp_path):
    den, _ = _gaussian(d=4)
    sig = fastgauss.edm_sigmas(18).tolist()
    report = {"per_sigma": {"sigma": [0.01, 0.1, 1.0, 10.0, 80.0], "rmse_gaussian": [0.3, 0.1, 0.01, 0.005, 0.001]}}
    chosen = teleport.auto_switch_sigma(None, den, sig, report=report, tol=0.02)
    assert chosen == min(s for s in sig if s >= 1.0 - 1e-12 and s > 0.5)
    path = tmp_path / "summary.json"
    import json
    path.write_text(json.dumps(report))
    assert teleport.auto_switch_sigma(None, den, sig, report=str(path), tol=0.02) == chosen
    with pytest.raises(ValueError, match="report"):
        teleport.auto_switch_sigma(None, den, sig, report={"nothing": 1})


def test_schedule_is_clipped_to_the_models_range():
    class Ranged(torch.nn.Module):
        sigma_min, sigma_max = 0.01, 50.0

        def forward(self, x, sigma):
            sigma = torch.as_tensor(sigma).reshape(-1)  # in x's dtype: float32 rounding of the range's ends
            assert float(sigma.min()) >= self.sigma_min * (1 - 1e-6) and float(sigma.max()) <= self.sigma_max * (1 + 1e-6)
            return x * 0

    sig = fastgauss.edm_sigmas(18)
    clipped = teleport.clip_schedule(sig.tolist(), Ranged())
    assert clipped[0] == 50.0 and clipped[-1] == 0.0 and min(s for s in clipped if s > 0) == 0.01
    assert all(a > b for a, b in zip(clipped, clipped[1:]))
    fastgauss.sample_heun(Ranged(), torch.randn(2, 3), sig)  # the model is never called outside its range


def test_bad_teleport_arguments_name_themselves():
    den, g = _gaussian(d=6)
    latents = torch.randn(2, 6, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(8)
    with pytest.raises(ValueError, match="switch_sigma.*above"):
        fastgauss.sample_euler(den, latents, sig, gaussian=den, switch_sigma=81.0)
    for bad in (-1.0, math.nan, "soon"):
        with pytest.raises(ValueError, match="switch_sigma"):
            fastgauss.sample_heun(den, latents, sig, gaussian=den, switch_sigma=bad)
    other, _ = _gaussian(d=5)
    with pytest.raises(ValueError, match="gaussian.*5 features.*latents have 6"):
        fastgauss.sample_euler(den, latents, sig, gaussian=other, switch_sigma=1.0)
    with pytest.raises(ValueError, match="switch_sigma"):
        fastgauss.sample_euler(den, latents, sig, gaussian=den)
    with pytest.raises(ValueError, match="gaussian"):
        fastgauss.sample_euler(den, latents, sig, switch_sigma=1.0)
    with pytest.raises(ValueError, match="data="):
        fastgauss.sample_euler(den, latents, sig, gaussian=den, switch_sigma="auto")
    with pytest.raises(ValueError, match="tol"):
        teleport.auto_switch_sigma(den, den, sig.tolist(), data=latents, tol=0)
