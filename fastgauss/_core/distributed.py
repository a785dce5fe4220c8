"""Exact all-reduce of Moments across torch.distributed ranks (any backend)."""

from __future__ import annotations

import torch
import torch.distributed as dist

_UNKNOWN = -1


def _comm_device(moments, group) -> torch.device:
    if moments.device is not None:
        return moments.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree_on_dims(moments, group, device) -> tuple[int, int]:
    """All ranks that saw data must agree on d and dz; returns them (dz = 0 when unpaired)."""
    d = moments.dim if moments.dim is not None else _UNKNOWN
    dz = _UNKNOWN if moments.paired is None else (moments.cross_dim or 0)
    big = 2 ** 62
    dims = torch.tensor([d, dz, -(d if d != _UNKNOWN else big), -(dz if dz != _UNKNOWN else big)],
                        dtype=torch.int64, device=device)
    dist.all_reduce(dims, op=dist.ReduceOp.MAX, group=group)
    max_d, max_dz, min_d, min_dz = dims[0].item(), dims[1].item(), -dims[2].item(), -dims[3].item()
    if max_d != _UNKNOWN and min_d != max_d:
        raise ValueError(f"all_reduce: ranks hold different feature sizes ({min_d} and {max_d})")
    if max_dz != _UNKNOWN and min_dz != max_dz:
        raise ValueError(f"all_reduce: ranks disagree on paired z (feature sizes {min_dz} and {max_dz}; 0 = unpaired)")
    return max_d, max_dz


def all_reduce_moments(moments, group=None) -> None:
    """In place: every rank ends with the merged moments of all ranks.

    Uses sums only: n = sum n_r, mu = sum n_r mu_r / n, and
    M = sum (M_r + n_r (mu_r - mu)(mu_r - mu)^T), the many-way form of Chan's merge.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("all_reduce: torch.distributed is not initialized (call init_process_group first)")
    device = _comm_device(moments, group)
    d, dz = _agree_on_dims(moments, group, device)
    if d == _UNKNOWN:
        return  # no rank has seen data
    if moments.feature_shape is None:
        moments._allocate((d,), (dz,) if dz > 0 else None, device)
    count = torch.tensor([float(moments.count)], dtype=torch.float64, device=device)
    dist.all_reduce(count, group=group)
    n = count.item()
    if n == 0:
        return
    n_r = float(moments.count)
    weighted = [moments._mean * n_r] + ([moments._cross_mean * n_r] if dz > 0 else [])
    for t in weighted:
        dist.all_reduce(t, group=group)
    mean = weighted[0] / n
    delta = moments._mean - mean
    scatter = moments._scatter.clone()
    scatter.addr_(delta, delta, alpha=n_r)
    dist.all_reduce(scatter, group=group)
    moments._scatter, moments._mean = scatter, mean
    if dz > 0:
        cross_mean = weighted[1] / n
        cross = moments._cross_scatter.clone()
        cross.addr_(moments._cross_mean - cross_mean, delta, alpha=n_r)
        dist.all_reduce(cross, group=group)
        moments._cross_scatter, moments._cross_mean = cross, cross_mean
    moments.count = int(n)
    # The least precise products any rank accumulated with (as Moments.merge keeps them).
    from ..ops.moments import PRODUCT_ROUNDING
    order = list(PRODUCT_ROUNDING)
    mine = order.index(moments.product_precision) if moments.product_precision is not None else -1
    worst = torch.tensor([mine], dtype=torch.int64, device=device)
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=group)
    moments.product_precision = order[int(worst)] if int(worst) >= 0 else None
