"""Pieces shared by the dataset readers: the limit on items kept and the mapping onto [-1, 1]."""

from __future__ import annotations

import numpy as np
import torch


def kept_count(available: int, limit: int | None, what: str) -> int:
    """Number of items to keep out of ``available``; error if ``limit`` is too big."""
    if limit is None:
        return available
    if limit > available:
        raise ValueError(f"limit={limit} is larger than the {available} items in {what}")
    return int(limit)


def scale_to_unit(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly onto ``[-1, 1]``; returns ``float32``.

    Computed in float64 then cast, so ``uint8`` input gives exactly
    ``(x / 127.5 - 1).astype(float32)``.
    """
    half = (hi - lo) / 2.0
    out = (arr.astype(np.float64) - lo) / half - 1.0
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
