"""Centred Gram accumulation: out += (A - a_shift)^T (B - b_shift), fp32 products, float64 state.

The symmetric case (B is A) computes only the tiles on and above the diagonal: half the work.
Only the upper triangle of ``out`` is meaningful afterwards; callers mirror it when they read.
Rows are split over programs (each with its fp32 slice of a scratch) so that a launch fills the
scratch; ``launch_plan`` is the geometry, a pure function of the shapes and the SM count. The
"tf32" path first writes each launch's rows centred and transposed ([d, rows], fp32: the same
values the kernel would form), so both tl.dot operands are K-major tiles loaded straight from
memory into the tensor cores.
"""

from __future__ import annotations

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
    SYMMETRIC: tl.constexpr, PRECISION: tl.constexpr, PRECENTRED: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Program (tile, split): out[split, tile] = sum over the split's rows of (a - a_shift)^T (b - b_shift).
    PRECENTRED: a and b already hold the centred values (shifts unused), loaded as they are."""
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
    if not PRECENTRED:
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
        if not PRECENTRED:
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
    """One launch configuration of the centred Gram kernel; num_stages (pipeline depth) by precision."""

    block: int
    block_k: int
    num_warps: int
    num_stages: dict


#: Every configuration the launcher can choose; the compile gate builds each of them.
CONFIGS = {
    "small": GramConfig(block=64, block_k=16, num_warps=4, num_stages={"ieee": 3, "tf32x3": 3, "tf32": 3}),
    # ieee: 2 stages, as JIT-specialised under triton 3.6 three stages cap sm_90 at 128 registers and spill 8 bytes
    "large": GramConfig(block=128, block_k=16, num_warps=8, num_stages={"ieee": 2, "tf32x3": 3, "tf32": 3}),
}

#: fp32 accumulation length per program: bounds rounding growth of the fp32 partial sums.
MAX_ROWS_PER_PROGRAM = {"ieee": 4096, "tf32x3": 4096, "tf32": 16384}
#: Upper bound on the fp32 scratch of the row splits of one launch (each split: a d_a x d_b slice).
_SPLIT_SCRATCH_BYTES = 256 << 20
#: Upper bound on the centred, transposed fp32 copy of one launch's rows (the "tf32" path).
_CENTRED_COPY_BYTES = 1 << 30


def choose_config(dim_a: int, dim_b: int) -> str:
    """Small tiles for small matrices (more programs in flight), large tiles otherwise."""
    return "small" if max(dim_a, dim_b) <= 512 else "large"


def _num_tiles(dim_a: int, dim_b: int, block: int, symmetric: bool) -> int:
    tiles_a, tiles_b = triton.cdiv(dim_a, block), triton.cdiv(dim_b, block)
    return tiles_a * (tiles_a + 1) // 2 if symmetric else tiles_a * tiles_b


@dataclass(frozen=True)
class GramPlan:
    """Launch geometry: ``launches`` launches of grid (tiles, splits), rows_per_split rows a program."""

    config: str
    tiles: int
    splits: int
    rows_per_split: int
    launches: int

    @property
    def rows_per_launch(self) -> int:
        return self.splits * self.rows_per_split


def launch_plan(n: int, dim_a: int, dim_b: int, symmetric: bool, precision: str, sms: int) -> GramPlan:
    """The launches for n rows, a pure function of the shapes, the product mode and the SM count.

    Each program sums at most MAX_ROWS_PER_PROGRAM[precision] rows; that cap asks for
    cdiv(n, cap) row pieces, and few tiles ask for enough pieces to give the grid two waves (one
    piece per 8 k-steps at least). The pieces fill the split scratch (_SPLIT_SCRATCH_BYTES), so a
    launch covers as many rows as the scratch holds, and they are spread evenly over the launches
    (the "tf32" path's centred copy bounds the rows of a launch too). E.g. N = 50 000, d = 3072,
    "ieee": 13 pieces of <= 4096 rows, 7 fit the 256 MB scratch: 2 launches of 7 splits x 3584 rows,
    300 tiles x 7 = 2100 programs each (16 waves of 132 at 99.4 %), not 13 launches of 300.
    """
    name = choose_config(dim_a, dim_b)
    cfg = CONFIGS[name]
    tiles = _num_tiles(dim_a, dim_b, cfg.block, symmetric)
    cap = MAX_ROWS_PER_PROGRAM[precision]
    fit = max(1, _SPLIT_SCRATCH_BYTES // (4 * dim_a * dim_b))
    pieces = max(triton.cdiv(n, cap), min(triton.cdiv(2 * sms, tiles), max(1, n // (8 * cfg.block_k))))
    launches = triton.cdiv(pieces, fit)
    if precision == "tf32":
        copy_rows = max(cfg.block_k, _CENTRED_COPY_BYTES // (4 * (dim_a if symmetric else dim_a + dim_b)))
        launches = max(launches, triton.cdiv(n, copy_rows))
    splits = triton.cdiv(pieces, launches)
    rows = triton.cdiv(triton.cdiv(n, launches * splits), cfg.block_k) * cfg.block_k  # <= cap
    return GramPlan(name, tiles, splits, rows, triton.cdiv(n, rows * splits))


def _centred_transposed(rows: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """[n, d] fp32 rows -> (rows - shift)^T: [d, n] fp32 with row stride ld, a multiple of 16 (aligned
    loads); the kernel's own fp32 subtraction, so the values are bit-identical to its centring."""
    n, dim = rows.shape
    out = torch.empty((dim, triton.cdiv(n, 16) * 16), dtype=torch.float32, device=rows.device)[:, :n]
    out.copy_((rows - shift).T)
    return out


def centered_gram_accumulate(out, a, a_shift, b=None, b_shift=None, *, precision="ieee", plan=None,
                             precentre=None):
    """Accumulate a centred Gram (or cross-Gram) product into a float64 matrix in place.

    out: [da, db] float64 (db == da when b is None), updated as out += (a - a_shift)^T (b - b_shift).
    a: [n, da] float32 with unit column stride; a_shift: [da] float32 contiguous.
    b, b_shift: [n, db] float32 and [db] float32, or None for the symmetric product of a,
      in which case only tiles on and above the diagonal are computed and only the upper
      triangle of ``out`` is meaningful (the lower one receives partial values).
    precision: "ieee" (exact fp32 products), "tf32x3" or "tf32".
    plan, precentre: a GramPlan other than launch_plan's, the pre-pass on or off (None: for "tf32"
      only), for the benchmarks' A/B cases; the results are the same either way.

    Each program sums at most MAX_ROWS_PER_PROGRAM[precision] rows in fp32 into its slice of an
    fp32 scratch; the slices are added to ``out`` in float64 after every launch.
    """
    symmetric = b is None
    if symmetric:
        b, b_shift = a, a_shift
    n, dim_a = a.shape
    dim_b = b.shape[1]
    if n == 0:
        return out
    plan = plan or launch_plan(n, dim_a, dim_b, symmetric, precision, multiprocessors(a.device))
    cfg = CONFIGS[plan.config]
    # Zeroed once: tiles below the diagonal are never written in the symmetric case.
    scratch = out.new_zeros((min(plan.splits, triton.cdiv(n, plan.rows_per_split)), dim_a, dim_b),
                            dtype=torch.float32)
    precentred = precision == "tf32" if precentre is None else precentre
    for start in range(0, n, plan.rows_per_launch):
        a_part = a[start:start + plan.rows_per_launch]
        b_part = b[start:start + plan.rows_per_launch]
        rows = a_part.shape[0]
        splits = triton.cdiv(rows, plan.rows_per_split)
        if precentred:  # views [rows, d] of [d, ld] copies: unit row stride, K-major tiles
            a_part = _centred_transposed(a_part, a_shift).T
            b_part = a_part if symmetric else _centred_transposed(b_part, b_shift).T
        _centered_gram_kernel[(plan.tiles, splits)](
            a_part, b_part, a_shift, b_shift, scratch,
            rows, plan.rows_per_split, dim_a, dim_b,
            a_part.stride(0), a_part.stride(1), b_part.stride(0), b_part.stride(1),
            scratch.stride(0), scratch.stride(1),
            SYMMETRIC=symmetric, PRECISION=precision, PRECENTRED=precentred,
            BLOCK_I=cfg.block, BLOCK_J=cfg.block, BLOCK_K=cfg.block_k,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages[precision],
        )
        if splits == 1:
            out += scratch[0]
        else:
            out += scratch[:splits].sum(0, dtype=torch.float64)
    return out


def _signature(precentred: bool) -> dict:
    """Row-major rows (unit column stride), or the "tf32" path's transposed copies (unit row stride)."""
    unit, other = ("stride_a_row", "stride_b_row") if precentred else ("stride_a_col", "stride_b_col")
    strides = {"stride_a_row": "i32", "stride_a_col": "i32", "stride_b_row": "i32", "stride_b_col": "i32"}
    strides.update({unit: "constexpr", other: "constexpr"})
    return {
        "a_ptr": "*fp32", "b_ptr": "*fp32", "a_shift_ptr": "*fp32", "b_shift_ptr": "*fp32",
        "out_ptr": "*fp32", "n_rows": "i32", "rows_per_split": "i32", "dim_a": "i32", "dim_b": "i32",
        **{k: strides[k] for k in ("stride_a_row", "stride_a_col", "stride_b_row", "stride_b_col")},
        "stride_out_split": "i32", "stride_out_row": "i32",
    }


def _entry_name(cfg_name: str, precision: str, symmetric: bool) -> str:
    return f"centered_gram[{cfg_name},{precision},{'sym' if symmetric else 'cross'}]"


def gate_entries():
    """(name, kernel, signature, constexprs, num_warps, num_stages, expect_mma) for the compile gate."""
    for cfg_name, cfg in CONFIGS.items():
        for precision in PRECISIONS:
            precentred = precision == "tf32"
            unit = {"stride_a_row": 1, "stride_b_row": 1} if precentred else {"stride_a_col": 1, "stride_b_col": 1}
            for symmetric in (True, False):
                constexprs = {
                    **unit, "SYMMETRIC": symmetric, "PRECISION": precision, "PRECENTRED": precentred,
                    "BLOCK_I": cfg.block, "BLOCK_J": cfg.block, "BLOCK_K": cfg.block_k,
                }
                yield (_entry_name(cfg_name, precision, symmetric), _centered_gram_kernel,
                       _signature(precentred), constexprs, cfg.num_warps, cfg.num_stages[precision],
                       precision != "ieee")


#: Target shape of issue 14 and the SMs of an H200.
TARGET = {"N": 50_000, "d": 3072}
TARGET_SMS = 132


def gate_targets():
    """(entry_name, shape_label, int_args, grid) of the symmetric entries at the target shape: the
    first launch of the plan (the last may have fewer splits), ints as the launcher passes them."""
    n, d = TARGET["N"], TARGET["d"]
    for precision in PRECISIONS:
        plan = launch_plan(n, d, d, True, precision, TARGET_SMS)
        rows = min(n, plan.rows_per_launch)
        stride = triton.cdiv(rows, 16) * 16 if precision == "tf32" else d  # the copy's ld, or the rows'
        key = "stride_a_col" if precision == "tf32" else "stride_a_row"
        int_args = {"n_rows": rows, "rows_per_split": plan.rows_per_split, "dim_a": d, "dim_b": d,
                    key: stride, key.replace("_a_", "_b_"): stride, "stride_out_split": d * d, "stride_out_row": d}
        yield (_entry_name(plan.config, precision, True), f"N={n},d={d} ({plan.launches} launches)", int_args,
               (plan.tiles, plan.splits))
