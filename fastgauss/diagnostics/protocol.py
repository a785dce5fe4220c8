"""The denoiser protocol, checked: what every diagnostic (and the teleport rule) shares.

A denoiser is ``denoiser(x, sigma) -> D`` with x [B, *feature_shape] and sigma a float, a 0-d
tensor or [B] values; D has x's shape and finite values. Noise levels come as a grid of finite
levels > 0 (``fastgauss._core.sigma.level_list``), data as [N, *feature_shape].
"""

from __future__ import annotations

import torch

from .._core.arrays import as_float, as_tensor


def sigma_text(sigma) -> str:
    """A level, or the range of [B] levels, for an error message."""
    if isinstance(sigma, torch.Tensor) and sigma.numel() > 1:
        return f"{float(sigma.min()):g}..{float(sigma.max()):g}"
    return f"{float(sigma):g}"


def check_output(out: torch.Tensor, x: torch.Tensor, sigma, what: str = "denoiser") -> torch.Tensor:
    """The protocol's promises: the shape of x and finite values; a ValueError naming sigma otherwise."""
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{what}: returned {shape} for input {tuple(x.shape)} at sigma={sigma_text(sigma)}")
    if not torch._C._functorch.is_functorch_wrapped_tensor(out) and not torch.isfinite(out).all():
        raise ValueError(f"{what}: returned non-finite values at sigma={sigma_text(sigma)}")
    return out


def apply_batched(denoiser, x: torch.Tensor, sigma: float, batch_size: int) -> torch.Tensor:
    """The denoiser on x in batches, at one level (passed as [b] values), checked."""
    outs = []
    for part in x.split(batch_size):
        s = torch.full((part.shape[0],), sigma, dtype=part.dtype, device=part.device)
        with torch.no_grad():
            outs.append(check_output(denoiser(part, s), part, sigma))
    return torch.cat(outs)


def data_rows(data, name: str) -> torch.Tensor:
    """data as a float tensor [N, *feature_shape], N >= 1; a ValueError naming ``name`` otherwise."""
    data = as_float(as_tensor(data, name))
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty [N, *feature_shape], got shape {tuple(data.shape)}")
    return data
