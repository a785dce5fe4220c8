"""Nearest-neighbour candidates: the distance product fused with a running top-BLOCK_N.

Per program: a block of queries and a split of the data rows. Each tile of data rows gives
squared distances |x'|^2 + |y'|^2 - 2 x'.y' (x' = x - c, y' = y - c; products "ieee", or "tf32x3"
on raw rows: |x'|^2 + 2 x'.c + |y'|^2 - 2 x'.y, both operands straight from memory); each is
packed with its row index into one int64 key (the bits of a non-negative float order like the
float, and the index in the low bits breaks ties toward the lower index), and the running best
keys are merged with the tile by a bitonic step: min(best ascending, tile descending), then sorted.
The launcher merges the splits; fastgauss re-ranks the candidates exactly in float64, keeping every
row whose key lies within twice ``dot_error`` (times the norms) of the k-th.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from ._common import centred_dots, load_centred_rows, mma, multiprocessors

_EMPTY = tl.constexpr(9223372036854775807)  # int64 max: an empty slot sorts last


@triton.jit
def _transposed_dots(xct_ptr, q, mask_q, y_ptr, rows, mask_n, center_ptr, dim, stride_y, n_queries,
                     PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """[BLOCK_M, BLOCK_N] products x' . y' formed as (Y' Xc^T)^T: xct is the centred queries'
    transpose [d, B] contiguous, rows of y are centred here. The FMA dot's B operand (Xc^T) is
    then N-contiguous in shared memory; as x' Y'^T it is a K-major tile of raw rows, which puts
    the lanes of a warp in the same banks (16 wavefronts per 16-byte load instead of 2)."""
    offs_k = tl.arange(0, BLOCK_K)
    dots_t = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < dim
        xt = tl.load(xct_ptr + ks.to(tl.int64)[:, None] * n_queries + q[None, :],
                     mask=mask_k[:, None] & mask_q[None, :], other=0.0)
        y = load_centred_rows(y_ptr, rows, mask_n, center_ptr, ks, mask_k, stride_y)
        dots_t = mma(y, xt, dots_t, PRECISION, False)
    return tl.trans(dots_t)


@triton.jit
def _nn_candidates_kernel(
    xc_ptr, x_consts_ptr, y_ptr, center_ptr, y_norms_ptr, keys_ptr,
    n_queries, n_data, dim, rows_per_split,
    stride_y,
    PRECISION: tl.constexpr, CENTRE_ROWS: tl.constexpr, QUERIES_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """xc: [B, d] centred queries a = x - c (QUERIES_T: their transpose [d, B], rows centred
    here; see ``_transposed_dots``); y: [N, d] raw rows; y_norms: [N] |y - c|^2.
    CENTRE_ROWS: rows centred here with center [d], x_consts: [B] |a|^2; otherwise raw rows and
    x_consts = |a|^2 + 2 a.c (both give |x - y|^2). Writes keys: [S, B, BLOCK_N] ascending."""
    pid_m = tl.program_id(0)
    split = tl.program_id(1)
    q = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_q = q < n_queries
    offs_n = tl.arange(0, BLOCK_N)
    x_consts = tl.load(x_consts_ptr + q, mask=mask_q, other=0.0)
    row_start = split * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, n_data)
    best = tl.full((BLOCK_M, BLOCK_N), _EMPTY, tl.int64)
    for n0 in range(row_start, row_end, BLOCK_N):
        rows = n0 + offs_n
        mask_n = rows < row_end
        if QUERIES_T:
            dots = _transposed_dots(xc_ptr, q, mask_q, y_ptr, rows, mask_n, center_ptr, dim, stride_y,
                                    n_queries, PRECISION, BLOCK_M, BLOCK_N, BLOCK_K)
        else:
            dots = centred_dots(xc_ptr, q, mask_q, y_ptr, rows, mask_n, center_ptr, dim, stride_y,
                                PRECISION, False, CENTRE_ROWS, BLOCK_M, BLOCK_N, BLOCK_K)
        y_norms = tl.load(y_norms_ptr + rows, mask=mask_n, other=0.0)
        dist = tl.maximum(x_consts[:, None] + y_norms[None, :] - 2.0 * dots, 0.0)
        key = (dist.to(tl.int32, bitcast=True).to(tl.int64) << 32) | rows.to(tl.int64)[None, :]
        key = tl.where(mask_n[None, :], key, _EMPTY)
        best = tl.sort(tl.minimum(best, tl.sort(key, dim=1, descending=True)), dim=1)
    out = keys_ptr + (split.to(tl.int64) * n_queries + q[:, None]) * BLOCK_N + offs_n[None, :]
    tl.store(out, best, mask=mask_q[:, None])


#: Product modes of the candidate pass: exact fp32 (FFMA) or tf32x3 (three tf32 tensor-core products).
PRECISIONS = ("ieee", "tf32x3")
#: What CUDA launches use; the interpreter computes exact fp32 products whatever the mode.
DEFAULT_PRECISION = "tf32x3"
BLOCK_M, BLOCK_N, BLOCK_K = 64, 64, 16


@dataclass(frozen=True)
class NNConfig:
    """Warps and pipeline depth of one product mode, the programs an SM holds at once (from the
    compile gate's registers: ~160-250 x 256 threads, one), whether rows are centred in the
    kernel (else raw rows go straight into tl.dot), and whether the products are formed from the
    queries' transpose (``_transposed_dots``, the FMA path; rows centred in the kernel)."""

    num_warps: int
    num_stages: int
    ctas_per_sm: int
    centre_rows: bool
    queries_t: bool = False


#: Each choice is the one that builds without spills on sm_80 and sm_90, triton 3.6 and 3.9, both
#: unhinted and as JIT-specialised at the target: tf32x3 on 4 warps (one 64x64x8 warpgroup) or with
#: rows centred in the kernel spills on sm_80, ieee on raw rows caps sm_90 at 128 registers and spills.
CONFIGS = {"ieee": NNConfig(num_warps=8, num_stages=2, ctas_per_sm=1, centre_rows=True, queries_t=True),
           "tf32x3": NNConfig(num_warps=8, num_stages=2, ctas_per_sm=1, centre_rows=False)}
#: On sm_90 tf32x3 takes 4 warps, one 64x64x8 warpgroup (HGMMA 64x64 instead of two 64x32): as the
#: JIT builds it at the target, 202-204 registers, 2 CTAs per SM, no spills (Triton 3.9 and 3.6);
#: the same build spills 48 bytes on sm_80 under Triton 3.9, so other archs keep CONFIGS.
CONFIGS_SM90 = {**CONFIGS, "tf32x3": NNConfig(num_warps=4, num_stages=2, ctas_per_sm=2, centre_rows=False)}
#: The ieee products as formed before issue 14's shared-memory fix (x' Y'^T: K-major raw rows as
#: the FMA dot's B): gpu_check's A/B only, built by the gate on sm_90.
IEEE_DIRECT = replace(CONFIGS["ieee"], queries_t=False)
#: Most candidates one call can return (one tile's worth of running best).
MAX_CANDIDATES = BLOCK_N


def _gamma(terms: int, u: float) -> float:
    """gamma_m = m u / (1 - m u): the relative error bound of a sum of m rounded terms."""
    return terms * u / (1 - terms * u) if terms * u < 0.5 else float("inf")


def dot_error(dim: int, precision: str) -> float:
    """g such that |fl(a . y) - a . y| <= g |a| |y| for the kernel's fp32 dots of length ``dim``.

    "ieee": fp32 FMAs rounded to nearest, any order: g = gamma_d(2^-24).

    "tf32x3" (Triton splits each fp32 operand and sums three tf32 tensor-core products; the split
    may round to nearest or toward zero, the bound takes the worse): a_hi = tf32(a) keeps 11
    significant bits, so |a - a_hi| < 2^-10 |a| and a - a_hi is exact in fp32; a_lo = tf32(a - a_hi),
    so a = a_hi + a_lo + e_a with |e_a| < 2^-10 |a - a_hi| < 2^-20 |a|. The kernel sums
    a_hi y_hi + a_hi y_lo + a_lo y_hi, each product exact in fp32 (11 x 11 significant bits); what
    it drops, a_lo y_lo + (a_hi + a_lo) e_y + e_a (y_hi + y_lo) + e_a e_y, is below
    ((1 + 2^-10)^2 + 2 (1 + 2^-20) + 2^-20) 2^-20 < 2^-18 per unit |a_i| |y_i|. The 3d products
    (absolute sum <= (1 + 2^-9)^2 sum |a_i y_i|) are accumulated by tensor cores, which align each
    block of K products with the accumulator and truncate: per block at most (K + 1) 2^-23 of the
    running absolute sum, i.e. at most (1 + 1/K) 2^-23 <= 2^-22 per product and step (K >= 1); the
    final fp32 additions round to nearest (2^-24). So g = 2^-18 + (1 + 2^-9)^2 gamma_3d(2^-22):
    about 12x the "ieee" bound (tests/test_neighbors.py checks it against an emulation of this
    arithmetic; gpu_check against the hardware).
    """
    if precision == "ieee":
        return _gamma(dim, 2.0**-24)
    if precision == "tf32x3":
        return 2.0**-18 + (1 + 2.0**-9) ** 2 * _gamma(3 * dim, 2.0**-22)
    raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")


@dataclass(frozen=True)
class SplitPlan:
    """Launch geometry: grid (query_blocks, splits); each split owns rows_per_split data rows."""

    query_blocks: int
    splits: int
    rows_per_split: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.query_blocks, self.splits


def _plan(query_blocks: int, n_data: int, splits: int, align: int) -> SplitPlan:
    """``splits`` splits of a multiple of ``align`` rows each (BLOCK_N: whole tiles; 16: the hint)."""
    rows = triton.cdiv(triton.cdiv(n_data, splits), align) * align
    return SplitPlan(query_blocks, triton.cdiv(n_data, rows), rows)


def wave_efficiency(ctas: int, wave: int) -> float:
    """(ctas / wave) / ceil(ctas / wave): the busy fraction of the last wave's slots, over all waves."""
    return ctas / (triton.cdiv(ctas, wave) * wave)


def plan_cost(query_blocks: int, splits: int, rows_per_split: int, wave: int) -> int:
    """Modelled time of a grid in tile-steps: waves x tiles of BLOCK_N rows per split."""
    return triton.cdiv(query_blocks * splits, wave) * triton.cdiv(rows_per_split, BLOCK_N)


def split_plan(n_queries: int, n_data: int, sms: int, ctas_per_sm: int = 1, block_m: int = BLOCK_M) -> SplitPlan:
    """The split count that fills whole waves best, a pure function of the shapes and the SMs.

    A wave is sms * ctas_per_sm programs. With fewer query blocks than two waves, the data rows
    are split s ways, s from 1 to cdiv(2 waves, query_blocks), each split whole tiles (or a multiple
    of 16 rows); the least plan_cost (waves x tiles per split) wins, more splits on a tie. E.g. B = 1024, N = 50 000 on
    132 SMs, one program per SM: 16 query blocks x 16 splits = 256 programs, 2 waves at 97 %
    (cdiv(2 x 132, 16) = 17 splits would give 272: a third wave, 69 %); two per SM: 16 x 33 = 528,
    two waves at 100 %.
    """
    query_blocks = triton.cdiv(max(1, n_queries), block_m)
    wave = sms * ctas_per_sm
    most = max(1, min(triton.cdiv(2 * wave, query_blocks), triton.cdiv(n_data, BLOCK_N)))
    plans = [_plan(query_blocks, n_data, s, align) for s in range(1, most + 1) for align in (BLOCK_N, 16)]
    return min(plans, key=lambda p: (plan_cost(query_blocks, p.splits, p.rows_per_split, wave), -p.splits,
                                     p.rows_per_split % BLOCK_N))


def device_config(precision: str, device: torch.device) -> NNConfig:
    """The configuration launches on ``device`` use: CONFIGS_SM90 on compute capability 9.x, else CONFIGS."""
    sm90 = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] == 9
    return (CONFIGS_SM90 if sm90 else CONFIGS)[precision]


def nn_candidates(xc: torch.Tensor, x_norms: torch.Tensor, data: torch.Tensor, center: torch.Tensor,
                  y_norms: torch.Tensor, count: int, *, precision: str | None = None,
                  plan: SplitPlan | None = None, block_m: int = BLOCK_M,
                  config: NNConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp32 squared distances [B, count] ascending, their indices [B, count]), ties to the lower index.

    xc: [B, d] float32 contiguous, centred; x_norms: [B] float32 |xc|^2; data: [N, d] float32
    with unit column stride; center: [d] float32; y_norms: [N] float32; count <= MAX_CANDIDATES.
    precision: "ieee" or "tf32x3" (None: DEFAULT_PRECISION); plan, block_m and config: a launch
    geometry other than split_plan's and device_config's (the benchmarks' A/B cases).
    """
    n_queries, dim = xc.shape
    n_data = data.shape[0]
    precision = precision or DEFAULT_PRECISION
    cfg = config or device_config(precision, xc.device)
    if plan is None:
        plan = split_plan(n_queries, n_data, multiprocessors(xc.device), cfg.ctas_per_sm, block_m)
    keys = torch.empty((plan.splits, n_queries, BLOCK_N), dtype=torch.int64, device=xc.device)
    consts = x_norms if cfg.centre_rows else (x_norms.double() + 2 * (xc.double() @ center.double())).float()
    queries = xc.T.contiguous() if cfg.queries_t else xc  # [d, B]: B * d * 4 bytes, a small copy
    _nn_candidates_kernel[plan.grid](
        queries, consts, data, center, y_norms, keys, n_queries, n_data, dim, plan.rows_per_split, data.stride(0),
        PRECISION=precision, CENTRE_ROWS=cfg.centre_rows, QUERIES_T=cfg.queries_t, BLOCK_M=block_m,
        BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    merged = keys.permute(1, 0, 2).reshape(n_queries, -1)
    smallest = merged.topk(count, dim=1, largest=False).values  # keys order by (distance, index)
    dist = (smallest >> 32).to(torch.int32).view(torch.float32)  # the high word: the distance's bits
    return dist, smallest & 0xFFFFFFFF


_SIGNATURE = {"xc_ptr": "*fp32", "x_consts_ptr": "*fp32", "y_ptr": "*fp32", "center_ptr": "*fp32",
              "y_norms_ptr": "*fp32", "keys_ptr": "*i64", "n_queries": "i32", "n_data": "i32", "dim": "i32",
              "rows_per_split": "i32", "stride_y": "i32"}


def _gate_configs():
    """(entry name, precision, config, archs or None for every arch) of each configuration."""
    for precision, cfg in CONFIGS.items():
        yield f"nn_candidates[{precision}]", precision, cfg, None
        if CONFIGS_SM90[precision] != cfg:
            yield f"nn_candidates[{precision},sm90]", precision, CONFIGS_SM90[precision], (90,)
    yield "nn_candidates[ieee,direct]", "ieee", IEEE_DIRECT, (90,)


def entry_config(name: str) -> NNConfig:
    """The configuration of a compile-gate entry."""
    return {n: cfg for n, _, cfg, _ in _gate_configs()}[name]


def gate_entries():
    """(name, kernel, signature, constexprs, num_warps, num_stages, expect_mma) for the compile gate."""
    for name, precision, cfg, _ in _gate_configs():
        constexprs = {"PRECISION": precision, "CENTRE_ROWS": cfg.centre_rows, "QUERIES_T": cfg.queries_t,
                      "BLOCK_M": BLOCK_M, "BLOCK_N": BLOCK_N, "BLOCK_K": BLOCK_K}
        yield (name, _nn_candidates_kernel, dict(_SIGNATURE), constexprs, cfg.num_warps, cfg.num_stages,
               precision != "ieee")


def gate_archs():
    """Entries built only on some archs (entry name -> archs): the sm_90 configurations."""
    return {name: archs for name, _, _, archs in _gate_configs() if archs}


#: Target shape of issue 14 and the SMs of an H200.
TARGET = {"B": 1024, "N": 50_000, "d": 3072}
TARGET_SMS = 132


def gate_targets():
    """(entry_name, shape_label, int_args, grid) of each entry at the target shape, as launched (the
    sm_80 configuration as gpu_check's A/B launches it on the H200)."""
    b, n, d = TARGET["B"], TARGET["N"], TARGET["d"]
    for name, _, cfg, _ in _gate_configs():
        plan = split_plan(b, n, TARGET_SMS, cfg.ctas_per_sm)
        int_args = {"n_queries": b, "n_data": n, "dim": d, "rows_per_split": plan.rows_per_split, "stride_y": d}
        yield name, f"B={b},N={n},d={d}", int_args, plan.grid
