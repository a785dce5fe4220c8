"""Gaussian teleportation: replace a sampler's first steps by the Gaussian's exact probability flow.

A model that has learned the hidden Gaussian structure *is* the Gaussian denoiser at high noise,
so the probability-flow ODE from sigma_0 down to a switch level sigma_s has a closed form
(DESIGN.md section 1, "Exact Gaussian sampling"): with c = U^T (x_0 - mu),
    x_s = mu + U diag(sqrt((lambda + s^2) / (lambda + sigma_0^2))) c
             + sqrt((lam_rest + s^2) / (lam_rest + sigma_0^2)) (the part of x_0 - mu outside span(U)).
The sampler then continues with the network from the first schedule level <= sigma_s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._core.arrays import flatten_batch
from .._core.device import require_device

#: Default ``tol`` of ``switch_sigma="auto"``: how far the jump may move the final samples (RMSE
#: per feature, in data units: pixels in [-1, 1]); it bounds the first-order end-point change E(s)
#: and the error added on the probe latents. Chosen from benchmarks/edm/bench_teleport.py (README,
#: "Gaussian teleportation"): the largest of the sweep 0.004 / 0.007 / 0.01 / 0.015 at which the
#: generalizing demo model's Heun-18 error does not grow (jump to sigma 12.9, 25 NFE instead of
#: 35); its end points moved by about 0.8 times the bound.
DEFAULT_TOL = 0.007


def gaussian_jump(gaussian, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """x carried from sigma_from down to sigma_to by the Gaussian's exact probability flow.

    gaussian: a ``GaussianDenoiser``; x: [B, *feature_shape] at level sigma_from > 0, on the
    Gaussian's device; 0 <= sigma_to <= sigma_from. Returns [B, *feature_shape] in x's dtype.
    This is ``gaussian.flow(x, [sigma_from, sigma_to])`` (its dtype rule: the promotion of x's
    and the eigenvectors' dtypes, at least float32, with float64 scale factors).

    Example:
        >>> import torch, fastgauss
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(torch.randn(200, 6)))
        >>> z = torch.randn(3, 6)
        >>> torch.equal(gaussian_jump(g, 80.0 * z, 80.0, 0.0), g.sample(z, torch.tensor([80.0, 0.0])))
        True
    """
    if not (math.isfinite(sigma_from) and sigma_from > 0):
        raise ValueError(f"sigma_from: expected a level > 0, got {sigma_from!r}")
    if not (0 <= sigma_to <= sigma_from):
        raise ValueError(f"sigma_to: expected a level in [0, {sigma_from:g}], got {sigma_to!r}")
    flat = flatten_batch(x, "x")
    if flat.shape[1] != gaussian.dim:
        raise ValueError(f"x: has {flat.shape[1]} features (shape {tuple(x.shape)}) but the Gaussian has "
                         f"{gaussian.dim} (feature shape {tuple(gaussian.feature_shape)})")
    return gaussian.flow(x, [float(sigma_from), float(sigma_to)])


def switch_index(sigmas: list[float], switch_sigma: float) -> int:
    """Index of the first schedule level <= switch_sigma (sigmas decreasing, ending in 0).

    A level matches itself within a relative 1e-6, so a level read off a float64 schedule still
    selects that level of the same schedule held in float32."""
    if not (math.isfinite(switch_sigma) and switch_sigma >= 0):
        raise ValueError(f"switch_sigma: expected a level >= 0, 'auto' or None, got {switch_sigma!r}")
    if switch_sigma > sigmas[0]:
        raise ValueError(f"switch_sigma: {switch_sigma:g} is above the schedule's first level sigma_max = "
                         f"{sigmas[0]:g}: nothing to jump over")
    return next(i for i, s in enumerate(sigmas) if s <= switch_sigma * (1 + 1e-6))


def clip_schedule(sigmas: list[float], denoiser) -> list[float]:
    """The schedule restricted to the denoiser's ``[sigma_min, sigma_max]`` when it declares them.

    Positive levels are clamped into the range and repeated levels dropped; the final 0 stays.
    A DDPM model's sigma_min is about 0.01, above ``edm_sigmas``' 0.002, so its last positive
    levels collapse onto sigma_min.
    """
    lo, hi = getattr(denoiser, "sigma_min", None), getattr(denoiser, "sigma_max", None)
    if lo is None and hi is None:
        return sigmas
    lo = 0.0 if lo is None else float(lo)
    hi = math.inf if hi is None else float(hi)
    clipped: list[float] = []
    for s in sigmas:
        s = min(max(s, lo), hi) if s > 0 else 0.0
        if not clipped or s < clipped[-1]:
            clipped.append(s)
    return clipped


@dataclass
class SwitchChoice:
    """What ``switch_sigma="auto"`` measured and chose.

    sigma: the switch level (levels[0]: no jump; 0: the closed form, no network call);
    levels: the schedule, levels[0] down to 0; bound: [len(levels)] the bound on the end-point
    change of a jump to each level (0 for levels[0]); rmse: the network's RMSE to the Gaussian
    at each positive level; source: "data" (measured per eigendirection on probes) or "report"
    (an analyze summary's RMSE times the largest eigendirection's factor: a looser bound);
    checked: {level: (median end-point error teleported, plain)} of the check on probe latents
    (None when not run); probe_nfe: the network calls the check made (all probes together).
    """

    sigma: float
    levels: list[float]
    bound: list[float]
    rmse: list[float]
    source: str
    checked: dict[float, tuple[float, float]] | None = None
    probe_nfe: int = 0


def choose_switch(denoiser, gaussian, sigmas: list[float], *, data=None, report=None, tol: float | None = None,
                  n: int = 64, generator: torch.Generator | None = None, sampler: str = "heun",
                  probes: int = 32) -> SwitchChoice:
    """The lowest schedule level s whose end-point bound E(s) is at most ``tol``.

    A mismatch delta(sigma) = D_net - D_gauss moves x by delta d(ln sigma) (the flow is
    dx/dsigma = (x - D) / sigma), and the flow below carries that to the end point through its
    Jacobian, which for the Gaussian is sqrt(lambda / (lambda + sigma^2)) per eigendirection: a
    mismatch at sigma = 80 reaches the samples ~ 50 times weaker than one at sigma = 1. So
        E(s) = integral from s to sigmas[0] of RMS(J(sigma) delta(sigma)) d ln(sigma)
    (trapezoids on the schedule's levels; the last step to 0 counts RMS(J delta) at sigma_min once)
    bounds the RMSE per feature by which the jump moves the final samples, to first order
    (Minkowski: the norm of a sum is at most the sum of the norms). ``tol`` is that bound's limit,
    in data units (``DEFAULT_TOL``); the network matching the Gaussian everywhere gives E = 0, a
    jump to the closed form.

    data: probes [N, *feature_shape] (n of them, noised at every positive level, J applied per
    eigendirection); or report: an ``analyze`` summary (dict or summary.json path) with
    per_sigma.sigma / rmse_gaussian, interpolated in log sigma, where only the RMSE is known, so
    J is bounded by the largest eigenvalue's factor; levels outside the report are not trusted.

    The bound is first order and trusts the Gaussian's Jacobian below the jump; a network whose D
    is far from the Gaussian's at high noise (an epsilon-predicting UNet: RMSE ~ 1 at sigma = 80)
    moves its samples more than that. So the level the bound allows is then checked on ``probes``
    latents (0: no check): the median over probes of each sample's RMSE to Heun with every step
    halved, ``sampler`` ("heun" or "euler") teleported against plain; while the teleported error
    exceeds the plain one by more than ``tol``, the jump moves one level up. The median, not the
    mean: a memorizing model sends the odd probe to another training image after any push at high
    noise (RMSE ~ 0.3 for that one sample), which would make the choice hinge on one probe of 32.
    The check costs ``probe_nfe`` calls.
    """
    tol = DEFAULT_TOL if tol is None else float(tol)
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: expected a bound > 0 on the end-point RMSE, got {tol!r}")
    levels = [s for s in sigmas if s > 0]
    if data is not None:
        rmse, weighted = _contracted_mismatch(denoiser, gaussian, data, levels, n, generator)
        source = "data"
    elif report is not None:
        rmse = _rmse_from_report(report, levels)
        lam = max(float(gaussian.eigvals.max()) if gaussian.eigvals.numel() else 0.0, float(gaussian.lam_rest))
        weighted = [r * math.sqrt(lam / (lam + s**2)) if math.isfinite(r) else math.inf for r, s in zip(rmse, levels)]
        source = "report"
    else:
        raise ValueError("switch_sigma='auto' needs data= (a probe set) or report= (an analyze summary)")
    bound = [0.0]
    for i in range(1, len(levels)):
        step = 0.5 * (weighted[i - 1] + weighted[i]) * math.log(levels[i - 1] / levels[i])
        bound.append(bound[-1] + step)
    if len(sigmas) > len(levels):  # the final Euler step from sigma_min to 0: |d sigma| / sigma = 1
        bound.append(bound[-1] + weighted[-1])
    chosen = 0
    for i, e in enumerate(bound):  # E only grows as s falls
        if not e <= tol:
            break
        chosen = i
    choice = SwitchChoice(sigmas[chosen], list(sigmas), bound, rmse, source)
    if probes and chosen > 0 and denoiser is not None:
        _check_end_points(choice, denoiser, gaussian, chosen, tol, sampler, probes, generator)
    return choice


def _check_end_points(choice: SwitchChoice, denoiser, gaussian, chosen: int, tol: float, sampler: str,
                      probes: int, generator) -> None:
    """Moves choice.sigma up the schedule until the teleported error on probe latents is within tol."""
    from .sampling import sample_euler, sample_heun

    if sampler not in ("heun", "euler"):
        raise ValueError(f"sampler: expected 'heun' or 'euler', got {sampler!r}")
    run = sample_heun if sampler == "heun" else sample_euler
    sig = choice.levels
    fine = [sig[0]]
    for a, b in zip(sig[:-1], sig[1:]):  # each step halved (geometric midpoint; the last, to 0, kept)
        fine += ([math.sqrt(a * b)] if b > 0 else []) + [b]
    z = torch.randn((probes, *gaussian.feature_shape), generator=generator, dtype=gaussian.mean.dtype)
    z = z.to(gaussian.mean.device)
    with torch.no_grad():
        reference, t = sample_heun(denoiser, z, torch.tensor(fine, dtype=torch.float64), return_trajectory=True)
        plain, p = run(denoiser, z, torch.tensor(sig, dtype=torch.float64), return_trajectory=True)
        nfe = t.nfe + p.nfe
        plain_err = _per_sample_rmse(plain, reference)
        choice.checked = {}
        for i in range(chosen, 0, -1):
            jumped, j = run(denoiser, z, torch.tensor(sig, dtype=torch.float64), gaussian=gaussian, switch_sigma=sig[i],
                            return_trajectory=True)
            nfe += j.nfe
            err = _per_sample_rmse(jumped, reference)
            choice.checked[sig[i]] = (err, plain_err)
            if err <= plain_err + tol:
                choice.sigma = sig[i]
                break
        else:
            choice.sigma = sig[0]
    choice.probe_nfe = nfe * probes


def _per_sample_rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    """Median over samples of the RMSE per feature."""
    return float((a - b).reshape(a.shape[0], -1).double().pow(2).mean(1).sqrt().median())


def auto_switch_sigma(denoiser, gaussian, sigmas: list[float], *, data=None, report=None,
                      tol: float | None = None, n: int = 64, generator: torch.Generator | None = None,
                      sampler: str = "heun", probes: int = 32) -> float:
    """The level ``choose_switch`` picks (same arguments): what ``switch_sigma="auto"`` uses."""
    return choose_switch(denoiser, gaussian, sigmas, data=data, report=report, tol=tol, n=n, generator=generator,
                         sampler=sampler, probes=probes).sigma


def _contracted_mismatch(denoiser, gaussian, data, levels, n, generator):
    """([RMSE of delta], [RMS of J delta]) per level, on n probes y + sigma eps (eps drawn once)."""
    from ..diagnostics.protocol import apply_batched, data_rows

    data = data_rows(data, "data")
    if math.prod(data.shape[1:]) != gaussian.dim:
        raise ValueError(f"data: has {math.prod(data.shape[1:])} features (shape {tuple(data.shape)}) but the "
                         f"Gaussian has {gaussian.dim}")
    n = min(n, data.shape[0])
    y = data[torch.randperm(data.shape[0], generator=generator)[:n].to(data.device)]
    eps = torch.randn(y.shape, generator=generator, dtype=data.dtype).to(data.device)
    require_device(data, "data", gaussian.mean.device, "the gaussian")  # never moved
    u = gaussian.eigvecs.to(torch.float64)
    lam = gaussian.eigvals.to(torch.float64)
    lam_rest = float(gaussian.lam_rest)
    rmse, weighted = [], []
    for s in levels:
        x = y + s * eps
        delta = (flatten_batch(apply_batched(denoiser, x, s, 256), "D").double()
                 - flatten_batch(apply_batched(gaussian, x, s, 256), "D").double())
        coeffs = delta @ u
        outside = delta - coeffs @ u.T
        moved = ((coeffs * torch.sqrt(lam / (lam + s**2))).pow(2).sum(1)
                 + lam_rest / (lam_rest + s**2) * outside.pow(2).sum(1))
        rmse.append(float(delta.pow(2).mean().sqrt()))
        weighted.append(float((moved.mean() / gaussian.dim).sqrt()))
    return rmse, weighted


def _rmse_from_report(report, levels: list[float]) -> list[float]:
    import json
    from pathlib import Path

    if isinstance(report, (str, Path)):
        report = json.loads(Path(report).read_text())
    try:
        table = report["per_sigma"]
        sig = torch.tensor(table["sigma"], dtype=torch.float64)
        rmse = torch.tensor(table["rmse_gaussian"], dtype=torch.float64)
    except (KeyError, TypeError) as err:
        raise ValueError("report: expected an analyze summary with per_sigma.sigma and per_sigma.rmse_gaussian") from err
    order = sig.argsort()
    log_sig, rmse = sig[order].log().numpy(), rmse[order].numpy()
    lo, hi = float(sig.min()), float(sig.max())
    # Never measured there: not trusted (an infinite RMSE fails every tolerance).
    return [float(np.interp(math.log(s), log_sig, rmse)) if lo <= s <= hi else math.inf for s in levels]
