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

import numpy as np
import torch

from .._core.arrays import flatten_batch

#: Default RMSE tolerance of ``switch_sigma="auto"``: the network's RMSE to the Gaussian denoiser
#: (pixels in [-1, 1]) must stay below it at every level the jump skips. Chosen from
#: benchmarks/bench_teleport.py: the demo's EDM models differ from the Gaussian most at the top of
#: the schedule (RMSE 0.13 and 0.15 at sigma = 80, where EDM's training noise almost never
#: reaches), least around sigma = 5 to 8 (0.057, 0.067), and again by 0.12-0.24 at sigma = 1 to 2.
#: Any tolerance above the top-level error lets the rule run on down to sigma ~ 2, where the
#: samples degrade (Heun, 18 steps: RMSE to the 256-step reference 0.046 against 0.015); below
#: it the rule does not jump at all. 0.1 is on the safe side: it jumps only for a network that
#: matches the Gaussian at the top of its schedule. Pass ``switch_sigma=`` a level to choose by hand.
DEFAULT_TOL = 0.1


def gaussian_jump(gaussian, x: torch.Tensor, sigma_from: float, sigma_to: float) -> torch.Tensor:
    """x carried from sigma_from down to sigma_to by the Gaussian's exact probability flow.

    gaussian: a ``GaussianDenoiser``; x: [B, *feature_shape] at level sigma_from > 0;
    0 <= sigma_to <= sigma_from. Returns [B, *feature_shape] in x's dtype (computed in at
    least float32, with float64 scale factors).

    Example:
        >>> import torch, fastgauss
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(torch.randn(200, 6)))
        >>> x80 = 80.0 * torch.randn(3, 6)
        >>> torch.allclose(gaussian_jump(g, x80, 80.0, 0.0), g.sample(x80 / 80.0, torch.tensor([80.0, 0.0])))
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
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    u = gaussian.eigvecs.to(device=x.device, dtype=dtype)
    mu = gaussian.mean.to(device=x.device, dtype=dtype)
    lam = gaussian.eigvals.to(device=x.device, dtype=torch.float64)
    lam_rest = float(gaussian.lam_rest)
    centred = flat.to(dtype) - mu
    coeffs = centred @ u  # [B, r]
    outside = centred - coeffs @ u.T
    scale = torch.sqrt((lam + sigma_to**2) / (lam + sigma_from**2)).to(dtype)
    scale_rest = math.sqrt((lam_rest + sigma_to**2) / (lam_rest + sigma_from**2))
    out = mu + (coeffs * scale) @ u.T + scale_rest * outside
    return out.reshape(x.shape).to(x.dtype)


def switch_index(sigmas: list[float], switch_sigma: float) -> int:
    """Index of the first schedule level <= switch_sigma (sigmas decreasing, ending in 0)."""
    if not (math.isfinite(switch_sigma) and switch_sigma >= 0):
        raise ValueError(f"switch_sigma: expected a level >= 0, 'auto' or None, got {switch_sigma!r}")
    if switch_sigma > sigmas[0]:
        raise ValueError(f"switch_sigma: {switch_sigma:g} is above the schedule's first level sigma_max = "
                         f"{sigmas[0]:g}: nothing to jump over")
    return next(i for i, s in enumerate(sigmas) if s <= switch_sigma)


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


def auto_switch_sigma(denoiser, gaussian, sigmas: list[float], *, data=None, report=None,
                      tol: float | None = None, n: int = 64, generator: torch.Generator | None = None) -> float:
    """The lowest schedule level s such that the network's RMSE to the Gaussian is below ``tol``
    at every positive level >= s (sigmas[0] when even the first level fails: no jump).

    data: a probe set [N, *feature_shape] (the RMSE is measured here at every positive schedule
    level with ``denoiser_rmse``); or report: an ``analyze`` summary (a dict with
    "per_sigma": {"sigma": [...], "rmse_gaussian": [...]}, or the path of its summary.json),
    whose measurements are interpolated in log sigma onto the schedule.
    """
    tol = DEFAULT_TOL if tol is None else float(tol)
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol: expected an RMSE > 0, got {tol!r}")
    levels = [s for s in sigmas if s > 0]
    if data is not None:
        from ..diagnostics.linearity import denoiser_rmse

        table = denoiser_rmse(denoiser, gaussian, data, torch.tensor(levels, dtype=torch.float64),
                              n=min(n, len(data)), generator=generator)
        rmse = table.value.tolist()
    elif report is not None:
        rmse = _rmse_from_report(report, levels)
    else:
        raise ValueError("switch_sigma='auto' needs data= (a probe set) or report= (an analyze summary)")
    chosen = sigmas[0]
    for s, r in zip(levels, rmse):  # from the top down: stop at the first level that fails
        if not r < tol:
            break
        chosen = s
    return chosen


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
