"""Centred Gram accumulation: out += (A - a_shift)^T (B - b_shift), fp32 products, float64 state.

The symmetric case (B is A) computes only the tiles on and above the diagonal: half the work.
Only the upper triangle of ``out`` is meaningful afterwards; callers mirror it when they read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import multiprocessors

PRECISIONS = ("ieee", "tf32x3", "tf32")


@triton.jit
def _upper_tile_coords(pid):
    """Map a linear program id to tile coordinates (ti, tj) with ti <= tj, column by column."""
    tj = ((tl.sqrt((8 * pid + 1).to(tl.float32)) - 1.0) * 0.5).to(tl.int32)
    # fp32 sqrt may be off by one near perfect squares on very large grids: correct both ways.
    tj = tl.where(tj * (tj + 1) // 2 > pid, tj - 1, tj)
    tj = tl.where((tj + 1) * (tj + 2) // 2 <= pid, tj + 1, tj)
    ti = pid - tj * (tj + 1) // 2
    return ti, tj


@triton.jit
def _centered_gram_kernel(
    a_ptr, b_ptr, a_shift_ptr, b_shift_ptr, out_ptr,
    n_rows, rows_per_split, dim_a, dim_b,
    stride_a_row, stride_a_col, stride_b_row, stride_b_col,
    stride_out_split, stride_out_row,
    SYMMETRIC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    split = tl.program_id(1)
    if SYMMETRIC:
        ti, tj = _upper_tile_coords(pid)
    else:
        tiles_j = tl.cdiv(dim_b, BLOCK_J)
        ti = pid // tiles_j
        tj = pid % tiles_j

    offs_i = ti * BLOCK_I + tl.arange(0, BLOCK_I)
    offs_j = tj * BLOCK_J + tl.arange(0, BLOCK_J)
    offs_k = tl.arange(0, BLOCK_K)
    mask_i = offs_i < dim_a
    mask_j = offs_j < dim_b
    a_shift = tl.load(a_shift_ptr + offs_i, mask=mask_i, other=0.0)
    b_shift = tl.load(b_shift_ptr + offs_j, mask=mask_j, other=0.0)

    row_start = split * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n_rows)
    # int64: row * stride can pass 2^31 for large datasets.
    a_ptrs = (a_ptr + offs_i[:, None].to(tl.int64) * stride_a_col
              + (row_start + offs_k[None, :]).to(tl.int64) * stride_a_row)
    b_ptrs = (b_ptr + (row_start + offs_k[:, None]).to(tl.int64) * stride_b_row
              + offs_j[None, :].to(tl.int64) * stride_b_col)
    rows_step = tl.full((), BLOCK_K, tl.int64)
    step_a = rows_step * stride_a_row
    step_b = rows_step * stride_b_row

    acc = tl.zeros((BLOCK_I, BLOCK_J), dtype=tl.float32)
    for k0 in range(row_start, row_end, BLOCK_K):
        mask_k = (k0 + offs_k) < row_end
        mask_a = mask_i[:, None] & mask_k[None, :]
        mask_b = mask_k[:, None] & mask_j[None, :]
        a = tl.load(a_ptrs, mask=mask_a, other=0.0)
        b = tl.load(b_ptrs, mask=mask_b, other=0.0)
        # Centre after loading; padded rows and columns must stay exactly zero.
        a = tl.where(mask_a, a - a_shift[:, None], 0.0)
        b = tl.where(mask_b, b - b_shift[None, :], 0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += step_a
        b_ptrs += step_b

    out_ptrs = (out_ptr + split.to(tl.int64) * stride_out_split
                + offs_i[:, None].to(tl.int64) * stride_out_row + offs_j[None, :])
    mask_out = mask_i[:, None] & mask_j[None, :]
    tl.store(out_ptrs, acc, mask=mask_out)


@dataclass(frozen=True)
class GramConfig:
    """One launch configuration of the centred Gram kernel."""

    block: int
    block_k: int
    num_warps: int
    num_stages: int


#: Every configuration the launcher can choose; the compile gate builds each of them.
CONFIGS = {
    "small": GramConfig(block=64, block_k=16, num_warps=4, num_stages=3),
    "large": GramConfig(block=128, block_k=16, num_warps=8, num_stages=3),
}

#: fp32 accumulation length per program: bounds rounding growth of the fp32 partial sums.
MAX_ROWS_PER_PROGRAM = {"ieee": 4096, "tf32x3": 4096, "tf32": 16384}
#: Upper bound on the float64 scratch used for row splits when there are too few tiles.
_SPLIT_SCRATCH_BYTES = 256 << 20


def choose_config(dim_a: int, dim_b: int) -> str:
    """Small tiles for small matrices (more programs in flight), large tiles otherwise."""
    return "small" if max(dim_a, dim_b) <= 512 else "large"


def _num_tiles(dim_a: int, dim_b: int, block: int, symmetric: bool) -> int:
    tiles_a, tiles_b = triton.cdiv(dim_a, block), triton.cdiv(dim_b, block)
    return tiles_a * (tiles_a + 1) // 2 if symmetric else tiles_a * tiles_b


def centered_gram_accumulate(out, a, a_shift, b=None, b_shift=None, *, precision="ieee"):
    """Accumulate a centred Gram (or cross-Gram) product into a float64 matrix in place.

    out: [da, db] float64 (db == da when b is None), updated as out += (a - a_shift)^T (b - b_shift).
    a: [n, da] float32 with unit column stride; a_shift: [da] float32 contiguous.
    b, b_shift: [n, db] float32 and [db] float32, or None for the symmetric product of a,
      in which case only tiles on and above the diagonal are computed and only the upper
      triangle of ``out`` is meaningful (the lower one receives partial values).
    precision: "ieee" (exact fp32 products), "tf32x3" or "tf32".

    Each program sums at most MAX_ROWS_PER_PROGRAM[precision] rows in fp32 into fp32
    scratch; the scratch is added to ``out`` in float64 after every launch.
    """
    symmetric = b is None
    if symmetric:
        b, b_shift = a, a_shift
    n, dim_a = a.shape
    dim_b = b.shape[1]
    if n == 0:
        return out
    cfg = CONFIGS[choose_config(dim_a, dim_b)]
    tiles = _num_tiles(dim_a, dim_b, cfg.block, symmetric)
    # Few tiles: split the rows across more programs, each with its own scratch slice.
    want_splits = math.ceil(2 * multiprocessors(a.device) / tiles)
    fit_splits = max(1, _SPLIT_SCRATCH_BYTES // (4 * dim_a * dim_b))
    useful_splits = max(1, n // (8 * cfg.block_k))
    max_splits = max(1, min(want_splits, fit_splits, useful_splits))
    rows_per_split = min(MAX_ROWS_PER_PROGRAM[precision], triton.cdiv(n, max_splits))
    rows_per_launch = rows_per_split * max_splits
    # Zeroed once: tiles below the diagonal are never written in the symmetric case.
    scratch = out.new_zeros((min(max_splits, triton.cdiv(n, rows_per_split)), dim_a, dim_b),
                            dtype=torch.float32)
    for start in range(0, n, rows_per_launch):
        a_part = a[start:start + rows_per_launch]
        b_part = b[start:start + rows_per_launch]
        rows = a_part.shape[0]
        splits = triton.cdiv(rows, rows_per_split)
        _centered_gram_kernel[(tiles, splits)](
            a_part, b_part, a_shift, b_shift, scratch,
            rows, rows_per_split, dim_a, dim_b,
            a_part.stride(0), a_part.stride(1), b_part.stride(0), b_part.stride(1),
            scratch.stride(0), scratch.stride(1),
            SYMMETRIC=symmetric, PRECISION=precision,
            BLOCK_I=cfg.block, BLOCK_J=cfg.block, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        if splits == 1:
            out += scratch[0]
        else:
            out += scratch[:splits].sum(0, dtype=torch.float64)
    return out


def gate_entries():
    """(name, kernel, signature, constexprs, num_warps, num_stages, expect_mma) for the compile gate."""
    signature = {
        "a_ptr": "*fp32", "b_ptr": "*fp32", "a_shift_ptr": "*fp32", "b_shift_ptr": "*fp32",
        "out_ptr": "*fp32",
        "n_rows": "i32", "rows_per_split": "i32", "dim_a": "i32", "dim_b": "i32",
        "stride_a_row": "i32", "stride_a_col": "constexpr",
        "stride_b_row": "i32", "stride_b_col": "constexpr",
        "stride_out_split": "i32", "stride_out_row": "i32",
    }
    contiguous = {"stride_a_col": 1, "stride_b_col": 1}  # what the API launches: rows contiguous
    for cfg_name, cfg in CONFIGS.items():
        for precision in PRECISIONS:
            for symmetric in (True, False):
                constexprs = {
                    **contiguous, "SYMMETRIC": symmetric, "PRECISION": precision,
                    "BLOCK_I": cfg.block, "BLOCK_J": cfg.block, "BLOCK_K": cfg.block_k,
                }
                name = f"centered_gram[{cfg_name},{precision},{'sym' if symmetric else 'cross'}]"
                yield (name, _centered_gram_kernel, signature, constexprs,
                       cfg.num_warps, cfg.num_stages, precision != "ieee")


def gate_targets(sms: int = 132):
    """(entry name, shape label, int args, grid) of the symmetric Gram launches at N = 50 000,
    d = 3072 on a GPU with ``sms`` SMs, for the compile gate: one row per distinct launch, its
    count in the label (``launches=``). Repeats the arithmetic of centered_gram_accumulate."""
    n, dim = 50000, 3072
    cfg_name = choose_config(dim, dim)
    cfg = CONFIGS[cfg_name]
    tiles = _num_tiles(dim, dim, cfg.block, True)
    for precision in PRECISIONS:
        want_splits = math.ceil(2 * sms / tiles)
        fit_splits = max(1, _SPLIT_SCRATCH_BYTES // (4 * dim * dim))
        useful_splits = max(1, n // (8 * cfg.block_k))
        max_splits = max(1, min(want_splits, fit_splits, useful_splits))
        rows_per_split = min(MAX_ROWS_PER_PROGRAM[precision], triton.cdiv(n, max_splits))
        rows_per_launch = rows_per_split * max_splits
        launches = [min(rows_per_launch, n - start) for start in range(0, n, rows_per_launch)]
        for rows in sorted(set(launches), reverse=True):
            splits = triton.cdiv(rows, rows_per_split)
            yield (f"centered_gram[{cfg_name},{precision},sym]",
                   f"N={n},d={dim},rows={rows},launches={launches.count(rows)}",
                   {"n_rows": rows, "rows_per_split": rows_per_split, "dim_a": dim, "dim_b": dim,
                    "stride_a_row": dim, "stride_b_row": dim, "stride_out_split": dim * dim, "stride_out_row": dim},
                   (tiles, splits))
