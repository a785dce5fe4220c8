"""Nearest-neighbour candidates: the distance product fused with a running top-BLOCK_N.

Per program: a block of queries and a split of the data rows. Each tile of data rows gives
squared distances |x'|^2 + |y'|^2 - 2 x'.y' (exact fp32 products, centred data); each is packed
with its row index into one int64 key (the bits of a non-negative float order like the float,
and the index in the low bits breaks ties toward the lower index), and the running best keys
are merged with the tile by a bitonic step: min(best ascending, tile descending), then sorted.
The launcher merges the splits; fastgauss re-ranks the candidates exactly in float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import centred_dots, multiprocessors

_EMPTY = tl.constexpr(9223372036854775807)  # int64 max: an empty slot sorts last


@triton.jit
def _nn_candidates_kernel(
    xc_ptr, x_norms_ptr, y_ptr, center_ptr, y_norms_ptr, keys_ptr,
    n_queries, n_data, dim, rows_per_split,
    stride_y,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """xc: [B, d] centred queries; x_norms: [B]; y: [N, d] raw rows (centred here with center [d]);
    y_norms: [N] squared norms of the centred rows. Writes keys: [S, B, BLOCK_N] ascending."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    q = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_q = q < n_queries
    offs_n = tl.arange(0, BLOCK_N)
    x_norms = tl.load(x_norms_ptr + q, mask=mask_q, other=0.0)
    row_start = split * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n_data)
    best = tl.full((BLOCK_M, BLOCK_N), _EMPTY, tl.int64)
    for n0 in range(row_start, row_end, BLOCK_N):
        rows = n0 + offs_n
        mask_n = rows < row_end
        dots = centred_dots(xc_ptr, q, mask_q, y_ptr, rows, mask_n, center_ptr, dim, stride_y,
                            "ieee", False, BLOCK_M, BLOCK_N, BLOCK_K)
        y_norms = tl.load(y_norms_ptr + rows, mask=mask_n, other=0.0)
        dist = tl.maximum(x_norms[:, None] + y_norms[None, :] - 2.0 * dots, 0.0)
        key = (dist.to(tl.int32, bitcast=True).to(tl.int64) << 32) | rows.to(tl.int64)[None, :]
        key = tl.where(mask_n[None, :], key, _EMPTY)
        best = tl.sort(tl.minimum(best, tl.sort(key, dim=1, descending=True)), dim=1)
    out = keys_ptr + (split.to(tl.int64) * n_queries + q[:, None]) * BLOCK_N + offs_n[None, :]
    tl.store(out, best, mask=mask_q[:, None])


BLOCK_M, BLOCK_N, BLOCK_K, NUM_WARPS, NUM_STAGES = 32, 64, 16, 8, 2
#: Most candidates one call can return (one tile's worth of running best).
MAX_CANDIDATES = BLOCK_N


def nn_candidates(xc: torch.Tensor, x_norms: torch.Tensor, data: torch.Tensor, center: torch.Tensor,
                  y_norms: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 squared distances [B, count] ascending, their indices [B, count]), ties to the lower index.

    xc: [B, d] float32 contiguous, centred; x_norms: [B] float32 |xc|^2; data: [N, d] float32
    with unit column stride; center: [d] float32; y_norms: [N] float32; count <= MAX_CANDIDATES.
    """
    n_queries, dim = xc.shape
    n_data = data.shape[0]
    query_blocks = triton.cdiv(n_queries, BLOCK_M)
    splits = max(1, min(triton.cdiv(2 * multiprocessors(xc.device), query_blocks), triton.cdiv(n_data, BLOCK_N)))
    rows_per_split = triton.cdiv(n_data, splits)
    splits = triton.cdiv(n_data, rows_per_split)
    keys = torch.empty((splits, n_queries, BLOCK_N), dtype=torch.int64, device=xc.device)
    _nn_candidates_kernel[(query_blocks, splits)](
        xc, x_norms, data, center, y_norms, keys, n_queries, n_data, dim, rows_per_split, data.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    merged = keys.permute(1, 0, 2).reshape(n_queries, -1)
    smallest = merged.topk(count, dim=1, largest=False).values  # keys order by (distance, index)
    dist = (smallest >> 32).to(torch.int32).view(torch.float32)  # the high word: the distance's bits
    return dist, smallest & 0xFFFFFFFF


def gate_entries():
    """(name, kernel, signature, constexprs, num_warps, num_stages, expect_mma) for the compile gate."""
    signature = {"xc_ptr": "*fp32", "x_norms_ptr": "*fp32", "y_ptr": "*fp32", "center_ptr": "*fp32",
                 "y_norms_ptr": "*fp32", "keys_ptr": "*i64", "n_queries": "i32", "n_data": "i32", "dim": "i32",
                 "rows_per_split": "i32", "stride_y": "i32"}
    constexprs = {"BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K}
    yield ("nn_candidates[ieee]", _nn_candidates_kernel, signature, constexprs, NUM_WARPS, NUM_STAGES, False)


def gate_targets(sms: int = 132):
    """(entry name, shape label, int args, grid) of the launch at B = 1024, N = 50 000, d = 3072 on
    a GPU with ``sms`` SMs, for the compile gate. Repeats the split arithmetic of nn_candidates."""
    n_queries, n_data, dim = 1024, 50000, 3072
    query_blocks = triton.cdiv(n_queries, BLOCK_M)
    splits = max(1, min(triton.cdiv(2 * sms, query_blocks), triton.cdiv(n_data, BLOCK_N)))
    rows_per_split = triton.cdiv(n_data, splits)
    splits = triton.cdiv(n_data, rows_per_split)
    yield ("nn_candidates[ieee]", f"B={n_queries},N={n_data},d={dim}",
           {"n_queries": n_queries, "n_data": n_data, "dim": dim, "rows_per_split": rows_per_split,
            "stride_y": dim},
           (query_blocks, splits))
