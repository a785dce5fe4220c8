"""The one dtype-promotion rule of the PyTorch paths: float64 when an input is float64, else float32."""

from __future__ import annotations

import torch


def compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype a PyTorch path computes in for inputs of ``dtypes``: torch's promotion of them,
    float64 when that is float64, float32 otherwise (half, bfloat16 and integer inputs compute
    in float32).

    Example:
        >>> compute_dtype(torch.bfloat16, torch.float32), compute_dtype(torch.float32, torch.float64)
        (torch.float32, torch.float64)
    """
    dtype = dtypes[0]
    for other in dtypes[1:]:
        dtype = torch.promote_types(dtype, other)
    return torch.float64 if dtype == torch.float64 else torch.float32
