"""Gaussian teleportation: the exact Gaussian flow replaces a sampler's first steps."""

import math

import pytest
import torch

import fastgauss
from fastgauss import reference as ref
from fastgauss.edm import teleport
from helpers import random_gaussian, rel_err


@pytest.mark.parametrize("rank,lam_rest", [(None, 0.0), (3, 0.0), (3, "isotropic")])
@pytest.mark.parametrize("sigma_to", [0.0, 0.002, 0.7, 12.0, 80.0])
def test_jump_matches_the_float64_closed_form(rank, lam_rest, sigma_to):
    den, g = random_gaussian(d=7, rank=rank, lam_rest=lam_rest)
    x = 80.0 * torch.randn(5, 7, generator=g, dtype=torch.float64)
    expected = ref.gaussian_flow(x, 80.0, sigma_to, den.mean, den.eigvals, den.eigvecs, float(den.lam_rest))
    assert rel_err(teleport.gaussian_jump(den, x, 80.0, sigma_to), expected) < 1e-12
    x32 = x.float()
    den32 = den.float()
    assert rel_err(teleport.gaussian_jump(den32, x32, 80.0, sigma_to), expected) < 2e-6


def test_jump_to_zero_is_the_closed_form_sample():
    den, g = random_gaussian(d=6, rank=4, lam_rest="isotropic")
    latents = torch.randn(3, 6, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(10)
    expected = ref.gaussian_flow(latents * 80.0, 80.0, 0.0, den.mean, den.eigvals, den.eigvecs, float(den.lam_rest))
    jumped = teleport.gaussian_jump(den, latents * 80.0, 80.0, 0.0)
    assert rel_err(jumped, expected) < 1e-12 and rel_err(den.sample(latents, sig), expected) < 1e-12
    # one implementation: the jump is the sample's flow, bit for bit, in float64 and in float32
    assert torch.equal(jumped, den.sample(latents, sig))
    den32, z32 = den.float(), latents.float()
    assert torch.equal(teleport.gaussian_jump(den32, z32 * 80.0, 80.0, 0.0), den32.sample(z32, sig))
    assert rel_err(den32.sample(z32, sig), expected) < 2e-6


@pytest.mark.parametrize("sampler", [fastgauss.sample_euler, fastgauss.sample_heun])
@pytest.mark.parametrize("rank,lam_rest", [(None, 0.0), (3, "isotropic")])
def test_with_the_gaussian_as_network_teleporting_changes_only_discretisation_error(sampler, rank, lam_rest):
    den, g = random_gaussian(d=6, rank=rank, lam_rest=lam_rest)
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
        assert rel_err(final, exact) < 1e-12 and traj.nfe == 0
        assert traj.jump == (80.0, 0.0)


def test_trajectory_records_the_jump_and_the_nfe():
    den, g = random_gaussian(d=5)
    latents = torch.randn(2, 5, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(18)
    i = next(k for k, s in enumerate(sig.tolist()) if s <= 1.0)
    final, traj = fastgauss.sample_heun(den, latents, sig, gaussian=den, switch_sigma=1.0, return_trajectory=True)
    steps = 18 - i  # network steps left after the jump
    assert traj.jump == (80.0, float(sig[i]))
    # one format: every level of the schedule, the jumped ones included (the Gaussian's exact states there)
    assert traj.x.shape == (19, 2, 5) and traj.denoised.shape == (18, 2, 5)
    assert traj.sigma.dtype == torch.float64 and torch.equal(traj.sigma, sig)
    assert traj.nfe == 2 * steps - 1
    for j in range(1, i + 1):
        expected = ref.gaussian_flow(latents * 80.0, 80.0, float(sig[j]), den.mean, den.eigvals, den.eigvecs)
        assert rel_err(traj.x[j], expected) < 1e-12
    for j in (0, i - 1, i, 17):  # the Gaussian's D below the jump, the network's (here the same map) after
        level = torch.full((2,), float(sig[j]), dtype=torch.float64)
        assert rel_err(traj.denoised[j], den(traj.x[j], level)) < 1e-8
    assert torch.equal(traj.x[-1], final)
    _, plain = fastgauss.sample_heun(den, latents, sig, return_trajectory=True)
    assert plain.nfe == 2 * 18 - 1 and plain.jump is None and plain.x.shape == traj.x.shape


class _GaussianAbove(torch.nn.Module):
    """The Gaussian denoiser above ``level``, the Gaussian shifted by ``offset`` below it."""

    def __init__(self, gaussian, level, offset):
        super().__init__()
        self.gaussian, self.level, self.offset = gaussian, level, offset

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        low = (sigma < self.level).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return self.gaussian(x, sigma) + low * self.offset


def _probes(den, g, n=64):
    return den.sample(torch.randn(n, den.dim, generator=g, dtype=torch.float64), fastgauss.edm_sigmas(4))


@pytest.mark.parametrize("sampler", [fastgauss.sample_euler, fastgauss.sample_heun])
def test_auto_with_the_gaussian_as_network_jumps_to_the_closed_form(sampler):
    den, g = random_gaussian(d=6, rank=4, lam_rest="isotropic")
    latents = torch.randn(3, 6, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(12)
    choice = teleport.choose_switch(den, den, sig.tolist(), data=_probes(den, g, 16), tol=1e-6, probes=4)
    assert choice.sigma == 0.0 and max(choice.bound) < 1e-12 and choice.checked is not None
    out, traj = sampler(den, latents, sig, gaussian=den, switch_sigma="auto", data=_probes(den, g, 16), tol=1e-6,
                        return_trajectory=True)
    assert traj.nfe == 0 and rel_err(out, den.sample(latents, sig)) < 1e-12


def test_auto_never_switches_below_where_the_network_leaves_the_gaussian():
    den, g = random_gaussian(d=6)
    data = _probes(den, g)
    sig = fastgauss.edm_sigmas(18)
    net = _GaussianAbove(den, level=2.0, offset=0.5)  # the Gaussian above sigma 2, 0.5 off below
    chosen = teleport.auto_switch_sigma(net, den, sig.tolist(), data=data, tol=0.02)
    assert chosen == min(s for s in sig.tolist() if s >= 2.0)
    # The sampler uses it: the network is called only from that level down.
    calls = []  # the levels of the sampler's own calls (batch 3; the choice uses 64 and 32 probes)
    spy = lambda x, s: (x.shape[0] == 3 and calls.append(float(s.reshape(-1)[0]))) or net(x, s)  # noqa: E731
    fastgauss.sample_euler(spy, torch.randn(3, 6, generator=g, dtype=torch.float64), sig, gaussian=den,
                           switch_sigma="auto", data=data, tol=0.02)
    assert max(calls) == pytest.approx(chosen)
    # Off everywhere by a lot: the end point moves by more than tol from the first level on.
    far = _GaussianAbove(den, level=1e9, offset=50.0)
    assert teleport.auto_switch_sigma(far, den, sig.tolist(), data=data, tol=0.02) == 80.0


class _GaussianBelow(_GaussianAbove):
    """The Gaussian below ``level``, shifted by ``offset`` at and above it."""

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        high = (sigma >= self.level).to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return self.gaussian(x, sigma) + high * self.offset


def test_a_mismatch_at_the_top_counts_as_little_as_it_moves_the_samples():
    # Off by 0.2 above sigma 30 (where EDM's networks differ most from the Gaussian): a rule that
    # asks the RMSE to be small at every jumped level never jumps; the end point barely moves.
    den, g = random_gaussian(d=6)
    sig = fastgauss.edm_sigmas(18).tolist()
    net = _GaussianBelow(den, level=30.0, offset=0.2)
    choice = teleport.choose_switch(net, den, sig, data=_probes(den, g), tol=0.02)
    assert choice.rmse[0] == pytest.approx(0.2) and choice.sigma < 1.0
    err, plain = choice.checked[choice.sigma]
    assert err <= plain + 0.02


def test_the_bound_is_the_end_point_change_for_an_offset_along_the_top_eigenvector():
    # D = Gaussian + c, c along the top eigenvector: the flow stays linear, every J c is parallel,
    # so the bound E(s) equals the change of the end point a jump to s makes (up to quadrature).
    den, g = random_gaussian(d=6)
    c = 0.05 * den.eigvecs[:, 0]
    net = _GaussianAbove(den, level=1e9, offset=c)
    sig = fastgauss.edm_sigmas(64).tolist()
    choice = teleport.choose_switch(net, den, sig, data=_probes(den, g), tol=10.0, probes=0)
    latents = torch.randn(8, 6, generator=g, dtype=torch.float64)
    plain = fastgauss.sample_heun(net, latents, torch.tensor(sig, dtype=torch.float64))
    for i in (8, 24, 40):
        jumped = fastgauss.sample_heun(net, latents, torch.tensor(sig, dtype=torch.float64), gaussian=den,
                                       switch_sigma=sig[i])
        moved = float((jumped - plain).pow(2).mean(1).sqrt().mean())
        assert moved == pytest.approx(choice.bound[i], rel=0.03), sig[i]


def test_auto_on_a_memorizing_denoiser_stops_above_where_the_gaussian_fails():
    # The empirical denoiser of 12 points is the Gaussian's at high noise only.
    g = torch.Generator().manual_seed(3)
    train = torch.randn(12, 6, generator=g, dtype=torch.float64)
    den = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(train))
    emp = fastgauss.EmpiricalDenoiser(train)
    sig = fastgauss.edm_sigmas(12).tolist()
    # Seeded: the RMSE at sigma 3.7 is near the 0.1 line (0.06-0.12 over the global RNG's states).
    choice = teleport.choose_switch(emp, den, sig, data=train, tol=0.02, probes=8,
                                    generator=torch.Generator().manual_seed(0))
    failing = [s for s, r in zip(sig, choice.rmse) if r > 0.1]  # measured: the Gaussian does not hold there
    assert failing and choice.sigma > max(failing)
    err, plain = choice.checked[choice.sigma]
    assert err <= plain + 0.02
    latents = torch.randn(8, 6, generator=g, dtype=torch.float64)
    jumped = fastgauss.sample_heun(emp, latents, torch.tensor(sig, dtype=torch.float64), gaussian=den,
                                   switch_sigma="auto", data=train, tol=0.02)
    assert fastgauss.memorization_ratio(jumped, train) == fastgauss.memorization_ratio(
        fastgauss.sample_heun(emp, latents, torch.tensor(sig, dtype=torch.float64)), train)


def test_the_end_point_check_moves_the_jump_up_when_the_bound_is_too_hopeful():
    # A network whose mismatch grows with sigma fools the first-order bound's contraction...
    den, g = random_gaussian(d=6)

    class Steep(torch.nn.Module):
        def forward(self, x, sigma):
            s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, 1)
            return den(x, sigma) + 0.02 * s * torch.tanh(x - den.mean)  # D's slope off by 0.02 sigma

    sig = fastgauss.edm_sigmas(18).tolist()
    data = _probes(den, g)
    hopeful = teleport.choose_switch(Steep(), den, sig, data=data, tol=0.05, probes=0)
    checked = teleport.choose_switch(Steep(), den, sig, data=data, tol=0.05)
    assert checked.sigma >= hopeful.sigma
    for level, (err, plain) in checked.checked.items():
        assert (err <= plain + 0.05) == (level == checked.sigma)


def test_auto_switch_reads_an_analyze_report(tmp_path):
    den, _ = random_gaussian(d=4)
    sig = fastgauss.edm_sigmas(18).tolist()
    # The Gaussian down to sigma 1, far from it below: the bound is 0 down to the last level >= 1.
    report = {"per_sigma": {"sigma": [0.001, 0.5, 1.0, 10.0, 80.0], "rmse_gaussian": [1.0, 1.0, 0.0, 0.0, 0.0]}}
    choice = teleport.choose_switch(None, den, sig, report=report, tol=0.02)
    assert choice.sigma == min(s for s in sig if s >= 1.0) and choice.source == "report" and choice.checked is None
    path = tmp_path / "summary.json"
    import json
    path.write_text(json.dumps(report))
    assert teleport.auto_switch_sigma(None, den, sig, report=str(path), tol=0.02) == choice.sigma
    # Never measured at the top of the schedule: not trusted, no jump.
    top = {"per_sigma": {"sigma": [0.001, 10.0], "rmse_gaussian": [0.0, 0.0]}}
    assert teleport.auto_switch_sigma(None, den, sig, report=top, tol=0.02) == 80.0
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
    den, g = random_gaussian(d=6)
    latents = torch.randn(2, 6, generator=g, dtype=torch.float64)
    sig = fastgauss.edm_sigmas(8)
    with pytest.raises(ValueError, match="switch_sigma.*above"):
        fastgauss.sample_euler(den, latents, sig, gaussian=den, switch_sigma=81.0)
    for bad in (-1.0, math.nan, "soon"):
        with pytest.raises(ValueError, match="switch_sigma"):
            fastgauss.sample_heun(den, latents, sig, gaussian=den, switch_sigma=bad)
    other, _ = random_gaussian(d=5)
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
    with pytest.raises(ValueError, match="sampler"):
        teleport.choose_switch(den, den, sig.tolist(), data=latents, sampler="rk4")
    with pytest.raises(ValueError, match="data.*5 features"):
        teleport.auto_switch_sigma(den, den, sig.tolist(), data=latents[:, :5])
