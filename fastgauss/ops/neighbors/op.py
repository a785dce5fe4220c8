"""Nearest neighbours in the training set and the memorization metrics built on them."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..._core.arrays import as_float, as_tensor, check_finite, flatten_batch
from ..._core.device import same_device
from ..._core import rows as _rows
from ..._core.backend import backend_for

#: Bytes of the [B, chunk] distance block per chunk of data rows.
_WORKSPACE_BYTES = 32 << 20
#: Bytes of the float64 [B, C, d] block of the exact re-rank, per chunk of queries.
_RERANK_BYTES = 64 << 20
#: Data summaries kept (most recent first out when full).
_CACHE_ENTRIES = 4


@dataclass(frozen=True)
class _Summary:
    """What every call needs from the data, computed once per data version.

    center: [d] float64 mean row; norms: [N] |y_i - c|^2 (float32 for fp32 data, else float64);
    radius: max_i |y_i - c|; center_norm: |c| (so max_i |y_i| <= radius + center_norm)."""

    center: torch.Tensor
    norms: torch.Tensor
    radius: float
    center_norm: float


#: id(data) -> (weak reference to data, cache key, _Summary). Keyed on the caller's tensor object
#: and its version counter (bumped by every in-place write, through any view), so an in-place
#: change is seen and host-resident data is never copied.
_SUMMARIES: dict[int, tuple] = {}


def _cache_key(data: torch.Tensor, flat: torch.Tensor):
    try:
        version = data._version
    except RuntimeError:  # inference tensors keep no version counter: never cached
        return None
    return (version, flat.data_ptr(), tuple(flat.shape), tuple(flat.stride()), flat.dtype, flat.device)


def _summary(data: torch.Tensor, flat: torch.Tensor) -> _Summary:
    """The data's mean and centred squared norms, cached on (identity, version); checks finiteness."""
    key = _cache_key(data, flat)
    entry = _SUMMARIES.get(id(data))
    if key is not None and entry is not None and entry[0]() is data and entry[1] == key:
        return entry[2]
    center = _rows.mean(flat)
    norms = _rows.centred_square_norms(flat, center)  # float64, direct differences
    if not bool(torch.isfinite(norms).all()):
        _rows.check_finite_rows(flat, "data")  # names the non-finite values
        raise ValueError("data: squared row norms overflow float64 (values too large)")
    summary = _Summary(center, norms.to(torch.float64 if flat.dtype == torch.float64 else torch.float32),
                       float(norms.max().sqrt()), float(center.norm()))
    if key is not None:
        for stale in [i for i, (ref, _, _) in _SUMMARIES.items() if ref() is None]:
            del _SUMMARIES[stale]
        while len(_SUMMARIES) >= _CACHE_ENTRIES:
            del _SUMMARIES[next(iter(_SUMMARIES))]
        _SUMMARIES[id(data)] = (weakref.ref(data), key, summary)
    return summary


def _product_roundoff(dtype: torch.dtype, device: torch.device) -> float:
    """Unit roundoff of one matmul product in ``dtype`` on ``device``, given the process's settings."""
    if dtype == torch.float64:
        return 2.0**-53
    mode = torch.get_float32_matmul_precision()
    if device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        mode = "high" if mode == "highest" else mode
    return {"highest": 2.0**-24, "high": 2.0**-11, "medium": 2.0**-8}[mode]


def _error_bound(a: torch.Tensor, summary: _Summary, gamma: float, u: float) -> torch.Tensor:
    """[B]: a bound on |fp key - exact key| for every row, up to one constant per query (which the
    band compares keys of a single query across, so it cancels), for centred queries a: [B, d].

    A key is |y - c|^2 - 2 a.y (a per-query constant away from |x - y|^2): the product errs by at
    most gamma |a| |y| (gamma: the relative error of the dot products, any summation order, FMA
    and tensor cores included), the rounded norm, the rounded a and the sum by a few u (unit
    roundoff of the elementwise fp arithmetic) times (|y - c|^2 + |a| |y|); |y| <= radius + |c|,
    |y - c| <= radius. The kernel on raw rows adds the constant |a|^2 + 2 a.c before the two fp32
    sums, whose roundings then grow by at most 2 x 2 u |a| |c| <= 4 u |a| |y|: hence 12 u, not 8.
    """
    a_norm = a.to(torch.float64).norm(dim=1)
    y_max = summary.radius + summary.center_norm
    stored = 2.0**-53 if summary.norms.dtype == torch.float64 else 2.0**-24  # the cached norms' rounding
    return ((2 * gamma + 12 * u) * a_norm * y_max + 3 * u * (summary.radius**2 + a_norm**2)
            + stored * summary.radius**2)


def _gamma(dim: int, u: float) -> float:
    """Relative error bound of a length-``dim`` dot product with unit roundoff u (inf where it bounds
    nothing: bf16 products at large d; every row then becomes a candidate, exact but slow)."""
    return dim * u / (1 - dim * u) if dim * u < 0.5 else float("inf")


def _kernel_candidates(a: torch.Tensor, data: torch.Tensor, summary: _Summary, count: int):
    """(keys, indices, gamma) of the Triton candidate pass (gamma: its products' relative error)."""
    from ...kernels.neighbors import DEFAULT_PRECISION, dot_error, nn_candidates

    rows = data if data.stride(1) == 1 else data.contiguous()
    a32 = a.float().contiguous()
    keys, idx = nn_candidates(a32, (a.to(torch.float64) ** 2).sum(1).float(), rows, summary.center.float(),
                              summary.norms.float(), count, precision=DEFAULT_PRECISION)
    # the interpreter (CPU tensors) ignores input_precision; the bound of the mode covers it anyway
    return keys, idx, dot_error(a.shape[1], DEFAULT_PRECISION)


def _torch_candidates(a: torch.Tensor, data: torch.Tensor, summary: _Summary, count: int):
    """(keys [B, count] ascending, indices [B, count]) of the ``count`` smallest keys |y - c|^2 - 2 a.y,
    streamed over chunks of data rows (host-resident data moves chunk by chunk; no centred copy)."""
    dtype, batch = a.dtype, max(1, a.shape[0])
    moves = data.device != a.device or data.dtype != dtype
    rows = max(64, _WORKSPACE_BYTES // (a.element_size() * (batch + (data.shape[1] if moves else 0))))
    best_d, best_i = [], []
    for start in range(0, data.shape[0], rows):
        y = data[start:start + rows].to(device=a.device, dtype=dtype)
        norms = summary.norms[start:start + rows].to(device=a.device, dtype=dtype)
        dist = torch.addmm(norms, a, y.T, alpha=-2)  # [B, rows]
        vals, pos = dist.topk(min(count, y.shape[0]), dim=1, largest=False, sorted=False)
        best_d.append(vals)
        best_i.append(pos + start)
    best_d, best_i = torch.cat(best_d, 1), torch.cat(best_i, 1)
    best_d, pos = best_d.topk(min(count, best_d.shape[1]), dim=1, largest=False, sorted=True)
    return best_d, best_i.gather(1, pos)


def _candidates(x: torch.Tensor, data: torch.Tensor, summary: _Summary, k: int, count: int, dtype):
    """Groups (query rows [b], candidate indices [b, C], C >= k) holding every exact k-nearest row.

    fp keys rank the rows, each within ``bound`` of its exact key. A row whose key exceeds the k-th
    key by more than twice the bound cannot be among the k nearest (its exact key is larger than the
    exact keys of the k rows kept); so once the largest key computed passes that band, the rows
    within it are the candidates. Queries where more rows lie within the band get four times more
    candidates, up to all N rows. The kernel computes its MAX_CANDIDATES slots whatever ``count``
    asks for, so it returns them all and the band alone trims them.
    """
    n = data.shape[0]
    a = (x.to(torch.float64) - summary.center.to(x.device)).to(dtype)
    use_kernel = (dtype == torch.float32 and data.dtype == torch.float32 and data.device == x.device
                  and backend_for(x) == "triton")
    max_kernel = 0
    if use_kernel:
        from ...kernels.neighbors import MAX_CANDIDATES as max_kernel
    todo = torch.arange(x.shape[0], device=x.device)
    groups = []
    while todo.numel():
        if count <= max_kernel:
            keys, idx, gamma = _kernel_candidates(a[todo], data, summary, min(n, max_kernel))
            u = 2.0**-24  # the kernel's elementwise arithmetic is fp32
        else:
            keys, idx = _torch_candidates(a[todo], data, summary, count)
            u = _product_roundoff(dtype, x.device)  # TF32 where the process allows it
            gamma = _gamma(data.shape[1], u)
        band = keys[:, k - 1].to(torch.float64) + 2 * _error_bound(a[todo], summary, gamma, u).to(x.device)
        enough = (keys[:, -1].to(torch.float64) > band) | (keys.shape[1] >= n)
        if bool(enough.any()):
            within = int((keys[enough].to(torch.float64) <= band[enough, None]).sum(1).max())
            groups.append((todo[enough], idx[enough][:, :max(k, within)]))
        todo = todo[~enough]
        count = min(n, 4 * max(count, keys.shape[1]))
    return groups


def _exact_rerank(x: torch.Tensor, data: torch.Tensor, cand: torch.Tensor, k: int):
    """(squared distances [b, k] float64, indices [b, k]) from direct float64 differences, ties to the
    lower index; chunked over queries so the [b, C, d] block stays within _RERANK_BYTES."""
    by_index = cand.sort(dim=1).values  # stable sort by distance after sorting by index
    step = max(1, _RERANK_BYTES // max(1, 8 * by_index.shape[1] * data.shape[1]))
    dists, indices = [], []
    for start in range(0, x.shape[0], step):
        c = by_index[start:start + step]
        rows = data[c.reshape(-1).to(data.device)].to(device=x.device, dtype=torch.float64)
        exact = ((rows.reshape(*c.shape, -1) - x[start:start + step].to(torch.float64)[:, None, :]) ** 2).sum(-1)
        order = exact.sort(dim=1, stable=True).indices[:, :k]
        dists.append(exact.gather(1, order))
        indices.append(c.gather(1, order))
    return torch.cat(dists), torch.cat(indices)


def nearest_neighbors(x, data, k: int = 2, *, margin: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest training points of each query by Euclidean distance, exactly.

    x: [B, *feature_shape]; data: [N, *feature_shape] on x's device (a mismatch is a ValueError:
    nothing is moved implicitly; it streams in chunks). Returns (distances [B, k], indices [B, k] int64), nearest first,
    ties broken by the lower index: the same as a float64 brute force.

    Candidates come from fp32 keys |y - c|^2 - 2 (x - c).y (c: the data's mean; the centred
    squared norms |y - c|^2 are computed once in float64 from direct differences and cached on
    the data tensor's identity and version, so an in-place change is seen; on CUDA the products
    are tf32x3, within a proven bound). A query computes its best k + ``margin`` keys (the Triton
    pass: its 64 slots), and when the last of them is farther than the k-th by twice the keys'
    error bound, the rows within that band are its candidates; otherwise it gets more. The
    candidates are then re-ranked by the distance computed directly in float64. ``margin`` only
    trades speed: the result is exact either way.

    Example:
        >>> import torch, fastgauss
        >>> data = torch.randn(100, 5)
        >>> dist, idx = fastgauss.nearest_neighbors(data[:3] + 1e-4, data, k=2)
        >>> idx[:, 0].tolist()
        [0, 1, 2]
    """
    x = as_float(as_tensor(x, "x"))
    data = as_float(as_tensor(data, "data"))
    same_device(("x", x), ("data", data))  # never moved
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"data: expected a non-empty [N, *feature_shape], got shape {tuple(data.shape)}")
    flat_x, flat_data = flatten_batch(x, "x"), flatten_batch(data, "data")
    if flat_x.shape[1] != flat_data.shape[1]:
        raise ValueError(f"x: has {flat_x.shape[1]} features (shape {tuple(x.shape)}) but data has "
                         f"{flat_data.shape[1]} (shape {tuple(data.shape)})")
    n = flat_data.shape[0]
    if not (isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= n):
        raise ValueError(f"k: expected an integer from 1 to N = {n} (the training set size), got {k!r}")
    if not (isinstance(margin, int) and not isinstance(margin, bool) and margin >= 0):
        raise ValueError(f"margin: expected an integer >= 0, got {margin!r}")
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if flat_x.shape[0] == 0:
        return (torch.empty(0, k, dtype=out_dtype, device=x.device),
                torch.empty(0, k, dtype=torch.long, device=x.device))
    check_finite(flat_x, "x")
    summary = _summary(data, flat_data)
    dtype = torch.float64 if torch.float64 in (x.dtype, data.dtype) else torch.float32
    dist = torch.empty(flat_x.shape[0], k, dtype=out_dtype, device=x.device)
    idx = torch.empty(flat_x.shape[0], k, dtype=torch.long, device=x.device)
    for rows, cand in _candidates(flat_x, flat_data, summary, k, min(n, k + margin), dtype):
        dist2, found = _exact_rerank(flat_x[rows], flat_data, cand, k)
        dist[rows], idx[rows] = dist2.sqrt().to(out_dtype), found
    return dist, idx


def gl_score(samples, data) -> float:
    """The paper's generalization score: mean over samples of |x - NN(x)| / |x|.

    samples: [B, *feature_shape]; data: [N, *feature_shape]. Above 0.6: the model generalizes.

    >>> import torch, fastgauss
    >>> data = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    >>> fastgauss.gl_score(data[:5], data)        # copies of training points: 0
    0.0
    >>> fastgauss.gl_score(2 * data[:5], data) > 0.3
    True
    """
    samples = as_float(as_tensor(samples, "samples"))
    same_device(("samples", samples), ("data", as_tensor(data, "data")))
    dist, _ = nearest_neighbors(samples, data, k=1)
    norms = flatten_batch(samples, "samples").to(dist.dtype).norm(dim=1)
    if (norms == 0).any():
        raise ValueError("samples: a sample of norm 0 has no relative distance")
    return float((dist[:, 0] / norms).mean())


def memorization_ratio(samples, data, threshold: float = 1 / 3) -> float:
    """Fraction of samples whose nearest training point is much closer than the second:
    |x - NN_1| / |x - NN_2| < threshold. samples: [B, ...]; data: [N, ...] with N >= 2.

    >>> import torch, fastgauss
    >>> data = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    >>> fastgauss.memorization_ratio(data[:4] + 1e-3, data)   # near-copies: all memorized
    1.0
    """
    if not (0 < threshold <= 1):
        raise ValueError(f"threshold: expected a value in (0, 1], got {threshold!r}")
    n = as_tensor(data, "data").shape[0] if as_tensor(data, "data").dim() >= 2 else 0
    if n < 2:
        raise ValueError(f"data: memorization_ratio compares each sample's nearest and second-nearest training "
                         f"points, so it needs at least 2 of them, got N = {n}")
    same_device(("samples", as_tensor(samples, "samples")), ("data", as_tensor(data, "data")))
    dist, _ = nearest_neighbors(samples, data, k=2)
    ratio = dist[:, 0] / dist[:, 1].clamp_min(torch.finfo(dist.dtype).tiny)
    return float((ratio < threshold).double().mean())
