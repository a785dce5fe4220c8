"""One pass over the training set: per chunk (PyTorch) or per kernel launch (Triton) a partial
(m, l, weighted mean and covariances), the window's rows re-scored exactly, merged across chunks and ranks."""

from __future__ import annotations

import torch

from . import _torch as et
from ..._core.arrays import inspectable
from ..._core.backend import backend_for
from . import precision as limits  # limits.WINDOW_CAP read at call time (tests lower it)
from .precision import EXACT, _Candidates, _resolve, windows
from .training_set import TrainingSet


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
                qid, col = cands.admit(inside).nonzero(as_tuple=True)
                cands.add(qid, col + start, s[qid, col].to(torch.float64))
        if plain:  # D only: the running (m, l, acc) of flash attention; no cancellation to avoid
            m_new = torch.maximum(m, top.values)
            alpha = et.rescale(m, m_new)
            p = s.sub_(et.reference(m_new)[:, None]).exp_()
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
                                           threshold=threshold, cap=limits.WINDOW_CAP)
            m, l, acc = (t.to(torch.float64) for t in out[:3])
            part.merge_(et.Partial(m, l, acc * _inverse(l)[:, None]))
            records = out[3:] if threshold is not None else None
        else:
            for ch in kernel.empirical_probe_chunks(xc, inv_var, block, center, block_norms, probes,
                                                    precision=modes, threshold=threshold, cap=limits.WINDOW_CAP):
                part.merge_(_probe_partial(ch, p64), p64)
                records = ch.records
        if threshold is not None:
            count, idx, s = records
            over = count > limits.WINDOW_CAP
            cands.overflow |= over
            slot = torch.arange(limits.WINDOW_CAP, device=device)
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
