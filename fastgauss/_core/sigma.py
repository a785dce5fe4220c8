"""The one rule for a noise level: what a ``sigma`` argument may be, and what a list of levels may be.

A noise level (``sigma`` of the denoiser protocol) is a Python number (not a bool), a 0-d tensor
or array, or one value per sample ([B]; [1] counts as one value for all); every value finite and
>= 0, or > 0 where the caller divides by sigma or takes its logarithm. Where 0 is allowed:

- the Gaussian denoiser (``gaussian_denoise``, ``GaussianDenoiser``): sigma = 0 maps x to its
  projection (D = mean + U U^T (x - mean) and the remainder); its score / eps outputs need > 0;
- nowhere else: the empirical denoiser at 0 is a nearest-neighbour lookup, EDM preconditioning
  takes ln(sigma), model adapters have a range [sigma_min, sigma_max] with sigma_min > 0, and a
  diagnostic's grid of levels (``level_list``) is > 0.

Every error names the argument: ``<name>: expected ...`` (ValueError for a value or a shape,
TypeError for a type).
"""

from __future__ import annotations

import math

import torch

from .arrays import as_float, as_tensor, inspectable


def levels_tensor(sigma, name: str = "sigma") -> torch.Tensor:
    """``sigma`` as a floating tensor of its own shape (not yet checked): a Python number becomes a
    0-d float64 tensor, integer tensors become float; a bool is a TypeError naming ``name``."""
    if isinstance(sigma, bool):
        raise TypeError(f"{name}: expected a noise level (a number or a tensor), got a bool")
    if isinstance(sigma, (int, float)):
        return torch.tensor(float(sigma), dtype=torch.float64)
    s = as_tensor(sigma, name)
    if s.dtype == torch.bool:
        raise TypeError(f"{name}: expected a noise level (a number or a tensor), got a bool tensor")
    try:
        return as_float(s)
    except TypeError:
        raise TypeError(f"{name}: expected real noise levels, got dtype {s.dtype}") from None


def check_levels(s: torch.Tensor, name: str = "sigma", *, positive: bool = False, hint: str = "") -> torch.Tensor:
    """``s`` unchanged after checking that every value is finite and >= 0 (> 0 with ``positive``);
    ValueError ``<name>: expected finite noise levels >= 0, got <first offending value>`` (+ hint)
    otherwise. One reduction; skipped inside torch.func transforms (values cannot be read)."""
    if s.numel() and inspectable(s):
        low, high = (float(v) for v in torch.aminmax(s.detach()))  # NaN propagates into both
        bad = low if not math.isfinite(low) else high if not math.isfinite(high) else None
        if bad is None and (low <= 0 if positive else low < 0):
            bad = low
        if bad is not None:
            raise ValueError(f"{name}: expected finite noise levels {'>' if positive else '>='} 0, "
                             f"got {bad:g}{hint}")
    return s


def shape_error(name: str, batch: int, shape, more: str = "") -> ValueError:
    """The one message for a noise level of the wrong shape (``more``: other accepted shapes)."""
    return ValueError(f"{name}: expected a float, a 0-d tensor or {batch} values (one per sample){more}, "
                      f"got shape {tuple(shape)}")


def per_sample(sigma, batch: int, *, device=None, dtype=torch.float32, name: str = "sigma",
               positive: bool = False, hint: str = "") -> torch.Tensor:
    """One noise level per sample: ``sigma`` as a contiguous [batch] tensor of ``dtype`` on ``device``.

    sigma: a Python number, a 0-d tensor or array, [1] (one level for all) or [batch] values;
    finite and >= 0 (> 0 with ``positive``), checked after the cast to ``dtype`` (a float64 level
    past float32's range is not finite in float32). Differentiable (a tensor with a gradient keeps it).

    Example:
        >>> per_sample(0.5, 3)
        tensor([0.5000, 0.5000, 0.5000])
        >>> per_sample(torch.tensor([0.1, -1.0]), 2)
        Traceback (most recent call last):
        ...
        ValueError: sigma: expected finite noise levels >= 0, got -1
    """
    s = levels_tensor(sigma, name).to(device=device, dtype=dtype)
    if s.dim() == 0 or s.shape == (1,):
        s = s.reshape(1).expand(batch)
    elif s.shape != (batch,):
        raise shape_error(name, batch, s.shape)
    return check_levels(s, name, positive=positive, hint=hint).contiguous()


def level_list(sigmas, name: str = "sigmas") -> torch.Tensor:
    """A grid of noise levels for a diagnostic or a command: float64 [S] on the CPU, S >= 1.

    sigmas: a number, a list or tuple of numbers, or a 0-d / 1-D tensor or array; every level
    finite and > 0. Order and repeats are kept.

    Example:
        >>> level_list([0.1, 2])
        tensor([0.1000, 2.0000], dtype=torch.float64)
        >>> level_list([])
        Traceback (most recent call last):
        ...
        ValueError: sigmas: expected at least one noise level, got none
    """
    if isinstance(sigmas, (list, tuple)):
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in sigmas):
            kinds = sorted({type(v).__name__ for v in sigmas if isinstance(v, bool) or not isinstance(v, (int, float))})
            raise TypeError(f"{name}: expected numbers, got {', '.join(kinds)}")
        s = torch.tensor([float(v) for v in sigmas], dtype=torch.float64)
    else:
        s = levels_tensor(sigmas, name).to("cpu", torch.float64)
    if s.dim() > 1:
        raise ValueError(f"{name}: expected a 1-D list of noise levels, got shape {tuple(s.shape)}")
    s = s.reshape(-1)
    if s.numel() == 0:
        raise ValueError(f"{name}: expected at least one noise level, got none")
    return check_levels(s, name, positive=True)


def schedule(sigmas, name: str = "sigmas", *, min_levels: int = 1, sampler: bool = False) -> list[float]:
    """A sampling schedule [L] read as Python floats (from any device): finite, >= 0, the first > 0,
    at least ``min_levels`` of them; ``sampler``: also non-increasing with only the last level 0
    (every sampler step divides by its level). ValueError naming ``name`` otherwise.

    Example:
        >>> schedule(torch.tensor([80.0, 1.0, 0.0]), sampler=True)
        [80.0, 1.0, 0.0]
        >>> schedule([1.0, 2.0], sampler=True)
        Traceback (most recent call last):
        ...
        ValueError: sigmas: must not increase
    """
    values = sigmas if isinstance(sigmas, (list, tuple)) else as_float(as_tensor(sigmas, name))
    sig = torch.as_tensor(values, dtype=torch.float64).detach().cpu().reshape(-1)
    if sig.numel() < min_levels or not torch.isfinite(sig).all() or (sig < 0).any() or sig[0] <= 0:
        least = f"at least {min_levels} " if min_levels > 1 else ""
        raise ValueError(f"{name}: expected {least}finite levels >= 0, starting above 0 (edm_sigmas(n))")
    if sampler and (sig[1:] > sig[:-1]).any():
        raise ValueError(f"{name}: must not increase")
    if sampler and (sig[:-1] <= 0).any():
        raise ValueError(f"{name}: only the last level may be 0 (every step divides by its level)")
    return sig.tolist()
