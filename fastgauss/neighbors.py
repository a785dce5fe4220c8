"""Nearest neighbours in the training set and the memorization metrics built on them."""

from __future__ import annotations

import torch

from ._arrays import as_float, as_tensor, check_finite, flatten_batch
from . import _rows
from ._backend import backend_for

#: Bytes of the [B, chunk] distance block per chunk of data rows.
_WORKSPACE_BYTES = 32 << 20


def _kernel_candidates(x: torch.Tensor, data: torch.Tensor, center: torch.Tensor, count: int) -> torch.Tensor:
    from .kernels.neighbors import nn_candidates

    xc = x.to(torch.float64) - center
    rows = data if data.stride(1) == 1 else data.contiguous()
    return nn_candidates(xc.float().contiguous(), (xc**2).sum(1).float(), rows, center.float(),
                         _rows.centred_square_norms(data, center).float(), count)


def _candidates(x: torch.Tensor, data: torch.Tensor, center: torch.Tensor, count: int, dtype) -> torch.Tensor:
    """Indices [B, count] of the ``count`` smallest distances by the product formula, streamed.

    center: [d] float64 mean of the data, on x's device."""
    if (dtype == torch.float32 and data.dtype == torch.float32 and data.device == x.device
            and backend_for(x) == "triton"):
        from .kernels.neighbors import MAX_CANDIDATES

        if count <= MAX_CANDIDATES:
            return _kernel_candidates(x, data, center, count)
    center = center.to(dtype)
    xc = x.to(dtype) - center
    rows = max(16, _WORKSPACE_BYTES // (4 * max(1, x.shape[0]) + 4 * data.shape[1]))
    best_d = torch.empty(x.shape[0], 0, dtype=dtype, device=x.device)
    best_i = torch.empty(x.shape[0], 0, dtype=torch.long, device=x.device)
    for start in range(0, data.shape[0], rows):
        yc = data[start:start + rows].to(device=x.device, dtype=dtype) - center
        norms = (yc.to(torch.float64) ** 2).sum(1).to(dtype)
        # |x - y|^2 up to the per-query constant |x|^2, which does not change the ranking
        dist = torch.addmm(norms, xc, yc.T, alpha=-2)
        index = torch.arange(start, start + yc.shape[0], device=x.device).expand_as(dist)
        best_d = torch.cat([best_d, dist], 1)
        best_i = torch.cat([best_i, index], 1)
        keep = min(count, best_d.shape[1])
        best_d, pos = best_d.topk(keep, dim=1, largest=False, sorted=False)
        best_i = best_i.gather(1, pos)
    return best_i


def nearest_neighbors(x, data, k: int = 2, *, margin: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest training points of each query by Euclidean distance.

    x: [B, *feature_shape]; data: [N, *feature_shape] (may live in host memory: it streams
    to x's device in chunks). Returns (distances [B, k], indices [B, k] int64), nearest first,
    ties broken by the lower index.

    Candidates come from a streamed product formula |y|^2 - 2 x.y in fp32 (on the data centred
    on its mean); the best k + ``margin`` are then re-ranked by the exact distance computed
    directly in float64, so the result is exact unless more than ``margin`` points lie within
    fp32 rounding of the k-th neighbour.

    Example:
        >>> import torch, fastgauss
        >>> data = torch.randn(100, 5)
        >>> dist, idx = fastgauss.nearest_neighbors(data[:3] + 1e-4, data, k=2)
        >>> idx[:, 0].tolist()
        [0, 1, 2]
    """
    x = as_float(as_tensor(x, "x"))
    data = as_float(as_tensor(data, "data"))
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"data: expected a non-empty [N, *feature_shape], got shape {tuple(data.shape)}")
    flat_x, flat_data = flatten_batch(x, "x"), flatten_batch(data, "data")
    if flat_x.shape[1] != flat_data.shape[1]:
        raise ValueError(f"x: has {flat_x.shape[1]} features (shape {tuple(x.shape)}) but data has "
                         f"{flat_data.shape[1]} (shape {tuple(data.shape)})")
    n = flat_data.shape[0]
    if not (isinstance(k, int) and 1 <= k <= n):
        raise ValueError(f"k: expected an integer from 1 to N = {n} (the training set size), got {k!r}")
    if not (isinstance(margin, int) and margin >= 0):
        raise ValueError(f"margin: expected an integer >= 0, got {margin!r}")
    if flat_x.shape[0] == 0:
        return (torch.empty(0, k, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32, device=x.device),
                torch.empty(0, k, dtype=torch.long, device=x.device))
    check_finite(flat_x, "x")
    _rows.check_finite_rows(flat_data, "data")
    dtype = torch.float64 if torch.float64 in (x.dtype, data.dtype) else torch.float32
    center = _rows.mean(flat_data).to(x.device)
    cand = _candidates(flat_x, flat_data, center, min(n, k + margin), dtype)  # [B, C]
    # Exact re-rank: distances computed directly, in float64, for the candidates only.
    rows = flat_data[cand.reshape(-1).to(flat_data.device)].to(device=x.device, dtype=torch.float64)
    exact = ((rows.reshape(*cand.shape, -1) - flat_x.to(torch.float64)[:, None, :]) ** 2).sum(-1)
    by_index = cand.sort(dim=1)  # stable sort by distance after sorting by index: ties -> lower index
    exact = exact.gather(1, by_index.indices)
    order = exact.sort(dim=1, stable=True).indices[:, :k]
    dist = exact.gather(1, order).sqrt().to(x.dtype if x.dtype == torch.float64 else torch.float32)
    return dist, by_index.values.gather(1, order)


def gl_score(samples, data) -> float:
    """The paper's generalization score: mean over samples of |x - NN(x)| / |x|.

    samples: [B, *feature_shape]; data: [N, *feature_shape]. Above 0.6: the model generalizes.
    """
    samples = as_float(as_tensor(samples, "samples"))
    dist, _ = nearest_neighbors(samples, data, k=1)
    norms = flatten_batch(samples, "samples").to(dist.dtype).norm(dim=1)
    if (norms == 0).any():
        raise ValueError("samples: a sample of norm 0 has no relative distance")
    return float((dist[:, 0] / norms).mean())


def memorization_ratio(samples, data, threshold: float = 1 / 3) -> float:
    """Fraction of samples whose nearest training point is much closer than the second:
    |x - NN_1| / |x - NN_2| < threshold. samples: [B, ...]; data: [N, ...] with N >= 2."""
    if not (0 < threshold <= 1):
        raise ValueError(f"threshold: expected a value in (0, 1], got {threshold!r}")
    dist, _ = nearest_neighbors(samples, data, k=2)
    ratio = dist[:, 0] / dist[:, 1].clamp_min(torch.finfo(dist.dtype).tiny)
    return float((ratio < threshold).double().mean())
