"""Empirical denoiser partials, flash-attention style: one chunk of data rows at a time.

Per chunk of C data rows, centred once here (y' = y - c, in each product's operand dtype and in
the layout its product path wants, ``y_transposed``: tf32 wgmma takes K-major operands only, so
its weighted sum gets the transpose; the FMA dot of the ieee mode N-contiguous ones, so its
distances get the transpose instead), three
kernels (``_empirical_jit``), every operand straight from memory into tl.dot:
1. ``_dots_kernel``: S = X' Y'^T over the whole d, with the epilogue s = (x'.y' - |y'|^2 / 2) / sigma^2
   ([B, C] fp32); with probes also their dots t = v . y' ([K B, C]).
2. ``_softmax_kernel``, a program per query: the chunk's max m, p = exp(s - m) into P (the
   weighted sum's dtype), l = sum p; rows inside a window recorded and left out; with probes the
   centred J v weights p (t - t_best) (t_best: the dot of the best kept row, the reference).
3. ``_weighted_sum_kernel``: acc = P Y', a GEMM whose [BLOCK_M, BLOCK_D] accumulator stays in
   registers over the whole chunk (or a row split of it).
The chunks' partials (m, l, acc) merge exactly by the log-sum-exp rule in the launcher (with
probes: in float64 by the caller, as weighted covariances). The alpha-rescaled accumulator of
flash attention would be read and written per chunk as well (2 x 4 B d bytes), and its load
beside the live accumulator spills on sm_80: each chunk's own accumulator is written once instead.

Accumulator traffic at B = 1024, N = 50 000, d = 3072 (B d fp32 = 12.6 MB), tf32 and bf16: 4
chunks of 12 544 rows, each summed over R = 4 row splits (8 x 24 x 4 = 768 CTAs, 2 per SM: 2.9
waves of 264, wave efficiency 0.97, where R = 1 gives 0.73), each split written once and read
once by the merge: 4 x 4 x 2 x 12.6 MB = 0.40 GB (``_ACC_TRAFFIC_BYTES`` bounds it; ieee 0.20,
tf32x3 0.10). The kernel before moved acc through HBM for every 64 data rows: 19.7 GB. The price:
S and P, 12 bytes per (query, row) (write S, read S, write P; P is re-read from L2 per column
tile), 0.6 GB, and the centred copies, 12 bytes per data element in fp32 modes (1.8 GB; 308 MB
of workspace per chunk).
Deterministic: fixed-order sums, window slots by prefix sums, no float atomics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton

from ._common import TileConfig, multiprocessors
from ._empirical_jit import _dots_kernel, _softmax_kernel, _weighted_sum_kernel

#: (distance products, weighted-sum products): explicit modes use one precision for both; "auto"
#: (fastgauss.ops.empirical.precision) lowers the distances only where provably harmless and keeps the sum
#: at about fp32 accuracy on tensor cores (tf32x3).
MODES = (("ieee", "ieee"), ("tf32", "tf32"), ("bf16", "bf16"), ("tf32", "tf32x3"), ("bf16", "tf32x3"))
#: Launch configurations by the product's precision (the compile gate builds each; each fits
#: sm_80's registers too). Distances: block_n counts data rows, block_k features; weighted sum:
#: block_n is BLOCK_D (features), block_k counts data rows.
DOTS_CONFIGS = {"ieee": TileConfig(64, 64, 16, 4, 2), "tf32": TileConfig(128, 128, 16, 8, 3),
                "bf16": TileConfig(128, 128, 32, 8, 3), "tf32x3": TileConfig(64, 64, 16, 8, 3)}
SUMS_CONFIGS = {"ieee": TileConfig(64, 64, 16, 4, 2), "tf32": TileConfig(128, 128, 32, 8, 3),
                "bf16": TileConfig(128, 128, 32, 8, 3), "tf32x3": TileConfig(64, 64, 16, 8, 3)}
#: The softmax kernel: columns per step, warps.
SOFTMAX = (1024, 4)
#: Byte budgets: a chunk's centred copies (all of them); S plus P (all rows); the chunks'
#: accumulators kept for one merge (more chunks than fit are merged group by group).
_COPY_BYTES = 320 << 20
_SCORE_BYTES = 128 << 20
_PENDING_BYTES = 512 << 20
#: Row splits of a chunk's weighted sum at most, and the accumulator traffic they may cost in all
#: (each split of each chunk writes [M, d] fp32 once, and the merge reads it once).
MAX_SUM_SPLITS = 8
_ACC_TRAFFIC_BYTES = 450 << 20
#: CTAs of the weighted sum resident per SM on sm_90 (registers and shared memory, read by the
#: compile gate), for whole waves.
SUMS_CTAS_PER_SM = {"ieee": 5, "tf32": 2, "bf16": 2, "tf32x3": 2}
#: Allocation of every output buffer (the kernel writes each element): tests poison it with NaN.
_empty = torch.empty


def copy_bytes_per_element(precision: tuple[str, str]) -> int:
    """Bytes per data element of a chunk's centred copies: bf16 [C, d] serves both products of
    "bf16"; fp32 products take [C, d] and [d, C] (the distances and the weighted sum, each in the
    layout its product path wants: ``y_transposed``)."""
    qk, pv = precision
    return (2 if qk == "bf16" else 4) + (0 if pv == "bf16" else 4) + (4 if qk == "bf16" and pv != "bf16" else 0)


def chunk_rows(n_rows_p: int, n_data: int, dim: int, precision: tuple[str, str]) -> int:
    """Data rows per chunk: the copies and S + P ([n_rows_p, C] fp32 each) within their budgets,
    chunks of equal size (a multiple of 128 rows). n_rows_p: queries x (1 + probes)."""
    most = min(_COPY_BYTES // (copy_bytes_per_element(precision) * dim), _SCORE_BYTES // (8 * n_rows_p))
    most = max(128, most // 128 * 128)
    chunks = triton.cdiv(n_data, most)
    return min(n_data, triton.cdiv(triton.cdiv(n_data, chunks), 128) * 128)


def wave_efficiency(ctas: int, sms: int) -> float:
    """(CTAs / SMs) / ceil(CTAs / SMs): how busy the machine is over the waves a grid takes."""
    return (ctas / sms) / triton.cdiv(ctas, sms)


def whole_wave_splits(blocks: int, sms: int, waves: int = 2) -> int:
    """Splits of the data for ``blocks`` query blocks so that blocks x splits fills ``waves`` whole
    waves without passing them (17 x 16 = 272 CTAs on 132 SMs becomes 16 x 16 = 256)."""
    return max(1, waves * sms // blocks)


def sum_splits(blocks: int, slots: int, rows: int, block_k: int, limit: int = MAX_SUM_SPLITS) -> int:
    """Row splits of the weighted sum: of 1..limit (at most one per BLOCK_K rows), the count whose
    blocks x splits CTAs fill their waves of ``slots`` (SMs x CTAs per SM) best; the smaller on
    a tie."""
    options = range(1, max(1, min(limit, triton.cdiv(rows, block_k))) + 1)
    return max(options, key=lambda s: (round(wave_efficiency(blocks * s, slots), 9), -s))


class Plan(NamedTuple):
    """Chunk size, weighted-sum splits and the three grids of one call (pure function of shapes)."""

    chunk: int
    splits: int
    rows_per_split: int
    dots_grid: tuple
    softmax_grid: tuple
    sums_grid: tuple


def plan(n_queries: int, n_probes: int, n_data: int, dim: int, precision: tuple[str, str], sms: int) -> Plan:
    """The launch geometry for B = n_queries queries with K = n_probes probes against n_data rows
    (the grids of a full chunk; the last chunk's distance grid has fewer columns)."""
    dots, sums = DOTS_CONFIGS[precision[0]], SUMS_CONFIGS[precision[1]]
    rows_p = n_queries * (1 + n_probes)
    chunk = chunk_rows(rows_p, n_data, dim, precision)
    blocks = triton.cdiv(rows_p, sums.block_m) * triton.cdiv(dim, sums.block_n)
    chunks = triton.cdiv(n_data, chunk)
    limit = max(1, min(MAX_SUM_SPLITS, _ACC_TRAFFIC_BYTES // (chunks * 8 * rows_p * dim)))
    splits = sum_splits(blocks, sms * SUMS_CTAS_PER_SM[precision[1]], chunk, sums.block_k, limit)
    per = triton.cdiv(triton.cdiv(chunk, splits), sums.block_k) * sums.block_k
    splits = triton.cdiv(chunk, per)
    return Plan(chunk, splits, per, (triton.cdiv(n_queries, dots.block_m), triton.cdiv(chunk, dots.block_n)),
                (n_queries,), (triton.cdiv(rows_p, sums.block_m), triton.cdiv(dim, sums.block_n), splits))


def untile(acc: torch.Tensor, rows: int, dim: int) -> torch.Tensor:
    """[..., rows, dim] from a tile-major [..., M tiles, d tiles, BLOCK_M, BLOCK_D] accumulator."""
    *lead, tm, td, bm, bd = acc.shape
    return acc.transpose(-3, -2).reshape(*lead, tm * bm, td * bd)[..., :rows, :dim]


class ChunkPartial(NamedTuple):
    """One chunk's partial (m, l: [B]; acc: [B, d] = sum p y' with p = exp(s - m)) and, with
    probes, ref: [B, d] the centred row of largest kept logit (fp32), spt: [K, B] sum of
    p (y' - ref) . v and g: [K, B, d] sum of p ((y' - ref) . v) y'. records: the window's
    (count [B], index [B, cap], logit [B, cap]) over the call so far, or None."""

    start: int
    m: torch.Tensor
    l: torch.Tensor
    acc: torch.Tensor | None
    ref: torch.Tensor | None
    spt: torch.Tensor | None
    g: torch.Tensor | None
    records: tuple | None


def y_transposed(mode: str, product: str) -> bool:
    """Whether a product ("dots" or "sums") in ``mode`` reads the chunk's Y' as its [d, C]
    transpose rather than as [C, d]. The tensor cores want K-major B tiles: the distances' Y'^T in
    [C, d], the weighted sum's Y' in [d, C] (bf16 wgmma also takes [C, d]). The FMA dot (ieee)
    wants N-contiguous ones, the other way round: in a K-major tile the lanes of a warp, which
    share k and own consecutive columns, all read the same shared-memory banks."""
    if product == "dots":
        return mode == "ieee"
    return mode not in ("bf16", "ieee")


def _operands(block: torch.Tensor, center: torch.Tensor, precision: tuple[str, str]):
    """(operand(mode, product) -> (Y' in that product's layout and dtype, transposed?), fp32 copy
    [c, d]) of a chunk centred once: y' = y - c in fp32, then rounded to bf16 where a product is
    bf16 (the value the kernel rounded before); each copy made once, on first use."""
    yc = block - center
    copies = {(torch.float32, False): yc}

    def operand(mode: str, product: str):
        dtype, transposed = torch.bfloat16 if mode == "bf16" else torch.float32, y_transposed(mode, product)
        if (dtype, transposed) not in copies:
            base = copies.setdefault((dtype, False), yc.to(dtype))
            copies[dtype, transposed] = base.T.contiguous() if transposed else base
        return copies[dtype, transposed]

    return operand, yc


def _chunks(xc, inv_var, data, center, norms, probes, precision, threshold, cap, max_only, slots):
    """Runs the three kernels chunk by chunk; yields (ChunkPartial (acc, g: None), slot, buffer):
    the chunk's accumulators are slot ``i % slots`` of buffer, tile-major [slots, R, M tiles,
    d tiles, BLOCK_M, BLOCK_D] (None with max_only)."""
    qk, pv = precision
    n_queries, dim = xc.shape
    n_data = data.shape[0]
    k = 0 if probes is None else probes.shape[0]
    dev = xc.device
    geo = plan(n_queries, k, n_data, dim, precision, multiprocessors(dev))
    s_cfg = SUMS_CONFIGS[pv]
    rows_p = n_queries * (1 + k)
    emulate = dev.type != "cuda"
    x_qk = xc.to(torch.bfloat16) if qk == "bf16" else xc  # fp32 first, then bf16: as the kernel rounded it
    v_pv = None if probes is None else probes.reshape(k * n_queries, dim)
    if v_pv is not None and pv == "bf16":
        v_pv = v_pv.to(torch.bfloat16)
    window = threshold is not None
    f32 = dict(dtype=torch.float32, device=dev)
    thr = threshold.to(**f32).contiguous() if window else inv_var
    if window:
        records = (torch.zeros(n_queries, dtype=torch.int32, device=dev),
                   _empty((n_queries, cap), dtype=torch.int32, device=dev), _empty((n_queries, cap), **f32))
    else:
        records = None
    count, cidx, cs = records if window else (inv_var, inv_var, inv_var)  # never read without a window
    s = _empty((rows_p, geo.chunk), **f32)
    p = _empty((rows_p, geo.chunk), dtype=torch.bfloat16 if pv == "bf16" else torch.float32, device=dev)
    best = _empty((n_queries,), dtype=torch.int32, device=dev)
    spt = _empty((max(k, 1), n_queries), **f32)
    acc = None if max_only else _empty((slots, geo.splits, *geo.sums_grid[:2], s_cfg.block_m, s_cfg.block_n), **f32)
    for i, start in enumerate(range(0, n_data, geo.chunk)):
        c = min(geo.chunk, n_data - start)
        operand, yc = _operands(data[start:start + c], center, precision)
        m, l = _empty((n_queries,), **f32), _empty((n_queries,), **f32)
        launches = [(x_qk, s, n_queries, True, qk)]
        if k and not max_only:  # the probes' dots in the weighted sum's mode
            launches.append((v_pv, s[n_queries:], k * n_queries, False, pv))
        for a, out, rows, logits, mode in launches:
            cfg, y = DOTS_CONFIGS[mode], operand(mode, "dots")
            _dots_kernel[(triton.cdiv(rows, cfg.block_m), triton.cdiv(c, cfg.block_n))](
                a, y, norms[start:start + c], inv_var, out, rows, c, dim, y.stride(0), s.stride(0),
                LOGITS=logits, Y_TRANSPOSED=y_transposed(mode, "dots"), PRECISION=mode, EMULATE_BF16=emulate,
                BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, num_warps=cfg.num_warps,
                num_stages=cfg.num_stages)
        _softmax_kernel[geo.softmax_grid](
            s, p, m, l, best, spt, thr, count, cidx, cs, n_queries, c, s.stride(0), p.stride(0),
            0 if max_only else k, start, int(not max_only), WINDOW=window, CAP=cap if window else 1,
            BLOCK_C=SOFTMAX[0], num_warps=SOFTMAX[1])
        if not max_only:
            y_pv = operand(pv, "sums")
            _weighted_sum_kernel[geo.sums_grid](
                p, y_pv, acc[i % slots], rows_p, c, dim, geo.rows_per_split, p.stride(0), y_pv.stride(0),
                Y_TRANSPOSED=y_transposed(pv, "sums"), PRECISION=pv, EMULATE_BF16=emulate, BLOCK_M=s_cfg.block_m,
                BLOCK_D=s_cfg.block_n, BLOCK_K=s_cfg.block_k, num_warps=s_cfg.num_warps,
                num_stages=s_cfg.num_stages)
        ref = None if not k or max_only else yc.index_select(0, best.to(torch.long))
        yield ChunkPartial(start, m, l, None, ref, spt[:k], None, records), i % slots, acc


def _merge(m_run, l_run, acc_run, ms, ls, accs):
    """Exact log-sum-exp merge of a running (m, l, acc) (None at first) with chunks' ms, ls: [G, B]
    and accs: [G, B, d] (None: m and l only)."""
    if m_run is not None:
        ms, ls = torch.cat([ms, m_run[None]]), torch.cat([ls, l_run[None]])
    top = ms.max(0).values
    scale = torch.exp(ms - top)  # every m is finite: every chunk has rows
    l_all = (ls * scale).sum(0)
    if accs is None:
        return top, l_all, None
    acc_all = (accs * scale[:accs.shape[0], :, None]).sum(0)
    if acc_run is not None:
        acc_all += acc_run * scale[-1, :, None]
    return top, l_all, acc_all


def empirical_partial(xc: torch.Tensor, inv_var: torch.Tensor, data: torch.Tensor, center: torch.Tensor,
                      norms: torch.Tensor, *, precision: tuple[str, str], threshold: torch.Tensor | None = None,
                      cap: int = 256, max_only: bool = False):
    """Merged softmax partial (m [B], l [B], acc [B, d]) of every row of ``data`` for queries xc.

    xc: [B, d] float32 contiguous, centred on ``center``; inv_var: [B] = 1 / sigma^2 float32;
    data: [N, d] float32 with unit column stride (raw, centred here chunk by chunk); center: [d]
    float32; norms: [N] float32 squared norms of the centred rows; precision: one of MODES,
    (distance products, weighted-sum products). m is the largest logit of each query.
    threshold: [B] float32 or None; rows whose logit is >= it are left out of l and acc and
    returned as well: (m, l, acc, count [B] int32, index [B, cap] int32, logit [B, cap] float32),
    the first min(count, cap) slots of each query filled (in row order). max_only: (m, l, None).
    """
    n_queries, dim = xc.shape
    n_data = data.shape[0]
    geo = plan(n_queries, 0, n_data, dim, precision, multiprocessors(xc.device))
    slots = max(1, min(triton.cdiv(n_data, geo.chunk), _PENDING_BYTES // (4 * geo.splits * n_queries * dim)))
    run = (None, None, None)
    ms, ls = [], []
    for part, slot, buffer in _chunks(xc, inv_var, data, center, norms, None, precision, threshold, cap,
                                      max_only, slots):
        ms.append(part.m)
        ls.append(part.l)
        if slot == slots - 1 or part.start + geo.chunk >= n_data:  # a full group, or the last chunk
            accs = None if max_only else untile(buffer[:slot + 1].sum(1), n_queries, dim)
            run = _merge(*run, torch.stack(ms), torch.stack(ls), accs)
            ms, ls = [], []
    if threshold is not None:
        return (*run, *part.records)
    return run


def empirical_probe_chunks(xc: torch.Tensor, inv_var: torch.Tensor, data: torch.Tensor, center: torch.Tensor,
                           norms: torch.Tensor, probes: torch.Tensor, *, precision: tuple[str, str],
                           threshold: torch.Tensor | None = None, cap: int = 256):
    """D and the K probes' J v from one pass over ``data``: yields a ChunkPartial per chunk.

    Arguments as ``empirical_partial``; probes: [K, B, d] float32 contiguous (raw tangents).
    The caller merges the chunks exactly (weighted covariances, Chan et al.), in float64."""
    n_queries, dim = xc.shape
    k = probes.shape[0]
    for part, slot, buffer in _chunks(xc, inv_var, data, center, norms, probes, precision, threshold, cap,
                                      False, 1):
        total = untile(buffer[slot].sum(0), n_queries * (1 + k), dim)
        yield part._replace(acc=total[:n_queries], g=total[n_queries:].reshape(k, n_queries, dim))


def gate_entries():
    """The compile gate's entries, see ``_empirical_gate.entries``."""
    from ._empirical_gate import entries

    return entries()


def gate_targets(sms: int = 132):
    """The compile gate's target launches on an H200, see ``_empirical_gate.targets``."""
    from ._empirical_gate import targets

    return targets(sms)
