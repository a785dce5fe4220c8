"""The empirical denoiser's three Triton kernels (launched chunk by chunk by ``empirical``)."""

import triton
import triton.language as tl

from ._common import dot_stored


@triton.jit
def _tile(n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Row and column offsets and masks of this program's tile (program ids 0 and 1)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, offs_m < n_rows, offs_n < n_cols


@triton.jit
def _dots_kernel(a_ptr, y_ptr, norms_ptr, inv_var_ptr, s_ptr,
                 n_rows_a, n_rows_y, dim, stride_y, stride_s,
                 LOGITS: tl.constexpr, Y_TRANSPOSED: tl.constexpr, PRECISION: tl.constexpr,
                 EMULATE_BF16: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """s[i, j] = a_i . y_j for a: [M, d] contiguous, y: [C, d] (row stride stride_y, unit column
    stride; K-major tiles, the tensor cores' B) or, Y_TRANSPOSED, its transpose [d, C] (row
    stride stride_y; N-contiguous tiles, the FMA dot's B), both in the mode's dtype; s: [M, >= C]
    fp32, row stride stride_s. LOGITS: a holds centred queries and s = (a_i . y_j - norms[j] / 2)
    * inv_var[i] instead."""
    offs_m, offs_n, mask_m, mask_n = _tile(n_rows_a, n_rows_y, BLOCK_M, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * dim + offs_k[None, :]
    if Y_TRANSPOSED:
        y_ptrs = y_ptr + offs_k.to(tl.int64)[:, None] * stride_y + offs_n[None, :]
        y_step = BLOCK_K * stride_y
    else:
        y_ptrs = y_ptr + offs_n.to(tl.int64)[:, None] * stride_y + offs_k[None, :]
        y_step = BLOCK_K
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        mask_k = (k0 + offs_k) < dim
        a = tl.load(a_ptrs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if Y_TRANSPOSED:
            y = tl.load(y_ptrs, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            acc = dot_stored(a, y, acc, PRECISION, EMULATE_BF16)
        else:
            y = tl.load(y_ptrs, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            acc = dot_stored(a, tl.trans(y), acc, PRECISION, EMULATE_BF16)
        a_ptrs += BLOCK_K
        y_ptrs += y_step
    if LOGITS:
        norms = tl.load(norms_ptr + offs_n, mask=mask_n, other=0.0)
        inv_var = tl.load(inv_var_ptr + offs_m, mask=mask_m, other=1.0)
        acc = (acc - 0.5 * norms[None, :]) * inv_var[:, None]
    tl.store(s_ptr + offs_m.to(tl.int64)[:, None] * stride_s + offs_n[None, :], acc,
             mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _softmax_kernel(s_ptr, p_ptr, m_ptr, l_ptr, best_ptr, spt_ptr,
                    thr_ptr, cnt_ptr, cidx_ptr, cs_ptr,
                    n_queries, n_cols, stride_s, stride_p, n_probes, first_row, store_p,
                    WINDOW: tl.constexpr, CAP: tl.constexpr, BLOCK_C: tl.constexpr):
    """Query b = program_id(0) over the chunk's n_cols logits s[b, :] (rows n_queries + k B + b
    of s: the probes' dots). Writes m[b] (the max over every row) and l[b] = sum p, with
    p = exp(s - m). WINDOW: rows with
    s >= thr[b] get p = 0 and are recorded: cnt[b] counts them (over the call), the first CAP
    go to cidx [B, CAP] (first_row + column) and cs [B, CAP] (logit), in row order. If store_p
    (1; 0 for a pass after the maximum only): p into row b of p. For each probe k (n_probes of
    them), p (t - t_best) into row n_queries + k B + b
    and its sum into spt[k, b]; best[b]: the column of the kept row of largest logit."""
    b = tl.program_id(0)
    offs = tl.arange(0, BLOCK_C)
    s_row = s_ptr + b.to(tl.int64) * stride_s
    if WINDOW:
        thr = tl.load(thr_ptr + b)
    else:
        thr = float("inf")
    top = tl.full((BLOCK_C,), float("-inf"), tl.float32)
    kept_top = tl.full((BLOCK_C,), float("-inf"), tl.float32)
    kept_col = tl.zeros((BLOCK_C,), tl.int32)
    for c0 in range(0, n_cols, BLOCK_C):
        cols = c0 + offs
        s = tl.load(s_row + cols, mask=cols < n_cols, other=float("-inf"))
        top = tl.maximum(top, s)
        kept = tl.where(s >= thr, float("-inf"), s)
        better = kept > kept_top  # strict: the first column wins among equals
        kept_col = tl.where(better, cols, kept_col)
        kept_top = tl.where(better, kept, kept_top)
    best_value = tl.max(kept_top, 0)
    best = tl.min(tl.where(kept_top == best_value, kept_col, n_cols), 0)
    best = tl.minimum(best, n_cols - 1)  # no kept row: any column (every p is 0)
    m_new = tl.max(top, 0)
    count = 0
    if WINDOW:
        count = tl.load(cnt_ptr + b)
    total = tl.zeros((BLOCK_C,), tl.float32)
    p_row = p_ptr + b.to(tl.int64) * stride_p
    for c0 in range(0, n_cols, BLOCK_C):
        cols = c0 + offs
        mask = cols < n_cols
        s = tl.load(s_row + cols, mask=mask, other=float("-inf"))
        p = tl.exp(s - m_new)
        if WINDOW:
            inside = (s >= thr) & mask
            slot = count + tl.cumsum(inside.to(tl.int32), 0) - 1
            keep = inside & (slot < CAP)
            where = b.to(tl.int64) * CAP + slot
            tl.store(cidx_ptr + where, first_row + cols, mask=keep)
            tl.store(cs_ptr + where, s, mask=keep)
            count += tl.sum(inside.to(tl.int32), 0)
            p = tl.where(inside, 0.0, p)
        total += p
        if store_p != 0:
            tl.store(p_row + cols, p.to(p_ptr.dtype.element_ty), mask=mask)
    tl.store(m_ptr + b, m_new)
    tl.store(l_ptr + b, tl.sum(total, 0))
    tl.store(best_ptr + b, best)
    if WINDOW:
        tl.store(cnt_ptr + b, count)
    for k in range(n_probes):
        row = n_queries + k * n_queries + b
        t_row = s_ptr + row.to(tl.int64) * stride_s
        t_best = tl.load(t_row + best)
        pt_sum = tl.zeros((BLOCK_C,), tl.float32)
        for c0 in range(0, n_cols, BLOCK_C):
            cols = c0 + offs
            mask = cols < n_cols
            s = tl.load(s_row + cols, mask=mask, other=float("-inf"))
            p = tl.where(s >= thr, 0.0, tl.exp(s - m_new))
            pt = p * (tl.load(t_row + cols, mask=mask, other=0.0) - t_best)
            pt_sum += pt
            tl.store(p_ptr + row.to(tl.int64) * stride_p + cols, pt.to(p_ptr.dtype.element_ty), mask=mask)
        tl.store(spt_ptr + k * n_queries + b, tl.sum(pt_sum, 0))


@triton.jit
def _weighted_sum_kernel(p_ptr, y_ptr, acc_ptr,
                         n_rows_p, n_cols, dim, rows_per_split, stride_p, stride_y,
                         Y_TRANSPOSED: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[r, i, :] = sum_j p[i, j] y[j, :] over the
    columns j of split r = program_id(2) (rows_per_split each). p: [M, >= C] (row stride
    stride_p); y: the chunk [C, d] (row stride stride_y) or, Y_TRANSPOSED, its transpose [d, C]
    (row stride stride_y; K-major, as tf32 wgmma needs), both in the mode's dtype; acc: fp32
    tile-major [R, cdiv(M, BLOCK_M), cdiv(d, BLOCK_D), BLOCK_M, BLOCK_D] (``untile``), every
    element written (padding with zeros)."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    split = tl.program_id(2)
    offs_m, offs_d, mask_m, mask_d = _tile(n_rows_p, dim, BLOCK_M, BLOCK_D)
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_D), tl.float32)
    start = split * rows_per_split
    end = tl.minimum(start + rows_per_split, n_cols)
    # 64-bit bases, 32-bit offsets within a tile row block (less than BLOCK x C, or C d for y)
    p_base = p_ptr + (pid_m * BLOCK_M).to(tl.int64) * stride_p
    p_offs = tl.arange(0, BLOCK_M)[:, None] * stride_p + (start + offs_k)[None, :]
    if Y_TRANSPOSED:
        y_base = y_ptr + (pid_d * BLOCK_D).to(tl.int64) * stride_y
        y_offs = tl.arange(0, BLOCK_D)[:, None] * stride_y + (start + offs_k)[None, :]
        y_step = BLOCK_K
    else:
        y_base = y_ptr + pid_d * BLOCK_D
        y_offs = tl.arange(0, BLOCK_D)[:, None] + (start + offs_k)[None, :] * stride_y
        y_step = BLOCK_K * stride_y
    for j0 in range(start, end, BLOCK_K):
        mask_k = (j0 + offs_k) < end
        p = tl.load(p_base + p_offs, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        yt = tl.load(y_base + y_offs, mask=mask_d[:, None] & mask_k[None, :], other=0.0)  # [BLOCK_D, BLOCK_K]
        acc = dot_stored(p, tl.trans(yt), acc, PRECISION, EMULATE_BF16)
        p_offs += BLOCK_K
        y_offs += y_step
    # the previous chunks' sum joins in the epilogue: loaded before the loop, it costs registers
    # acc is tile-major, [R, M tiles, d tiles, BLOCK_M, BLOCK_D]: each tile one dense block, so the
    # epilogue needs no masks and constant offsets
    tile = (split * tl.num_programs(0) + pid_m) * tl.num_programs(1) + pid_d
    local = tl.arange(0, BLOCK_M)[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    tl.store(acc_ptr + tile.to(tl.int64) * (BLOCK_M * BLOCK_D) + local, acc)
