"""Pieces shared by the kernel families: the product-mode dot, exact bf16 rounding under the
interpreter, the grouped tile order, tile configs, device size."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl


@triton.jit
def mma(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """acc + a @ b in a product mode: "ieee", "tf32", "tf32x3" (input_precision) or "bf16"
    (operands rounded to bf16, fp32 accumulation). The interpreter's bf16 dot is broken, so
    there bf16 is emulated exactly in fp32: a product of two bf16 values is exact in fp32."""
    if PRECISION == "bf16":
        if EMULATE_BF16:
            result = tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), acc,
                            input_precision="ieee")
        else:
            result = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        result = tl.dot(a, b, acc, input_precision=PRECISION)
    return result


@triton.jit
def dot_stored(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """acc + a @ b for operands already stored in the mode's dtype (bf16 for "bf16", fp32 for
    "ieee", "tf32", "tf32x3"), passed straight from their loads: on CUDA nothing stands between
    the load and the dot, so both operands stay in shared memory. The interpreter's bf16 dot is
    broken: there the bf16 values are widened (exactly) and multiplied in fp32."""
    if PRECISION == "bf16":
        if EMULATE_BF16:
            result = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
        else:
            result = tl.dot(a, b, acc)
    else:
        result = tl.dot(a, b, acc, input_precision=PRECISION)
    return result


@triton.jit
def load_centred_rows(y_ptr, rows, mask_n, center_ptr, ks, mask_k, stride_y):
    """Tile [len(rows), len(ks)] of y - c; padded rows and columns are exactly zero."""
    c = tl.load(center_ptr + ks, mask=mask_k, other=0.0)
    mask = mask_n[:, None] & mask_k[None, :]
    y = tl.load(y_ptr + rows.to(tl.int64)[:, None] * stride_y + ks[None, :], mask=mask, other=0.0)
    return tl.where(mask, y - c[None, :], 0.0)


@triton.jit
def centred_dots(xc_ptr, q, mask_q, y_ptr, rows, mask_n, center_ptr, dim, stride_y,
                 PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, CENTRE_ROWS: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_M, BLOCK_N] products x' . y' of centred queries (rows q of xc, [B, d] contiguous)
    with data rows ``rows`` of y (row stride stride_y): y' = y - c, centred here on c, when
    CENTRE_ROWS; else y' = y, its [BLOCK_K, BLOCK_N] tile going from memory into tl.dot as loaded."""
    offs_k = tl.arange(0, BLOCK_K)
    dots = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < dim
        x = tl.load(xc_ptr + q[:, None].to(tl.int64) * dim + ks[None, :],
                    mask=mask_q[:, None] & mask_k[None, :], other=0.0)
        if CENTRE_ROWS:
            y = tl.trans(load_centred_rows(y_ptr, rows, mask_n, center_ptr, ks, mask_k, stride_y))
        else:
            y = tl.load(y_ptr + rows.to(tl.int64)[None, :] * stride_y + ks[:, None],
                        mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        dots = mma(x, y, dots, PRECISION, EMULATE_BF16)
    return dots


@triton.jit
def bf16_value(v):
    """fp32 tensor holding v rounded to bf16 (nearest, ties to even; v fp32 finite, or bf16),
    by integer operations on the bits: the interpreter's own fp32 <-> bf16 casts truncate."""
    if v.dtype == tl.bfloat16:
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    bits = v.to(tl.uint32, bitcast=True)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).to(tl.float32, bitcast=True)


@triton.jit
def rounded_to(v, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """fp32 v converted to dtype (bf16: to nearest even, also under the interpreter)."""
    if dtype == tl.bfloat16 and EMULATE_BF16:
        bits = bf16_value(v).to(tl.uint32, bitcast=True) >> 16
        result = bits.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        result = v.to(dtype)
    return result


@triton.jit
def grouped_tile(n_rows, n_cols, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """(pid_m, pid_n) of this program: GROUP_M row blocks (fewer in the last group) take every
    column block in turn, row block fastest within the group."""
    pid = tl.program_id(0)
    blocks_m = tl.cdiv(n_rows, BLOCK_M)
    per_group = GROUP_M * tl.cdiv(n_cols, BLOCK_N)
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(blocks_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m


@dataclass(frozen=True)
class TileConfig:
    """One launch configuration: tile sizes, warps per program, pipeline depth."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def multiprocessors(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device; 2 for the interpreter (enough to exercise
    the paths that split work across programs)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2
