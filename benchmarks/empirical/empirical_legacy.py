"""The empirical denoiser kernel as it was before the chunked restructure (issue 14, part 2).

Kept only for benchmarks/empirical/gpu_check_empirical.py's A/B cases (before vs after, 17 vs 16 splits):
the product has one path, kernels/empirical.py. The accumulator acc[BLOCK_M, d] is loaded and
stored in fp32 scratch for every tile of BLOCK_N data rows (about 19.7 GB of traffic at
B = 1024, N = 50 000, d = 3072). ``splits`` overrides the launcher's split count.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastgauss.kernels._common import TileConfig, centred_dots, load_centred_rows, mma, multiprocessors

@triton.jit
def _empirical_partial_kernel(
    xc_ptr, inv_var_ptr, y_ptr, center_ptr, norms_ptr,
    m_ptr, l_ptr, acc_ptr,
    thr_ptr, cnt_ptr, cidx_ptr, cs_ptr,
    n_queries, n_data, dim, rows_per_split,
    stride_y,
    QK_PRECISION: tl.constexpr, PV_PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    WINDOW: tl.constexpr, MAX_ONLY: tl.constexpr, CAP: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """xc: [B, d] centred queries (contiguous); y: [N, d] raw data rows (unit column stride),
    centred in the kernel with center [d]; norms: [N] squared norms of the centred rows.
    Writes m, l: [S, B] and acc: [S, B, d] (every element, whatever it held) for split
    S = program_id(1); m is the maximum over all rows.
    WINDOW: rows whose logit is >= thr [B] are left out of l and acc and recorded instead:
    cnt [B] (int32, zeroed) counts them per query, the first CAP go to cidx [B, CAP] (row
    index) and cs [B, CAP] (logit), in no particular order. MAX_ONLY: only m and l."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    q = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_q = q < n_queries
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    inv_var = tl.load(inv_var_ptr + q, mask=mask_q, other=1.0)
    row_start = split * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n_data)
    acc_base = acc_ptr + split.to(tl.int64) * n_queries * dim + q[:, None].to(tl.int64) * dim
    m_i = tl.full((BLOCK_M,), float("-inf"), tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    if not MAX_ONLY:
        for k0 in range(0, dim, BLOCK_K):  # the accumulator starts at zero whatever the buffer held
            ks = k0 + offs_k
            tl.store(acc_base + ks[None, :], tl.zeros((BLOCK_M, BLOCK_K), tl.float32),
                     mask=mask_q[:, None] & (ks < dim)[None, :])
    if WINDOW:
        thr = tl.load(thr_ptr + q, mask=mask_q, other=float("inf"))
    for n0 in range(row_start, row_end, BLOCK_N):
        rows = n0 + offs_n
        mask_n = rows < row_end
        logits = centred_dots(xc_ptr, q, mask_q, y_ptr, rows, mask_n, center_ptr, dim, stride_y,
                              QK_PRECISION, EMULATE_BF16, True, BLOCK_M, BLOCK_N, BLOCK_K)
        norms = tl.load(norms_ptr + rows, mask=mask_n, other=0.0)
        logits = (logits - 0.5 * norms[None, :]) * inv_var[:, None]
        logits = tl.where(mask_n[None, :], logits, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(logits, 1))  # over all rows, recorded ones included
        if WINDOW:
            inside = (logits >= thr[:, None]) & mask_n[None, :] & mask_q[:, None]
            slot = tl.atomic_add(cnt_ptr + q[:, None] + 0 * offs_n[None, :], 1, mask=inside)
            keep = inside & (slot < CAP)
            where = q[:, None].to(tl.int64) * CAP + slot
            tl.store(cidx_ptr + where, rows[None, :] + 0 * q[:, None], mask=keep)
            tl.store(cs_ptr + where, logits, mask=keep)
            logits = tl.where(inside, float("-inf"), logits)
        alpha = tl.exp(m_i - m_new)  # 0 on the first tile (m_i = -inf, acc is zero)
        p = tl.exp(logits - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new
        if not MAX_ONLY:
            for k0 in range(0, dim, BLOCK_K):
                ks = k0 + offs_k
                mask_k = ks < dim
                y = load_centred_rows(y_ptr, rows, mask_n, center_ptr, ks, mask_k, stride_y)
                acc_ptrs = acc_base + ks[None, :]
                mask_acc = mask_q[:, None] & mask_k[None, :]
                acc = tl.load(acc_ptrs, mask=mask_acc, other=0.0) * alpha[:, None]
                acc = mma(p, y, acc, PV_PRECISION, EMULATE_BF16)
                tl.store(acc_ptrs, acc, mask=mask_acc)
    tl.store(m_ptr + split * n_queries + q, m_i, mask=mask_q)
    tl.store(l_ptr + split * n_queries + q, l_i, mask=mask_q)


CONFIGS = {"fma": TileConfig(64, 32, 16, 8, 2), "mma": TileConfig(64, 64, 16, 8, 2)}
#: Upper bound on the per-split fp32 scratch (splits x B x d).
_SCRATCH_BYTES = 512 << 20
_empty = torch.empty


def empirical_partial(xc: torch.Tensor, inv_var: torch.Tensor, data: torch.Tensor, center: torch.Tensor,
                      norms: torch.Tensor, *, precision: tuple[str, str], threshold: torch.Tensor | None = None,
                      cap: int = 256, max_only: bool = False,
                      splits: int | None = None):
    """Merged softmax partial (m [B], l [B], acc [B, d]) of every row of ``data`` for queries xc.

    xc: [B, d] float32 contiguous, centred on ``center``; inv_var: [B] = 1 / sigma^2 float32;
    data: [N, d] float32 with unit column stride (raw, centred in the kernel); center: [d]
    float32; norms: [N] float32 squared norms of the centred rows; precision: one of MODES,
    (distance products, weighted-sum products). m is the largest logit of each query.
    threshold: [B] float32 or None; rows whose logit is >= it are left out of l and acc and
    returned as well: (m, l, acc, count [B] int32, index [B, cap] int32, logit [B, cap] float32),
    the first min(count, cap) slots of each query filled (unordered). max_only: (m, l, None).
    """
    qk, pv = precision
    n_queries, dim = xc.shape
    n_data = data.shape[0]
    cfg = CONFIGS["fma" if precision == ("ieee", "ieee") else "mma"]
    query_blocks = triton.cdiv(n_queries, cfg.block_m)
    want = triton.cdiv(2 * multiprocessors(xc.device), query_blocks)
    fit = max(1, _SCRATCH_BYTES // (4 * n_queries * dim))
    if splits is None:
        splits = max(1, min(want, fit, triton.cdiv(n_data, cfg.block_n)))
    rows_per_split = triton.cdiv(n_data, splits)
    splits = triton.cdiv(n_data, rows_per_split)
    dev = xc.device
    m = _empty((splits, n_queries), dtype=torch.float32, device=dev)
    l = _empty((splits, n_queries), dtype=torch.float32, device=dev)
    acc = m if max_only else _empty((splits, n_queries, dim), dtype=torch.float32, device=dev)
    window = threshold is not None
    if window:
        thr = threshold.to(device=dev, dtype=torch.float32).contiguous()
        count = torch.zeros(n_queries, dtype=torch.int32, device=dev)
        cidx = _empty((n_queries, cap), dtype=torch.int32, device=dev)
        cs = _empty((n_queries, cap), dtype=torch.float32, device=dev)
    else:
        thr, count, cidx, cs = m, m, m, m  # never read
    _empirical_partial_kernel[(query_blocks, splits)](
        xc, inv_var, data, center, norms, m, l, acc, thr, count, cidx, cs,
        n_queries, n_data, dim, rows_per_split, data.stride(0),
        QK_PRECISION=qk, PV_PRECISION=pv, EMULATE_BF16=xc.device.type != "cuda",
        WINDOW=window, MAX_ONLY=max_only, CAP=cap if window else 1,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    m_all = m.max(0).values
    scale = torch.exp(m - m_all)  # [S, B]
    l_all = (l * scale).sum(0)
    if max_only:
        return m_all, l_all, None
    acc_all = (acc * scale[..., None]).sum(0)
    if window:
        return m_all, l_all, acc_all, count, cidx, cs
    return m_all, l_all, acc_all
