"""Turning user input into validated torch tensors: DLPack interop, shapes, finiteness."""

from __future__ import annotations

import math

import numpy as np
import torch

from .device import require_device


def as_tensor(value, name: str) -> torch.Tensor:
    """A torch view of ``value``: a tensor as is, numpy or cupy arrays through DLPack.

    Zero-copy where the producer allows it (numpy on CPU, cupy on CUDA); read-only numpy
    arrays, which DLPack cannot export, are copied.
    """
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        if not value.flags.writeable or not value.dtype.isnative:
            value = np.array(value, dtype=value.dtype.newbyteorder("="), copy=True)
        return torch.from_numpy(value)
    if hasattr(value, "__dlpack__"):
        return torch.from_dlpack(value)
    raise TypeError(
        f"{name}: expected a torch.Tensor or an array supporting DLPack (numpy, cupy), "
        f"got {type(value).__name__}")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """Floating tensors pass through; bool and integers become float32 (float64 above 16 bits)."""
    if x.is_floating_point():
        return x
    if x.is_complex():
        raise TypeError(f"complex input is not supported (dtype {x.dtype})")
    exact_in_fp32 = x.dtype == torch.bool or x.element_size() <= 2
    return x.to(torch.float32 if exact_in_fp32 else torch.float64)


def flatten_batch(x: torch.Tensor, name: str) -> torch.Tensor:
    """[B, *feature_shape] -> [B, d]; rejects tensors without a batch and a feature dimension."""
    if x.dim() < 2:
        raise ValueError(
            f"{name}: expected shape [B, *feature_shape] with at least 2 dimensions, "
            f"got shape {tuple(x.shape)}")
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def inspectable(x: torch.Tensor) -> bool:
    """False inside torch.func transforms (vmap, jacrev, ...), where values cannot be read out."""
    return not torch._C._functorch.is_functorch_wrapped_tensor(x)


def check_finite(x: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` and the count when ``x`` holds NaN or infinity.

    Skipped inside torch.func transforms, which cannot read values out of their tensors.
    """
    if x.is_floating_point() and inspectable(x):
        # One reduction, no mask: the sum is finite unless an element is not (or the values
        # are so large that they overflow when added, which the count below tells apart).
        if not torch.isfinite(x.sum()).item():
            bad = (~torch.isfinite(x)).sum().item()
            if bad:
                raise ValueError(f"{name}: {bad} non-finite value(s) (NaN or inf) out of {x.numel()}")


def probe_stack(v, x: torch.Tensor, name: str = "v", owner: str = "x") -> tuple[torch.Tensor, bool]:
    """(v, stacked): the tangent(s) of a Jacobian-vector product, checked against x [B, *feature_shape].

    v: one probe shaped like x, or K probes [K, B, *feature_shape] (stacked is then True), on x's
    device (never moved: ``owner`` names what holds that device in the error); returned as a float
    tensor, its shape as given. ValueError naming ``name`` otherwise.
    """
    v = require_device(as_float(as_tensor(v, name)), name, x.device, owner)
    stacked = v.dim() == x.dim() + 1
    if v.shape[int(stacked):] != x.shape:
        raise ValueError(f"{name}: expected shape {tuple(x.shape)} or [K, {', '.join(map(str, x.shape))}], "
                         f"got {tuple(v.shape)}")
    return v, stacked
