"""``Trajectory``: the one format in which every sampler of the library returns its path."""

from __future__ import annotations

from typing import NamedTuple

import torch


class Trajectory(NamedTuple):
    """A sampler's path over its schedule of L levels sigma[0] > ... > sigma[L - 1] (usually 0).

    x: [L, B, *feature_shape], the state at every level, the start included: x[0] = latents *
      sigma[0], x[-1] the samples (the tensor the sampler returns beside it). Same dtype and
      device as the latents.
    denoised: [L - 1, B, *feature_shape], the estimate D(x[i]; sigma[i]) the step from level i
      to i + 1 used (with Heun's churn: D at the raised level of the noised state). Same dtype
      and device as x.
    sigma: [L] float64 on the CPU, the levels exactly as the sampler used them: the given
      schedule (after clipping to a model's [sigma_min, sigma_max]), every level of it, jumped
      ones included.
    nfe: the number of denoiser evaluations (0 for the Gaussian's closed form).
    jump: (sigma_from, sigma_to) when the first steps were the Gaussian's exact flow
      (teleportation), else None.

    Returned by ``sample_euler``, ``sample_heun`` and ``GaussianDenoiser.sample`` /
    ``GaussianDenoiser.flow`` with ``return_trajectory=True``, as (samples, trajectory).

    Example:
        >>> import torch
        >>> t = Trajectory(torch.zeros(3, 2, 4), torch.zeros(2, 2, 4), torch.tensor([1.0, 0.5, 0.0],
        ...                dtype=torch.float64), 2, None)
        >>> t.x.shape[0] == t.sigma.shape[0] == t.denoised.shape[0] + 1
        True
    """

    x: torch.Tensor
    denoised: torch.Tensor
    sigma: torch.Tensor
    nfe: int
    jump: tuple[float, float] | None = None
