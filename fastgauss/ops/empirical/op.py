"""The empirical (memorizing) denoiser: the optimal denoiser for the training set itself.

D(x; sigma) = sum_i w_i y_i with w = softmax_i(-|x - y_i|^2 / (2 sigma^2)), streamed over the
training set in chunks (never a B x N matrix), from device memory, host memory, or shards
spread over torch.distributed ranks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _torch as et
from ..._core import rows as _rows
from ..._core.arrays import as_float, as_tensor, check_finite, flatten_batch, inspectable
from ..._core.backend import backend_for
from ..._core.device import check_device

PRECISIONS = ("ieee", "tf32", "bf16", "auto")


class TrainingSet:
    """A training set prepared for streaming: rows [N, d], their mean, and where they live.

    data: [N, *feature_shape], never copied as a whole: host memory is streamed chunk by
    chunk to the compute device, a layout that is not a flat view is flattened chunk by
    chunk. group: a torch.distributed group whose ranks each hold a shard; their partial
    results merge exactly. device: where the work runs (None: the queries' device).

    The centre, the row norms and the largest norm are cached against the data tensor's
    identity and version (``_version``, which every in-place change bumps), so after
    ``data.mul_(2)`` the next call recomputes them, and NaN written into the data is a
    ValueError at the next call. (A numpy array changed in place behind torch's back is not
    seen: pass a torch tensor, or build a new denoiser.)
    """

    def __init__(self, data, *, group=None, chunk_rows: int | None = None, device=None):
        data = as_float(as_tensor(data, "data"))
        if data.dim() < 2:
            raise ValueError(f"data: expected shape [N, *feature_shape], got {tuple(data.shape)}")
        if chunk_rows is not None and not (isinstance(chunk_rows, int) and chunk_rows >= 1):
            raise ValueError(f"chunk_rows: expected a positive integer or None, got {chunk_rows!r}")
        self.source = data
        self.feature_shape = tuple(data.shape[1:])
        self.dim = math.prod(self.feature_shape)
        self.group = group
        self.chunk_rows = chunk_rows
        self.device = None if device is None else check_device(device)
        if data.shape[0] == 0 and group is None:
            raise ValueError("data: the training set is empty")
        self.last_precision: str | None = None
        self._key = None
        self.refresh()  # once, up front: every call needs the centre and the norms

    @property
    def n(self) -> int:
        """Rows on this rank."""
        return self.source.shape[0]

    @property
    def rows(self) -> torch.Tensor | None:
        """The data as a flat [N, d] view, or None where its layout has none (no copy is made)."""
        try:
            return self.source.view(self.n, self.dim)
        except RuntimeError:
            return None

    def blocks(self, rows: int):
        """(start, raw block [c, d]) over the rows: views where the layout allows."""
        for start in range(0, self.n, rows):
            block = self.source[start:start + rows]
            yield start, block.reshape(block.shape[0], self.dim)

    def _stale(self) -> bool:
        key = (id(self.source), self.source._version, self.source.data_ptr())
        stale = key != self._key
        if self.group is not None:
            import torch.distributed as dist

            flag = torch.tensor([float(stale)], dtype=torch.float64, device=self._comm_device())
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
            stale = bool(flag.item())
        self._new_key = key
        return stale

    def _comm_device(self) -> torch.device:
        if self.group is not None:
            import torch.distributed as dist

            if dist.get_backend(self.group) == "nccl":
                return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def refresh(self) -> None:
        """Recompute the centre, norms and largest norm if the data changed since the last call."""
        if not self._stale():
            return
        step = _rows.block_rows(self.dim)
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.source.device)
        for _, block in self.blocks(step):
            check_finite(block, "data")
            total += block.sum(0, dtype=torch.float64)
        count = torch.tensor([float(self.n)], dtype=torch.float64)
        if self.group is not None:
            import torch.distributed as dist

            comm = self._comm_device()
            total, count = total.to(comm), count.to(comm)
            dist.all_reduce(total, group=self.group)
            dist.all_reduce(count, group=self.group)
            if count.item() == 0:
                raise ValueError("data: the training set is empty on every rank")
            total = total.to(self.source.device)
        self.n_total = int(count.item())
        self.center = total / count.item()
        norms = torch.empty(self.n, dtype=torch.float64, device=self.source.device)
        for start, block in self.blocks(step):
            norms[start:start + block.shape[0]] = (block.to(torch.float64) - self.center).pow_(2).sum(1)
        largest = torch.tensor([float(norms.max()) if self.n else 0.0], dtype=torch.float64)
        if self.group is not None:
            import torch.distributed as dist

            largest = largest.to(self._comm_device())
            dist.all_reduce(largest, op=dist.ReduceOp.MAX, group=self.group)
        self.max_norm = math.sqrt(float(largest.item()))
        self._norms64 = norms
        self._norms_on: dict = {}
        self._key = self._new_key

    def centred_norms(self, dtype, device=None) -> torch.Tensor:
        """|y_i - c|^2 for every row: [N] in ``dtype`` on ``device`` (computed in float64, cached)."""
        device = torch.device(device) if device is not None else self._norms64.device
        key = (dtype, device)
        if key not in self._norms_on:
            self._norms_on[key] = self._norms64.to(device=device, dtype=dtype)
        return self._norms_on[key]

    def chunks(self, device, dtype, rows: int):
        """(start, centred chunk [c, d], its squared norms [c]) on ``device`` in ``dtype``, chunk by chunk."""
        center = self.center.to(device=device, dtype=dtype)
        norms = self.centred_norms(dtype, device)
        for start, block in self.blocks(rows):
            yield (start, block.to(device=device, non_blocking=True).to(dtype) - center,
                   norms[start:start + block.shape[0]])

    def gather(self, index: torch.Tensor, device) -> torch.Tensor:
        """Raw rows ``index`` [P] as float64 [P, d] on ``device``."""
        picked = self.source[index.to(self.source.device)]
        return picked.reshape(picked.shape[0], self.dim).to(device=device, dtype=torch.float64)


#: Unit roundoff of each product mode's operands (relative error of one operand).
_UNIT_ROUNDOFF = {"bf16": 2.0**-8, "tf32": 2.0**-11, "ieee": 2.0**-24, "float64": 2.0**-53}
#: Fastest first.
_SPEED_ORDER = ("bf16", "tf32", "ieee")
#: Probabilistic factor of the accumulation error (see ``error_bound``).
LAMBDA = 8.0
#: Default weight tolerance of the exact path: every row left out of the float64 re-scoring
#: carries, together with all such rows, less than this fraction of the total weight.
WEIGHT_TOL = 1e-7
#: fp32 weights are used as they are (no re-scoring) where their bound keeps every weight
#: within this relative error.
ENOUGH = 1e-6
#: Rows re-scored per query at most; a query whose window holds more is recomputed in float64.
WINDOW_CAP = 256
#: Candidate records (24 bytes each) kept at most during a pass, all queries together.
MAX_RECORDS = 1 << 21
#: Suffix of ``last_precision`` when the exact path ran.
EXACT = " + float64 near ties"


def error_bound(mode: str, x_norm_max, y_norm_max, dim: int):
    """Bound on the error of a squared distance |x - y|^2 = |x'|^2 - 2 x'.y' + |y'|^2 as computed.

    The product x'.y' carries operand rounding (u_mode for each of the two operands, worst
    case) plus the accumulation of d rounded terms. For the accumulation this uses the
    probabilistic bound of Higham & Mary (SIAM J. Sci. Comput. 2019): with rounding errors
    independent and of mean zero, |error| <= lambda sqrt(d) u sum |x_k y_k| with probability
    at least 1 - 2 exp(-lambda^2 / 2); lambda = 8 gives 3e-14 per product, so even 10^10 products
    (B x N at dataset scale) leave it unbroken with probability 0.9997. This is how the products are actually
    summed (fp32 FMA chains in BLAS blocks and in the kernel's BLOCK_K steps; centred data
    has no common offset to make errors correlate), and it is sqrt(d) / lambda (7x at d = 3072)
    tighter than the worst case d u, which holds for any order but is never approached. The
    rest (the rounded norm, the sum, the scaling by 1/sigma^2 and the shift by the maximum)
    is at most four roundings of a value below 2 |x'||y'| + |y'|^2. Works on floats or tensors.
    """
    u_acc = _UNIT_ROUNDOFF["float64" if mode == "float64" else "ieee"]
    xy = x_norm_max * y_norm_max
    return 2 * (2 * _UNIT_ROUNDOFF[mode] + LAMBDA * math.sqrt(dim) * u_acc) * xy + 4 * u_acc * (2 * xy + y_norm_max**2)


def choose_precision(sigma_min: float, x_norm_max: float, y_norm_max: float, dim: int,
                     tolerance: float = 1e-4) -> str:
    """The fastest mode whose bound keeps every weight within ``tolerance`` (relative).

    An error e in a squared distance moves a weight by a factor of at most exp(e / (2 sigma^2))
    in its numerator and as much in the normalizer: within exp(e / sigma^2) in all. When no
    mode meets the tolerance this is "ieee", and the exact path (float64 re-scoring of the
    near ties) makes the result exact.
    """
    for mode in _SPEED_ORDER:
        exponent = error_bound(mode, x_norm_max, y_norm_max, dim) / sigma_min**2
        if exponent < 1 and math.expm1(exponent) <= tolerance:
            return mode
    return "ieee"


def windows(mode: str, x_norm: torch.Tensor, sigma: torch.Tensor, data: TrainingSet, *, derivatives: bool,
            tol: float = WEIGHT_TOL) -> torch.Tensor:
    """Per query [B] float64: the width (in logits) of the window re-scored in float64, or -1 for none.

    E = error_bound / (2 sigma^2) bounds the error of one computed logit. A row whose computed
    logit lies more than 2E + ln(N / tol) below the computed maximum has a true weight below
    tol / N of the largest, so all such rows together carry less than tol: they contribute as
    computed. Every row inside the window is re-scored in float64 from direct differences.
    For the derivatives the rows left out also enter J v = Cov_w(y) v / sigma^2 and
    dD/dsigma = Cov_w(y, q) / sigma^3 magnified by up to ((2R + |x'|) / sigma)^3, which the
    window adds (R: the largest centred row norm). No window where the bound already keeps
    every fp32 weight within ENOUGH (then no re-scoring is needed).
    """
    err = error_bound(mode, x_norm, data.max_norm, data.dim) / (2 * sigma**2)
    reach = 2 * data.max_norm + x_norm
    extra = (3 * torch.log(reach / sigma)) if derivatives else torch.log(reach)
    width = 2 * err + math.log(max(1, data.n_total) / tol) + extra.clamp_min(0)
    return torch.where(torch.expm1(2 * err) > ENOUGH, width, torch.full_like(width, -1.0))


class _Candidates:
    """Rows excluded from the streamed accumulation because they lie in a query's window."""

    def __init__(self, batch: int, width: torch.Tensor):
        self.batch, self.width = batch, width.clone()
        dev = width.device
        self.qid = torch.empty(0, dtype=torch.long, device=dev)
        self.idx = torch.empty(0, dtype=torch.long, device=dev)
        self.s = torch.empty(0, dtype=torch.float64, device=dev)
        self.run_max = torch.full((batch,), float("-inf"), dtype=torch.float64, device=dev)
        self.overflow = torch.zeros(batch, dtype=torch.bool, device=dev)

    def threshold(self) -> torch.Tensor:
        return torch.where(self.width >= 0, self.run_max - self.width, torch.full_like(self.run_max, float("inf")))

    def add(self, qid, idx, s) -> None:
        self.qid, self.idx, self.s = torch.cat([self.qid, qid]), torch.cat([self.idx, idx]), torch.cat([self.s, s])

    def prune(self, final: bool = False) -> None:
        """Drops rows that fell out of their window (their weight is negligible against the
        maximum so far, hence against the final one). Records are 24 bytes each, so during the
        pass many may wait for a larger maximum (before the best row of a query comes by, its
        window follows a lower one); at the end, a query whose window still holds more than
        WINDOW_CAP rows overflows (and is recomputed in float64)."""
        keep = self.s >= self.threshold().index_select(0, self.qid)
        counts = torch.bincount(self.qid[keep], minlength=self.batch)
        if final:
            over = counts > WINDOW_CAP
        elif int(counts.sum()) > MAX_RECORDS:
            over = counts > max(WINDOW_CAP, MAX_RECORDS // (2 * self.batch))
        else:
            over = None
        if over is not None and over.any():
            self.overflow |= over
            self.width = torch.where(over, torch.full_like(self.width, -1.0), self.width)
            keep &= ~over.index_select(0, self.qid)
        self.qid, self.idx, self.s = self.qid[keep], self.idx[keep], self.s[keep]


def _torch_pass(xc, inv_var, data: TrainingSet, probes, sigma_grad, cands: _Candidates | None, device) -> et.Partial:
    """The streamed partial over this rank's rows on PyTorch (products in xc's dtype)."""
    batch, dim = xc.shape
    k = None if probes is None else probes.shape[0]
    part = et.Partial.empty(batch, dim, probes=k, sigma_grad=sigma_grad, dtype=torch.float64, device=device)
    rows = data.chunk_rows or et.chunk_rows(batch, dim, xc.element_size(), k or 0)
    p64 = None if probes is None else probes.to(torch.float64)
    plain = probes is None and not sigma_grad
    if plain:
        m = torch.full((batch,), float("-inf"), dtype=xc.dtype, device=device)
        l = torch.zeros(batch, dtype=xc.dtype, device=device)
        acc = torch.zeros(batch, dim, dtype=xc.dtype, device=device)
    for start, yc, norms in data.chunks(device, xc.dtype, rows):
        z, s = et.chunk_logits(xc, inv_var, yc, norms, keep_z=sigma_grad)
        top = s.max(1)
        inside = None
        if cands is not None:
            cands.run_max = torch.maximum(cands.run_max, top.values.to(torch.float64))
            threshold = cands.threshold().to(s.dtype)
            if bool((top.values >= threshold).any()):  # some row of this chunk is in a window
                inside = s >= threshold[:, None]
                qid, col = inside.nonzero(as_tuple=True)
                cands.add(qid, col + start, s[qid, col].to(torch.float64))
                if cands.qid.numel() > MAX_RECORDS // 2:
                    cands.prune()
        if plain:  # D only: the running (m, l, acc) of flash attention; no cancellation to avoid
            m_new = torch.maximum(m, top.values)
            alpha = torch.where(torch.isfinite(m), torch.exp(m - m_new), 0)
            p = s.sub_(m_new[:, None]).exp_()
            if inside is not None:
                p.masked_fill_(inside, 0)
            l.mul_(alpha).add_(p.sum(1))
            acc.mul_(alpha[:, None]).addmm_(p, yc)
            m = m_new
        else:
            part.merge_(et.chunk_partial(s, z, yc, probes, sigma_grad, top=top, leave_out=inside), p64)
    if plain:
        l64 = l.to(torch.float64)
        mu = acc.to(torch.float64) * torch.where(l64 > 0, 1 / torch.where(l64 > 0, l64, 1), 0)[:, None]
        part = et.Partial(m.to(torch.float64), l64, mu)
    return part


def _kernel_pass(xc, inv_var, data: TrainingSet, modes, cands: _Candidates | None, device,
                 probes: torch.Tensor | None = None) -> et.Partial:
    """The partial of this rank's rows from the Triton kernels, with the same windows: D only, or
    D and the K probes' J v ([K, B, d] float32) from one pass, each chunk's weighted covariance
    merged exactly (float64, Chan) as the PyTorch path merges its chunks."""
    from ...kernels import empirical as kernel

    view = data.rows
    whole = view is not None and view.device == device and view.dtype == torch.float32 and view.stride(1) == 1
    rows = data.n if whole else max(1, (256 << 20) // (4 * data.dim))
    center = data.center.to(device=device, dtype=torch.float32)
    norms = data.centred_norms(torch.float32, device)

    def chunks():
        if whole:
            yield 0, view
        else:
            for start, block in data.blocks(rows):
                yield start, block.to(device=device, non_blocking=True).to(torch.float32).contiguous()

    threshold = None
    if cands is not None and bool((cands.width >= 0).any()):
        for start, block in chunks():  # first the maximum of every query's logits
            m, _, _ = kernel.empirical_partial(xc, inv_var, block, center, norms[start:start + block.shape[0]],
                                               precision=modes, max_only=True)
            cands.run_max = torch.maximum(cands.run_max, m.to(torch.float64))
        # this rank's maximum (no collective here: a rank without rows never comes this way); the
        # window it gives holds the global one, and _stream prunes against the global maximum
        threshold = cands.threshold().to(torch.float32)
    k = None if probes is None else probes.shape[0]
    part = et.Partial.empty(xc.shape[0], xc.shape[1], probes=k, dtype=torch.float64, device=device)
    p64 = None if probes is None else probes.to(torch.float64)
    for start, block in chunks():
        block_norms = norms[start:start + block.shape[0]]
        if probes is None:
            out = kernel.empirical_partial(xc, inv_var, block, center, block_norms, precision=modes,
                                           threshold=threshold, cap=WINDOW_CAP)
            m, l, acc = (t.to(torch.float64) for t in out[:3])
            part.merge_(et.Partial(m, l, acc * _inverse(l)[:, None]))
            records = out[3:] if threshold is not None else None
        else:
            for ch in kernel.empirical_probe_chunks(xc, inv_var, block, center, block_norms, probes,
                                                    precision=modes, threshold=threshold, cap=WINDOW_CAP):
                part.merge_(_probe_partial(ch, p64), p64)
                records = ch.records
        if threshold is not None:
            count, idx, s = records
            over = count > WINDOW_CAP
            cands.overflow |= over
            slot = torch.arange(WINDOW_CAP, device=device)
            keep = (slot[None, :] < count[:, None]) & ~over[:, None]
            qid = torch.arange(xc.shape[0], device=device)[:, None].expand_as(keep)[keep]
            cands.add(qid, idx[keep].to(torch.long) + start, s[keep].to(torch.float64))
    return part


def _inverse(l: torch.Tensor) -> torch.Tensor:
    return torch.where(l > 0, 1 / torch.where(l > 0, l, 1), 0)


def _probe_partial(ch, p64: torch.Tensor) -> et.Partial:
    """A kernel chunk's weighted-covariance partial in float64: around its reference row r,
    C_v = sum p (y' - r)((y' - r) . v) - l (mu - r)((mu - r) . v) (``chunk_partial``'s formula)."""
    m, l = ch.m.to(torch.float64), ch.l.to(torch.float64)
    mu = ch.acc.to(torch.float64) * _inverse(l)[:, None]
    r = ch.ref.to(torch.float64)
    dm = mu - r
    cv = ch.g.to(torch.float64) - r * ch.spt.to(torch.float64)[..., None]
    cv -= dm * (torch.einsum("kbd,bd->kb", p64, dm) * l)[..., None]
    return et.Partial(m, l, mu, cv)


def _all_reduce_max(t: torch.Tensor, data: TrainingSet) -> None:
    import torch.distributed as dist

    buf = t.to(data._comm_device())
    dist.all_reduce(buf, op=dist.ReduceOp.MAX, group=data.group)
    t.copy_(buf.to(t.device))


def _exact(part: et.Partial, cands: _Candidates, x64, data: TrainingSet, var64, probes64, sigma_grad,
           device) -> et.Partial:
    """``part`` merged with the float64 partial of every candidate still inside its window."""
    cands.prune(final=True)
    order = torch.argsort(cands.qid * max(1, data.n) + cands.idx)  # deterministic order
    qid, idx = cands.qid[order], cands.idx[order]
    if qid.numel() == 0:
        return part
    k = 0 if probes64 is None else probes64.shape[0]
    step = max(1, et.EXACT_BYTES // (8 * data.dim * (3 + k)))
    center = data.center.to(device)
    for start in range(0, qid.numel(), step):
        q, i = qid[start:start + step], idx[start:start + step]
        rows = data.gather(i, device)
        # only the queries of this block: O(pairs x d) work, not O(B x d) per block
        uq, local = torch.unique(q, return_inverse=True)
        sub_probes = None if probes64 is None else probes64.index_select(1, uq)
        block = et.exact_partial(uq.numel(), local, rows, x64.index_select(0, uq), center, var64.index_select(0, uq),
                                 sub_probes, sigma_grad)
        part = part.replace(uq, part.select(uq).merge_(block, sub_probes))
    return part


def _gather_merge(part: et.Partial, data: TrainingSet, probes64) -> et.Partial:
    """Every rank's partial merged with Partial.merged, in rank order (the same on every rank)."""
    import torch.distributed as dist

    tensors = part.tensors()
    comm = data._comm_device()
    flat = torch.cat([t.reshape(-1) for t in tensors]).to(comm)
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size(data.group))]
    dist.all_gather(gathered, flat, group=data.group)
    merged = None
    for buf in gathered:
        pieces, offset = [], 0
        for t in tensors:
            pieces.append(buf[offset:offset + t.numel()].reshape(t.shape).to(t.device))
            offset += t.numel()
        other = part.like(pieces)
        merged = other if merged is None else merged.merged(other, probes64)
    return merged


def _products_dtype(x: torch.Tensor, kernel: bool) -> torch.dtype:
    """Products of the PyTorch path: float64 for float64 queries, and on CUDA, where PyTorch's fp32
    matmul would follow the process's TF32 setting (never read, never written here)."""
    if x.dtype == torch.float64 or (x.device.type == "cuda" and not kernel):
        return torch.float64
    return torch.float32


def _plain(t):
    """The values of ``t`` below any forward/reverse-mode functorch wrapper (torch.func.jvp, grad):
    _stream computes values only, and its rules need data-dependent control flow. Batched
    (vmap) tensors stay as they are: their rule (``_EmpiricalDenoise.vmap``) unbatches them."""
    f = torch._C._functorch
    while t is not None and f.is_functorch_wrapped_tensor(t) and not f.is_batchedtensor(t):
        t = f.get_unwrapped(t)
    return t


@torch.no_grad()
def _stream(x: torch.Tensor, sigma: torch.Tensor, data: TrainingSet, *, probes=None, sigma_grad=False,
            precision="ieee") -> et.Partial:
    """The merged partial (centred on data.center, float64) of every row (all ranks) for queries x.

    x: [B, d]; sigma: [B]; probes: [K, B, d] or None. Not differentiable itself:
    _EmpiricalDenoise supplies the derivatives."""
    x, sigma, probes = _plain(x), _plain(sigma), _plain(probes)
    data.refresh()
    device = x.device
    batch = x.shape[0]
    x64 = x.to(torch.float64)
    center = data.center.to(device)
    xc64 = x64 - center
    var64 = sigma.to(torch.float64) ** 2
    probes64 = None if probes is None else probes.to(torch.float64)
    kernel = (not sigma_grad and x.dtype != torch.float64 and data.n > 0 and inspectable(x)
              and (probes is None or inspectable(probes)) and backend_for(x) == "triton")
    dtype = _products_dtype(x, kernel)
    if kernel:
        modes = data_modes = _resolve(precision, xc64, sigma, data)
    else:
        modes = data_modes = ("float64", "float64") if dtype == torch.float64 else ("ieee", "ieee")
    exact = modes[0] in ("ieee", "float64") and inspectable(x) and inspectable(sigma)
    cands = None
    if exact:
        width = windows(modes[0], xc64.norm(dim=1), sigma.to(torch.float64), data,
                        derivatives=probes is not None or sigma_grad)
        exact = bool((width >= 0).any())
        cands = _Candidates(batch, width) if exact else None
    xc, inv_var = xc64.to(dtype), (1 / var64).to(dtype)
    if data.n == 0:
        part = et.Partial.empty(batch, data.dim, probes=None if probes is None else probes.shape[0],
                                sigma_grad=sigma_grad, dtype=torch.float64, device=device)
    elif kernel:
        part = _kernel_pass(xc.contiguous(), inv_var.contiguous(), data, modes, cands, device,
                            None if probes is None else probes.to(torch.float32).contiguous())
    else:
        part = _torch_pass(xc, inv_var, data, None if probes is None else probes.to(dtype), sigma_grad, cands,
                           device)
    if cands is not None:
        if data.group is not None:
            _all_reduce_max(cands.run_max, data)  # the window follows the maximum over every shard
        cands.prune(final=True)
        if data.group is not None:
            over = cands.overflow.to(torch.float64)
            _all_reduce_max(over, data)
            cands.overflow = over > 0
            cands.prune(final=True)
        part = _exact(part, cands, x64, data, var64, probes64, sigma_grad, device)
        if cands.overflow.any():  # windows too wide to re-score row by row: these queries in float64
            sub = cands.overflow.nonzero().squeeze(1)
            redo = _torch_pass(xc64.index_select(0, sub), 1 / var64.index_select(0, sub), data,
                               None if probes64 is None else probes64.index_select(1, sub), sigma_grad, None, device)
            part = part.replace(sub, redo)
    if data.group is not None:
        part = _gather_merge(part, data, probes64)
    label = modes[0] if modes[0] == modes[1] else f"{modes[0]} distances, {modes[1]} sums"
    data.last_precision = label + (EXACT if exact else "")
    del data_modes
    return part


def _resolve(precision: str, xc64: torch.Tensor, sigma: torch.Tensor, data: TrainingSet) -> tuple[str, str]:
    """(distance products, weighted-sum products) for the kernel.

    An explicit mode applies to both. "auto" lowers the distances to the mode
    ``choose_precision`` picks for this call and keeps the weighted sum at about fp32
    accuracy (tf32x3 on tensor cores; exact fp32 products when the distances are too).
    """
    if precision == "auto":
        qk = choose_precision(float(sigma.min()), float(xc64.norm(dim=1).max()), data.max_norm, data.dim)
        return qk, ("ieee" if qk == "ieee" else "tf32x3")
    return precision, precision


class _EmpiricalDenoise(torch.autograd.Function):
    """x: [B, d], sigma: [B] -> D: [B, d]; backward and jvp stream the data once more."""

    @staticmethod
    def forward(x, sigma, data, precision):
        part = _stream(x, sigma, data, precision=precision)
        return (part.mu + data.center.to(part.mu)).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, sigma, data, precision = inputs
        ctx.data = data
        ctx.save_for_backward(x, sigma)
        ctx.save_for_forward(x, sigma)

    @staticmethod
    def _derivatives(ctx, vectors, sigma_grad):
        x, sigma = ctx.saved_tensors
        part = _stream(x, sigma, ctx.data, probes=vectors, sigma_grad=sigma_grad)
        return et.finish(part, sigma.to(part.mu.dtype), vectors)

    @staticmethod
    def backward(ctx, grad):
        # J is symmetric: J^T g = J g, one more pass over the data (with dD/dsigma in it).
        _, jg, ds = _EmpiricalDenoise._derivatives(ctx, grad[None], ctx.needs_input_grad[1])
        grad_x = jg[0].to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_sigma = (ds * grad).sum(1).to(grad.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_sigma, None, None

    @staticmethod
    def jvp(ctx, x_t, sigma_t, *_):
        x, _ = ctx.saved_tensors
        vectors = (x_t if x_t is not None else torch.zeros_like(x))[None]
        _, jv, ds = _EmpiricalDenoise._derivatives(ctx, vectors, sigma_t is not None)
        tangent = jv[0]
        if sigma_t is not None:
            tangent = tangent + ds * sigma_t[:, None]
        return tangent.to(x.dtype)

    @staticmethod
    def vmap(info, in_dims, x, sigma, data, precision):
        size = info.batch_size
        x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x.expand(size, *x.shape)
        sigma = sigma.movedim(in_dims[1], 0) if in_dims[1] is not None else sigma.expand(size, *sigma.shape)
        n, d = x.shape[1:]
        out = _EmpiricalDenoise.apply(x.reshape(size * n, d), sigma.reshape(size * n), data, precision)
        return out.reshape(size, n, d), 0


def _normalize_sigma(sigma, batch: int, device, dtype) -> torch.Tensor:
    s = torch.tensor(float(sigma), dtype=torch.float64) if isinstance(sigma, (int, float)) else as_float(as_tensor(sigma, "sigma"))
    s = s.to(device=device, dtype=dtype)
    if s.dim() == 0 or (s.dim() == 1 and s.shape[0] == 1):
        s = s.reshape(1).expand(batch)
    elif s.shape != (batch,):
        raise ValueError(f"sigma: expected a float, a 0-d tensor or {batch} values, got shape {tuple(s.shape)}")
    if inspectable(s) and s.numel():
        if not torch.isfinite(s).all():
            raise ValueError("sigma: must be finite")
        if (s <= 0).any():
            raise ValueError(f"sigma: must be > 0 (got {s.min().item():g}); the empirical denoiser at sigma = 0 "
                             "is a nearest-neighbour lookup: use fastgauss.nearest_neighbors")
    return s.contiguous()


def _queries(x, sigma, data: TrainingSet):
    """(x as a float tensor on the compute device, its rows [B, d], sigma [B]) checked against the
    training set."""
    x = as_float(as_tensor(x, "x"))
    if data.device is not None:
        x = x.to(data.device)
    flat = flatten_batch(x, "x")
    if flat.shape[1] != data.dim:
        raise ValueError(f"x: has {flat.shape[1]} features (shape {tuple(x.shape)}) but the training set has "
                         f"{data.dim} (feature shape {data.feature_shape})")
    check_finite(flat, "x")
    s = _normalize_sigma(sigma, flat.shape[0], x.device, torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x, flat, s


def _denoise(x, sigma, data: TrainingSet, precision: str) -> torch.Tensor:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    home = x.device if isinstance(x, torch.Tensor) else None
    x, flat, s = _queries(x, sigma, data)
    if flat.shape[0] == 0:
        return x.clone()
    out = _EmpiricalDenoise.apply(flat, s, data, precision).reshape(x.shape)
    return out if home is None else out.to(home)


def empirical_denoise(x, sigma, data, *, precision: str = "ieee") -> torch.Tensor:
    """Optimal denoiser for the training set ``data`` (the memorizing denoiser).

    x: [B, *feature_shape]; sigma: a float, 0-d tensor or [B] values, > 0; data: [N, *feature_shape].
    precision: "ieee" (exact fp32 products, default), "tf32", "bf16" (CUDA kernel modes) or
      "auto" (the fastest mode whose error bound keeps every weight within 1e-4 relative).
    Returns [B, *feature_shape]. Streams the data in chunks: memory O(B d + N d), never O(B N).

    Accuracy (exact path, "ieee" and "auto"): the logits are first formed in fp32 as
    (x'.y' - |y'|^2 / 2) / sigma^2 from centred data, with an error bound E per logit
    (``error_bound``). Where E could move a weight by more than 1e-6, every row whose fp32 logit
    lies within 2E + ln(N / 1e-7) of the maximum (the near ties, usually one or two rows) is
    re-scored in float64 from direct differences |x - y_i|^2 and its softmax is exact; the
    rows outside carry less than 1e-7 of the weight together. So near ties (a query at the
    midpoint of two images, two candidates 1 nat apart) are exact at every sigma: tested within
    1e-5 relative of float64 at d = 3072, sigma = 0.002 to 0.05. A query whose window holds more
    than 256 rows is recomputed in float64. "tf32" and "bf16" are the plain kernel modes
    (documented error, no re-scoring). ``EmpiricalDenoiser.last_precision`` tells what ran.

    Example:
        >>> import torch, fastgauss
        >>> data = torch.randn(100, 3, 4, 4)
        >>> fastgauss.empirical_denoise(data[:2] + 1e-3, 0.002, data).sub(data[:2]).abs().max() < 1e-5
        tensor(True)
    """
    return _denoise(x, sigma, TrainingSet(data), precision)


class EmpiricalDenoiser(nn.Module):
    """The memorizing denoiser of a training set, by the denoiser protocol ``den(x, sigma)``.

    data: [N, *feature_shape], left where it is: on the GPU, or in host memory, in which case
    it streams to the queries' device chunk by chunk (pin it for faster copies). With
    ``group=`` each rank holds a shard and results merge exactly across ranks (an
    all-reduce per call; every rank must call with the same queries). device: where the work
    runs ("cuda", "cuda:1", "cpu"; default: the queries' device): queries move there, the data
    streams there chunk by chunk, results come back on the queries' device. A device this
    machine lacks is a ValueError. In-place changes to ``data`` are seen at the next call
    (caches follow the tensor's version); NaN written into it then is a ValueError.

    Example:
        >>> import torch, fastgauss
        >>> den = fastgauss.EmpiricalDenoiser(torch.randn(500, 8))
        >>> den(torch.randn(4, 8), torch.full((4,), 0.5)).shape
        torch.Size([4, 8])
    """

    def __init__(self, data, *, precision: str = "ieee", group=None, chunk_rows: int | None = None, device=None):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.data = TrainingSet(data, group=group, chunk_rows=chunk_rows, device=device)
        self.precision = precision

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.data.feature_shape

    def forward(self, x, sigma, *, precision: str | None = None) -> torch.Tensor:
        """D(x; sigma): [B, *feature_shape]; ``last_precision`` tells which mode "auto" chose."""
        return _denoise(x, sigma, self.data, precision or self.precision)

    @property
    def last_precision(self) -> str | None:
        """The product mode of the last kernel call (what precision="auto" picked)."""
        return self.data.last_precision

    def score(self, x, sigma) -> torch.Tensor:
        """(D(x; sigma) - x) / sigma^2."""
        x = as_float(as_tensor(x, "x"))
        s = _normalize_sigma(sigma, x.shape[0], x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (self.forward(x, sigma) - x) / s**2

    def jvp(self, x, sigma, v) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, J v) from one pass over the data; v: [B, *feature_shape] or [K, B, *feature_shape].

        J v = sum_i w_i (y_i - D)((y_i - D) . v) / sigma^2 (J = dD/dx, symmetric), accumulated
        around the running weighted mean, with the near ties re-scored in float64 (see
        ``empirical_denoise``). Results are on x's device.
        """
        home = x.device if isinstance(x, torch.Tensor) else None
        x, flat, s = _queries(x, sigma, self.data)
        v = as_float(as_tensor(v, "v")).to(x.device)
        probes = v.dim() == x.dim() + 1
        if v.shape[probes:] != x.shape:
            raise ValueError(f"v: expected shape {tuple(x.shape)} or [K, {', '.join(map(str, x.shape))}], "
                             f"got {tuple(v.shape)}")
        check_finite(v, "v")
        if flat.shape[0] == 0:
            return x.clone(), v.clone()
        vk = v.reshape(v.shape[0] if probes else 1, *flat.shape)
        part = _stream(flat, s, self.data, probes=vk)
        denoised, jv, _ = et.finish(part, s.to(part.mu.dtype), vk.to(part.mu.dtype))
        denoised = (denoised + self.data.center.to(denoised)).to(x.dtype).reshape(x.shape)
        jv = jv.to(x.dtype).reshape(v.shape)
        return (denoised, jv) if home is None else (denoised.to(home), jv.to(home))

    def extra_repr(self) -> str:
        return (f"N={self.data.n}, feature_shape={self.feature_shape}, device={self.data.source.device}, "
                f"precision={self.precision!r}, sharded={self.data.group is not None}")
