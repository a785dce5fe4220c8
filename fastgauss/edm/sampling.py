"""EDM noise schedule and deterministic / stochastic samplers for any denoiser.

A denoiser follows the protocol ``denoiser(x, sigma) -> D`` with x: [B, *feature_shape];
the samplers call it with sigma as a [B] tensor (one level for every sample).
"""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .._core.sigma import schedule
from .._core.arrays import as_float, as_tensor
from .._core.trajectory import Trajectory

__all__ = ["Trajectory", "edm_sigmas", "sample_euler", "sample_heun"]


def edm_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
               device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Karras et al. (2022) schedule: [n + 1] levels, sigma_max down to sigma_min, then 0.

    sigma_i = (smax^(1/rho) + i / (n - 1) (smin^(1/rho) - smax^(1/rho)))^rho for i < n.

    Example:
        >>> import fastgauss
        >>> s = fastgauss.edm_sigmas(4)
        >>> [round(v, 4) for v in s.tolist()]
        [80.0, 9.7232, 0.47, 0.002, 0.0]
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n: expected a number of steps >= 1, got {n!r}")
    if not (0 < sigma_min <= sigma_max and math.isfinite(sigma_max)) or rho <= 0:
        raise ValueError(f"expected 0 < sigma_min <= sigma_max < inf and rho > 0, got {sigma_min}, {sigma_max}, {rho}")
    i = torch.arange(n, dtype=torch.float64)
    frac = i / (n - 1) if n > 1 else torch.zeros(1, dtype=torch.float64)
    levels = (sigma_max ** (1 / rho) + frac * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return torch.cat([levels, torch.zeros(1, dtype=torch.float64)]).to(device=device, dtype=dtype)


def _check_schedule(latents, sigmas):
    return as_float(as_tensor(latents, "latents")), schedule(sigmas, min_levels=2, sampler=True)


def _call(denoiser, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """D(x; sigma) checked, in x's dtype: the sampler's state keeps the latents' dtype."""
    out = denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device))
    if out.shape != x.shape:
        raise ValueError(f"denoiser: returned shape {tuple(out.shape)} for input {tuple(x.shape)} at sigma={sigma:g}")
    if not torch.isfinite(out).all():
        raise ValueError(f"denoiser: returned non-finite values at sigma={sigma:g}")
    if out.device != x.device:
        raise ValueError(f"denoiser: returned a result on {out.device} for input on {x.device}")
    return out.to(x.dtype)


class _Recorder:
    """Collects a ``Trajectory`` when asked to: x at every level, D as each step used it."""

    def __init__(self, x: torch.Tensor, enabled: bool, schedule: list[float]):
        self.enabled, self.xs, self.ds = enabled, [x], []
        self.schedule = schedule  # the whole (clipped) schedule, jumped levels included
        self.jump: tuple[float, float] | None = None

    def record(self, x: torch.Tensor, denoised: torch.Tensor) -> None:
        if self.enabled:
            self.xs.append(x)
            self.ds.append(denoised)

    def result(self, x: torch.Tensor, nfe: int):
        if not self.enabled:
            return x
        ds = torch.stack(self.ds) if self.ds else x.new_empty((0, *x.shape))
        return x, Trajectory(torch.stack(self.xs), ds, torch.tensor(self.schedule, dtype=torch.float64), nfe,
                             self.jump)


def _start(denoiser, latents, sigmas, gaussian, switch_sigma, data, report, tol, return_trajectory, sampler):
    """(x at the level the network starts from, the remaining schedule, the recorder).

    Without ``gaussian`` this is x = latents * sigmas[0] and the whole (clipped) schedule. With it
    and a ``switch_sigma``, x is carried from sigmas[0] to the first level <= switch_sigma by the
    Gaussian's exact flow (``GaussianDenoiser.flow``, what ``teleport.gaussian_jump`` calls), and
    the trajectory holds the Gaussian's x and D at the levels jumped over.
    """
    from . import teleport

    latents, sig = _check_schedule(latents, sigmas)
    sig = teleport.clip_schedule(sig, denoiser)
    x = latents * sig[0]
    trajectory = _Recorder(x, return_trajectory, sig)
    if switch_sigma is None:
        if gaussian is not None:
            raise ValueError("switch_sigma: gaussian= was given without switch_sigma= (a level, or 'auto')")
        return x, sig, trajectory
    if gaussian is None:
        raise ValueError("gaussian: switch_sigma= needs gaussian= (a fastgauss.GaussianDenoiser of the data)")
    features = math.prod(latents.shape[1:])
    if features != gaussian.dim:
        raise ValueError(f"gaussian: has {gaussian.dim} features (feature shape {tuple(gaussian.feature_shape)}) but "
                         f"the latents have {features} (shape {tuple(latents.shape)})")
    if isinstance(switch_sigma, str):
        if switch_sigma != "auto":
            raise ValueError(f"switch_sigma: expected a level >= 0, 'auto' or None, got {switch_sigma!r}")
        switch_sigma = teleport.auto_switch_sigma(denoiser, gaussian, sig, data=data, report=report, tol=tol,
                                                  sampler=sampler)
    i = teleport.switch_index(sig, float(switch_sigma))
    if i == 0:
        return x, sig, trajectory
    out = gaussian.flow(x, sig[:i + 1], return_trajectory=return_trajectory, name="latents")
    jumped = out[0] if return_trajectory else out
    if return_trajectory:
        trajectory.xs, trajectory.ds = list(out[1].x), list(out[1].denoised)
        trajectory.jump = (sig[0], sig[i])
    return jumped, sig[i:], trajectory


_TELEPORT_DOC = """
    Teleportation (Wang & Vastola): with ``gaussian=`` a ``GaussianDenoiser`` of the training data
    and ``switch_sigma=`` a level s (or "auto"), the first steps are replaced by the Gaussian's
    exact probability flow from sigmas[0] to the first schedule level <= s, and the network
    finishes from there (``switch_sigma=0`` is the closed form, no network call). "auto"
    (``teleport.choose_switch``) picks the lowest level whose bound on how far the jump moves the
    final samples (RMSE per feature, data units) is at most ``tol`` (``teleport.DEFAULT_TOL``): the
    network's mismatch to the Gaussian, measured on ``data=`` (probes [N, *feature_shape]) or read
    from ``report=`` (an ``analyze`` summary or its summary.json), weighted by how much of it the
    flow below carries to the end; then checks that level on 32 probe latents (median error to
    Heun with halved steps, teleported against plain), moving up while the jump costs more than
    ``tol`` of error.
    A denoiser with ``sigma_min`` / ``sigma_max`` attributes (the model adapters) gets its
    schedule clamped into that range (repeated levels dropped, the final 0 kept).
"""


def sample_euler(denoiser, latents, sigmas, *, gaussian=None, switch_sigma=None, data=None, report=None,
                 tol: float | None = None, return_trajectory: bool = False, progress: bool = False):
    """Euler steps of the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma.

    latents: [B, *feature_shape] unit Gaussian noise; sampling starts at latents * sigmas[0].
    sigmas: L decreasing levels ending in 0 (``edm_sigmas``; read as numbers, any device).
    Returns the samples [B, ...] in the latents' dtype, on their device (the denoiser must
    return its result there: nothing is moved), or with ``return_trajectory`` (samples,
    ``Trajectory``): x [L, B, ...] at every level (the start and any levels a teleport jumped
    included), denoised [L - 1, B, ...] (D as each step used it), sigma [L] float64, nfe, jump.

    Example (the Gaussian denoiser of a dataset stands in for a network):
        >>> import torch, fastgauss
        >>> data = torch.randn(500, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
        >>> z = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
        >>> x, traj = fastgauss.sample_euler(g, z, fastgauss.edm_sigmas(18), return_trajectory=True)
        >>> tuple(x.shape), traj.nfe, tuple(traj.x.shape), tuple(traj.denoised.shape)
        ((8, 1, 4, 4), 18, (19, 8, 1, 4, 4), (18, 8, 1, 4, 4))
    """
    x, sig, trajectory = _start(denoiser, latents, sigmas, gaussian, switch_sigma, data, report, tol,
                                return_trajectory, "euler")
    nfe = 0
    for t_cur, t_next in tqdm(list(zip(sig[:-1], sig[1:])), desc="euler", disable=not progress):
        denoised = _call(denoiser, x, t_cur)
        nfe += 1
        x = x + (t_next - t_cur) * (x - denoised) / t_cur
        trajectory.record(x, denoised)
    return trajectory.result(x, nfe)


def sample_heun(denoiser, latents, sigmas, *, S_churn: float = 0.0, S_min: float = 0.0,
                S_max: float = float("inf"), S_noise: float = 1.0, generator: torch.Generator | None = None,
                gaussian=None, switch_sigma=None, data=None, report=None, tol: float | None = None,
                return_trajectory: bool = False, progress: bool = False):
    """EDM's second-order sampler (Karras et al. 2022, Algorithm 2): 2n - 1 denoiser calls.

    Heun's trapezoidal correction wherever the next level is above 0; optional churn adds
    noise with gamma = min(S_churn / n, sqrt(2) - 1) for levels in [S_min, S_max].
    Same arguments and return values as ``sample_euler`` (the trajectory's "denoised" holds D at
    each step's first evaluation: with churn, at the raised level of the noised state).

    Example (18 steps: 35 calls, within 5 % of the exact Gaussian flow; 64 steps: within 0.5 %):
        >>> import torch, fastgauss
        >>> data = torch.randn(500, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
        >>> z = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(1))
        >>> x, traj = fastgauss.sample_heun(g, z, fastgauss.edm_sigmas(18), return_trajectory=True)
        >>> exact = g.sample(z, torch.tensor([80.0, 0.0]))
        >>> rel = lambda a: float((a - exact).norm() / exact.norm())
        >>> traj.nfe, rel(x) < 0.05, rel(fastgauss.sample_heun(g, z, fastgauss.edm_sigmas(64))) < 0.005
        (35, True, True)
    """
    x, sig, trajectory = _start(denoiser, latents, sigmas, gaussian, switch_sigma, data, report, tol,
                                return_trajectory, "heun")
    n = len(trajectory.schedule) - 1  # churn's gamma is set by the whole schedule, jumped steps included
    nfe = 0
    for t_cur, t_next in tqdm(list(zip(sig[:-1], sig[1:])), desc="heun", disable=not progress):
        gamma = min(S_churn / n, math.sqrt(2) - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + math.sqrt(t_hat**2 - t_cur**2) * S_noise * noise
        denoised = _call(denoiser, x, t_hat)
        nfe += 1
        slope = (x - denoised) / t_hat
        x_next = x + (t_next - t_hat) * slope
        if t_next > 0:
            slope_next = (x_next - _call(denoiser, x_next, t_next)) / t_next
            nfe += 1
            x_next = x + (t_next - t_hat) * (slope + slope_next) / 2
        x = x_next
        trajectory.record(x, denoised)
    return trajectory.result(x, nfe)


sample_euler.__doc__ += _TELEPORT_DOC
sample_heun.__doc__ += _TELEPORT_DOC
