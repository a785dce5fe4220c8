"""Static roofline model of every kernel at its target shapes, from the compile gate's facts.

    python benchmarks/roofline_model.py [--gate GATE.json] [--json OUT.json] [--full-width]
    python benchmarks/roofline_model.py --json benchmarks/results/roofline-triton$(python -c \
        "import triton; print(triton.__version__)").json      (the file gpu_check.py reads)

Without ``--gate`` it runs the gate's sm_90 builds (``fastgauss.kernels.check.run_gate``, a minute
on CPU); with it, it reads the JSON that ``python -m fastgauss.kernels.check --json`` wrote.

Inputs, all facts: per sm_90 "jit" build the SASS of its loops (``kernels/_sass.py``: per
iteration and warp the HGMMA shapes and flops, FFMA count, shared-memory bytes, instructions),
registers and shared memory -> CTAs per SM (``kernels/_occupancy.py``), the launch grid and int
arguments of each target (``gate_targets()``), and the launchers' arithmetic written out below
(loop trip counts, operand sizes).

Per loop iteration of one CTA the model takes the largest of
  math    sum over HGMMA of 2 M N K x warpgroups / (tensor-core ceiling of its input type / 132),
          FFMA x 32 lanes x 2 x warps / (fp32 ceiling / 132)
  smem    (LDS/STS/LDSM/LDGSTS bytes x warps + HGMMA shared operands x warpgroups) / (128 B x clock)
  issue   instructions x warps / (4 schedulers x clock)
and sums over the loops' trip counts: T_cta. Shared memory serves a warp's request in wavefronts of
128 B (32 banks of 4-byte words; lanes reading one word share it, lanes reading different words of
one bank wait for each other). In an FFMA main loop (``tt.dot`` on the fp32 FMA path) the gate
simulates the dot operands' loads from the TTGIR (``kernels/_smem.py``, checked against the SASS's
LDS: ``smem_consistent``), so there the smem term is
  (loop shared bytes - the operands' full-width bytes + their wavefronts x 128) x warps / (128 B x clock):
a broadcast operand (every lane the same rows) costs 1 wavefront an LDS.128, not 4, and a
bank-conflicted one up to 32. Everything else (tensor-core loops, LDGSTS and STS, an FFMA loop's
other LDS, an FFMA loop whose simulation disagrees with the SASS, noted on its row) is counted at
full width, width x 32 lanes, which is neither an upper nor a lower bound (a broadcast costs less, a
conflict more). ``--full-width`` counts the FFMA operands so too (the model before the simulation);
the table's 'smem fw' column is that term. The compute time is waves x CTAs per SM x T_cta
(the CTAs resident on one SM share it; the last wave's idle SMs are the wave efficiency). The HBM
time is the modelled traffic / 4.3 TB/s, where an operand tile is read from HBM once per wave
that touches it (L2 holds one wave's working set, not more) unless the whole operand fits in L2,
plus what each kernel writes. Tile coordinates follow each launcher: the Gaussian kernels' 1-D
grouped order (``_common.grouped_tile``, GROUP_M row blocks across every column block; the
'before' builds with GROUP_M = 2^16, rows fastest), the moments' upper tiles per row split (A and
B are the same rows: a (column block, split) read once per wave), the empirical weighted sum's
(query block, split) and (feature block, split) tiles. Predicted time = max(compute, HBM).

Per family (``workload``): Gaussian projection (x, pre-centred in the operand dtype at the large
tensor-core tiles, and U^T; writes C, bf16 in bf16 mode) and reconstruction (C and U; reads x,
writes D; x not read by the READ_X False build, lam_rest = 0); moments (a launch's rows, its split
scratch), times the launches of the label ('(2 launches)'), each costed as the gate's first;
neighbours (queries, rows, keys); the empirical denoiser per chunk: distances S = X Y'^T (reads
both, writes S fp32), softmax (a program per query: its two passes over S's row, the second from HBM
unless the resident rows fit L2, writes P; loops inside an outer loop run once per probe) and
weighted sum (P and Y' per split, each split's accumulator tile written once), each times the call's
chunks (cdiv(N, chunk): the last chunk, a few rows short, costed as full). ``former_plans`` adds the
launch plans before issue 14 that run the same builds (neighbours' cdiv(2 SMs, query blocks) splits;
moments' 13 launches of one split), and ``torch_passes`` the launchers' HBM-bound torch passes
(bytes / 4.3 TB/s): the Gaussian's x - mu, the empirical chunks' centred copies and the merge of
their accumulators, the moments tf32 pre-pass. A gpu_check timing row's prediction
(``roofline_calls.py``: ``predicted_ms``, ``calls``) is the sum of its kernels and passes: the whole
empirical denoiser call at B = 1024, N = 50 000, d = 3072 is the sum over its three kernels and its
chunks, plus the copies and the merge. Not modelled: prologues and epilogues outside loops, latency
(a wgmma waited on at once, wait depth 0, is costed as throughput only), launch overhead, L2
bandwidth, the moments' float64 merges.

Outputs per kernel and shape: predicted time, the binding term, the fraction of peak
(the time the useful flops would take at the ceilings / predicted time) and of the HBM floor
(compulsory bytes / 4.3 TB/s / predicted time); per gpu_check timing row ("calls"): the summed time,
fraction of peak and of the call's HBM floor (e.g. the Gaussian: read x and U, write D).

Constants (``CEILINGS``): bf16 790, tf32 395, fp32 FMA 67 TFLOP/s and HBM 4.3 TB/s on an H200
(the measured bf16 GEMM and copy rates of the project's device notes and the datasheet's FP32
figure, as in issue 14); tf32x3 = three tf32 products, so its ceiling is 395 / 3. 132 SMs
(H200 SXM), 1.98 GHz boost clock, shared memory 128 B/clock/SM and 4 warp schedulers per SM
(one instruction per clock each): NVIDIA H100 Tensor Core GPU Architecture whitepaper (GH100,
the H200's die). L2 50 MB (same source).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

CEILINGS = {"bf16": 790e12, "tf32": 395e12, "fp32": 67e12, "hbm": 4.3e12}
SMS = 132
CLOCK = 1.98e9
SMEM_BYTES_PER_CLOCK = 128
ISSUE_PER_CLOCK = 4
L2_BYTES = 50e6
_HGMMA_KIND = {"BF16": "bf16", "F16": "bf16", "TF32": "tf32"}


def peak(precision: str) -> float:
    """FLOP/s ceiling of a product mode ('ieee' -> fp32 FMA; tf32x3 = three tf32 products)."""
    return {"ieee": CEILINGS["fp32"], "tf32": CEILINGS["tf32"], "tf32x3": CEILINGS["tf32"] / 3,
            "bf16": CEILINGS["bf16"]}[precision]


def shared_bytes(loop: dict, operands: dict | None = None) -> float:
    """Per-warp shared-memory bytes of one iteration, FFMA dot operands (the gate's
    ``smem_wavefronts``) counted as their wavefronts x 128 B instead of their full-width bytes."""
    operands = operands or {}
    return (loop["shared_bytes"] - sum(o["bytes"] for o in operands.values())
            + sum(o["wavefronts"] for o in operands.values()) * SMEM_BYTES_PER_CLOCK)


def iteration_seconds(loop: dict, num_warps: int, operands: dict | None = None) -> dict:
    """Seconds one CTA's iteration of ``loop`` (a gate loop dict) needs of each SM resource;
    ``operands``: the FFMA dot operands' wavefronts of this loop (``shared_bytes``)."""
    groups = num_warps / 4
    math_s = 0.0
    for opcode, count in loop["hgmma"].items():
        m, n, k = (int(v) for v in opcode.split(".")[1].split("x"))
        kind = _HGMMA_KIND.get(opcode.split(".")[-1], "tf32")
        math_s += count * 2 * m * n * k * groups / (CEILINGS[kind] / SMS)
    math_s += loop["ffma"] * 32 * 2 * num_warps / (CEILINGS["fp32"] / SMS)
    smem = ((shared_bytes(loop, operands) * num_warps + loop["hgmma_smem_bytes"] * groups)
            / (SMEM_BYTES_PER_CLOCK * CLOCK))
    issue = loop["instructions"] * num_warps / (ISSUE_PER_CLOCK * CLOCK)
    return {"math": math_s, "smem": smem, "issue": issue}


def _labels(shape: str) -> dict:
    """The int fields of a gate target's label ('B=1024,N=50000,d=3072,chunk=12544,splits=4';
    'N=50000,d=3072 (2 launches)' gives launches=2); fields that are not ints are left out."""
    out = {}
    match = re.search(r"\((\d+) launch(?:es)?\b", shape)
    if match:
        out["launches"] = int(match.group(1))
    for kv in re.sub(r"\s*\(.*\)", "", shape).split(","):
        key, _, value = kv.partition("=")
        if value.strip().isdigit():
            out[key.strip()] = int(value)
    return out


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def wave_reads(grid: tuple, slots: int, tile_0: float, tile_1: float, total_0: float,
               total_1: float, coords=None) -> float:
    """HBM bytes of two operands indexed by the grid's coordinates (program_id(0) fastest):
    per wave, each distinct tile once; an operand that fits in L2 is read once in all.
    ``coords(linear id) -> (i, j)`` (any hashable i, j) replaces the default (id % grid0, id // grid0)."""
    ctas = math.prod(grid)
    coords = coords or (lambda p: (p % grid[0], p // grid[0]))
    total = 0.0
    for start in range(0, ctas, max(slots, 1)):
        seen = [coords(p) for p in range(start, min(ctas, start + slots))]
        total += (0 if total_0 <= L2_BYTES else len({i for i, _ in seen}) * tile_0)
        total += (0 if total_1 <= L2_BYTES else len({j for _, j in seen}) * tile_1)
    return total + (total_0 if total_0 <= L2_BYTES else 0) + (total_1 if total_1 <= L2_BYTES else 0)


def _upper(p: int) -> tuple[int, int]:
    tj = int((math.sqrt(8 * p + 1) - 1) / 2)
    while tj * (tj + 1) // 2 > p:
        tj -= 1
    while (tj + 1) * (tj + 2) // 2 <= p:
        tj += 1
    return p - tj * (tj + 1) // 2, tj


def grouped(rows: int, cols: int, block_m: int, block_n: int, group_m: int):
    """coords() of ``_common.grouped_tile``: group_m row blocks (fewer in the last group) take every
    column block in turn, row block fastest within the group."""
    blocks_m, blocks_n = _cdiv(rows, block_m), _cdiv(cols, block_n)
    per_group = group_m * blocks_n

    def coords(p: int) -> tuple[int, int]:
        first = (p // per_group) * group_m
        size = min(blocks_m - first, group_m)
        return first + (p % per_group) % size, (p % per_group) // size

    return coords


def _eb(mode: str) -> int:
    return 2 if mode == "bf16" else 4


def workload(kernel: str, constexprs: dict, target: dict, slots: int) -> dict:
    """Trip counts and bytes of one launch (the launchers' arithmetic): {'loops': 'main' | 'tiles' |
    'passes', 'main_trips', 'tile_trips', 'inner_trips', 'pass_trips', 'probes', 'flops': {precision:
    flops}, 'hbm', 'compulsory', 'launches'}; 'launches' counts the launches (moments) or chunks
    (empirical) of one call, each costed as the gate's target (the first)."""
    a, g = target["int_args"], tuple(target["grid"])
    family, modes = kernel.split("[")[0], kernel.split("[")[1].rstrip("]").split(",")
    c, labels = constexprs, _labels(target["shape"])
    if family in ("gaussian_project", "gaussian_reconstruct"):
        prec = modes[1]
        eb = _eb(prec)  # U, U^T and the shrunk coefficients C are bf16 in bf16 mode
        b, d, r, t = a["n_rows"], a["dim"], a["rank"], a["n_levels"]
        bm, bn, gm = c["BLOCK_M"], c["BLOCK_N"], c["GROUP_M"]
        if family == "gaussian_project":
            ebx = eb if c.get("CENTRED") else 4  # the pre-centred x is in the operand dtype
            coords = grouped(b, r, bm, bn, gm)
            hbm = wave_reads(g, slots, bm * d * ebx, bn * d * eb, b * d * ebx, d * r * eb, coords) + t * b * r * eb
            return {"loops": "main", "main_trips": _cdiv(d, c["BLOCK_K"]), "flops": {prec: 2 * b * d * r},
                    "hbm": hbm, "compulsory": b * d * ebx + d * r * eb + t * b * r * eb, "launches": 1}
        io = (0 if c.get("READ_X") is False else b * d * 4) + t * b * d * 4  # x read in the epilogue, out written
        coords = grouped(t * b, d, bm, bn, gm)
        hbm = wave_reads(g, slots, bm * r * eb, bn * r * eb, t * b * r * eb, d * r * eb, coords) + io
        return {"loops": "main", "main_trips": _cdiv(r, c["BLOCK_K"]), "flops": {prec: 2 * t * b * r * d},
                "hbm": hbm, "compulsory": t * b * r * eb + d * r * eb + io, "launches": 1}
    if family == "centered_gram":
        prec, launches = modes[1], labels.get("launches", 1)
        rows, d, blk, rps = a["n_rows"], a["dim_a"], c["BLOCK_I"], a["rows_per_split"]
        tiles, splits = g[0], g[1]
        per_cta = min(rows, rps)
        chunk = rows * d * 4  # a launch's rows (fp32; the tf32 path's centred transposed copy)
        if chunk <= L2_BYTES:
            reads = chunk  # the launch's rows stay in L2: read once
        else:  # per wave, each distinct (column block, split) once: A and B are the same rows
            reads = 0.0
            for start in range(0, tiles * splits, max(slots, 1)):
                seen = set()
                for p in range(start, min(tiles * splits, start + slots)):
                    ti, tj = _upper(p % tiles)
                    seen |= {(ti, p // tiles), (tj, p // tiles)}
                reads += len(seen) * per_cta * blk * 4
        out = tiles * splits * blk * blk * 4
        return {"loops": "main", "main_trips": _cdiv(per_cta, c["BLOCK_K"]),
                "flops": {prec: tiles * blk * blk * 2 * rows}, "hbm": reads + out, "compulsory": chunk + out,
                "launches": launches}
    if family == "nn_candidates":
        bq, n, d, rps = a["n_queries"], a["n_data"], a["dim"], a["rows_per_split"]
        bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
        reads = wave_reads(g, slots, bm * d * 4, rps * d * 4, bq * d * 4, n * d * 4)
        out = g[1] * bq * bn * 8
        return {"loops": "tiles", "tile_trips": _cdiv(rps, bn), "inner_trips": _cdiv(d, bk),
                "flops": {modes[0]: 2 * bq * n * d}, "hbm": reads + out,
                "compulsory": bq * d * 4 + n * d * 4 + out, "launches": 1}
    chunks = _cdiv(labels["N"], labels["chunk"]) if "N" in labels and "chunk" in labels else 1
    if family == "empirical_dots":  # S = A Y'^T per chunk: A [M, d], Y' [C, d], S [M, C] fp32
        m, cols, d = a["n_rows_a"], a["n_rows_y"], a["dim"]
        prec, eb = modes[0], _eb(modes[0])
        bm, bn = c["BLOCK_M"], c["BLOCK_N"]
        reads = wave_reads(g, slots, bm * d * eb, bn * d * eb, m * d * eb, cols * d * eb)
        out = m * cols * 4
        return {"loops": "main", "main_trips": _cdiv(d, c["BLOCK_K"]), "flops": {prec: 2 * m * cols * d},
                "hbm": reads + out, "compulsory": m * d * eb + cols * d * eb + out, "launches": chunks}
    if family == "empirical_softmax":  # a program per query: two passes over S's row, then the probes'
        b, cols, k = a["n_queries"], a["n_cols"], a["n_probes"]
        ebp = 2 if "p=bf16" in modes else 4
        row = cols * 4
        s_reads = 1 if min(b, slots) * row <= L2_BYTES else 2  # the second pass finds the rows in L2?
        hbm = b * row * s_reads + b * cols * ebp + k * b * (2 * row + cols * ebp)
        return {"loops": "passes", "pass_trips": _cdiv(cols, c["BLOCK_C"]), "probes": k, "flops": {},
                "hbm": hbm, "compulsory": b * row + b * cols * ebp + k * b * (row + cols * ebp),
                "launches": chunks}
    if family == "empirical_sums":  # acc = P Y' per chunk and row split: P [M, C], Y' [C, d] (or [d, C])
        m, cols, d, rps = a["n_rows_p"], a["n_cols"], a["dim"], a["rows_per_split"]
        prec, eb = modes[0], _eb(modes[0])
        bm, bd = c["BLOCK_M"], c["BLOCK_D"]
        gm, gd = g[0], g[1]
        coords = lambda p: ((p % gm, p // (gm * gd)), ((p // gm) % gd, p // (gm * gd)))  # noqa: E731
        reads = wave_reads(g, slots, bm * rps * eb, bd * rps * eb, m * cols * eb, cols * d * eb, coords)
        out = math.prod(g) * bm * bd * 4  # each split's accumulator tile, written once
        return {"loops": "main", "main_trips": _cdiv(min(rps, cols), c["BLOCK_K"]), "flops": {prec: 2 * m * cols * d},
                "hbm": reads + out, "compulsory": m * cols * eb + cols * d * eb + out, "launches": chunks}
    raise KeyError(f"no workload model for {kernel}")


def _inside(loop: dict, outer: dict) -> bool:
    return outer["start"] <= loop["start"] and loop["end"] <= outer["end"]


def wavefront_operands(result: dict, full_width: bool = False) -> dict:
    """The FFMA dot operands' wavefronts of a gate result's main loop, {} where they are not used
    (a tensor-core loop, a simulation the SASS disagrees with, or ``full_width``)."""
    if full_width or not result.get("smem_consistent"):
        return {}
    return result.get("smem_wavefronts") or {}


def predict(result: dict, target: dict, full_width: bool = False) -> dict:
    """The model's prediction for one gate result (an sm_90 'jit' build) at one of its targets
    (``full_width``: FFMA operands at full width, as before the wavefront simulation)."""
    warps, per_sm = result["num_warps"], max(result["ctas_per_sm"], 1)
    slots = SMS * per_sm
    work = workload(result["kernel"], result["constexprs"], target, slots)
    terms = {"math": 0.0, "smem": 0.0, "issue": 0.0}
    outer = result.get("outer_loops", [])
    if work["loops"] == "main":
        pieces = [(result["main_loop"], work["main_trips"])] if result["main_loop"] else []
    elif work["loops"] == "passes":  # loops inside an outer loop run once per probe, the others once
        pieces = [(loop, work["pass_trips"] * (work["probes"] if any(_inside(loop, o) for o in outer) else 1))
                  for loop in result["inner_loops"]]
        pieces += [(loop, work["probes"]) for loop in outer]
    else:
        pieces = [(loop, work["tile_trips"] * work["inner_trips"]) for loop in result["inner_loops"] if loop["math"]]
        pieces += [(loop, work["tile_trips"]) for loop in outer]
    cta_s, smem_fw, operands, main = 0.0, 0.0, wavefront_operands(result, full_width), result["main_loop"]
    for loop, trips in pieces:
        is_main = main is not None and (loop is main or ("start" in loop and loop.get("start") == main.get("start")
                                                          and loop.get("end") == main.get("end")))
        each = iteration_seconds(loop, warps, operands if is_main else None)
        for k in terms:
            terms[k] += trips * each[k]
        cta_s += trips * max(each.values())
        smem_fw += trips * iteration_seconds(loop, warps)["smem"]
    waves = math.ceil(target["ctas"] / slots)
    compute_s = waves * per_sm * cta_s * work["launches"]
    hbm_s = work["hbm"] * work["launches"] / CEILINGS["hbm"]
    predicted = max(compute_s, hbm_s, 1e-12)
    bound = "hbm" if hbm_s > compute_s else max(terms, key=terms.get)
    ideal = sum(f / peak(p) for p, f in work["flops"].items()) * work["launches"]
    floor = work["compulsory"] * work["launches"] / CEILINGS["hbm"]
    return {"kernel": result["kernel"], "shape": target["shape"], "predicted_ms": predicted * 1e3,
            "compute_ms": compute_s * 1e3, "hbm_ms": hbm_s * 1e3, "bound": bound,
            "loop_terms_ms": {k: v * waves * per_sm * work["launches"] * 1e3 for k, v in terms.items()},
            "smem_full_width_ms": smem_fw * waves * per_sm * work["launches"] * 1e3,
            "fraction_of_peak": ideal / predicted, "fraction_of_hbm_floor": floor / predicted,
            "ideal_ms": ideal * 1e3, "floor_ms": floor * 1e3, "launches": work["launches"],
            "wave_efficiency": target["wave_efficiency"], "ctas_per_sm": per_sm,
            "hbm_gb": work["hbm"] * work["launches"] / 1e9}


def _target(shape: str, grid: tuple, int_args: dict, per_sm: int) -> dict:
    ctas, slots = math.prod(grid), SMS * per_sm
    return {"shape": shape, "grid": list(grid), "ctas": ctas, "int_args": int_args,
            "wave_efficiency": round((ctas / slots) / math.ceil(ctas / slots), 4)}


def former_plans(result: dict) -> list[dict]:
    """Targets of the launch plans before issue 14 that run the same build (gpu_check's A/B rows):
    neighbours with cdiv(2 SMs, query blocks) splits; moments with one split per launch under the
    row cap (ieee 4096, tf32x3 4096 rows: 13 launches of the upper tiles)."""
    kernel, per_sm = result["kernel"], max(result["ctas_per_sm"], 1)
    if kernel.startswith("nn_candidates") and result["targets"]:
        t = result["targets"][0]
        a = dict(t["int_args"])
        blocks = t["grid"][0]
        splits = max(1, min(_cdiv(2 * SMS, blocks), _cdiv(a["n_data"], result["constexprs"]["BLOCK_N"])))
        a["rows_per_split"] = _cdiv(a["n_data"], splits)
        grid = (blocks, _cdiv(a["n_data"], a["rows_per_split"]))
        return [_target(t["shape"] + ",cdiv splits", grid, a, per_sm)]
    cap = {"ieee": 4096, "tf32x3": 4096}
    if kernel.startswith("centered_gram") and result["targets"] and kernel.split(",")[1] in cap:
        t = result["targets"][0]
        labels = _labels(t["shape"])
        rows = cap[kernel.split(",")[1]]
        a = dict(t["int_args"], n_rows=rows, rows_per_split=rows)
        full, last = divmod(labels["N"], rows)
        shape = f"N={labels['N']},d={labels['d']}"
        out = [_target(f"{shape} ({full} launches, 1 split, before)", (t["grid"][0], 1), a, per_sm)]
        if last:
            a_last = dict(a, n_rows=last, rows_per_split=last)
            out.append(_target(f"{shape} (1 launch, 1 split, before, {last} rows)", (t["grid"][0], 1), a_last, per_sm))
        return out
    return []


def torch_passes(results: list[dict]) -> list[dict]:
    """HBM-bound torch passes of the launchers (bytes / 4.3 TB/s), rows like the kernels' so the
    calls can sum them: the Gaussian's pre-centred x (read fp32 x, write x - mu in the operand
    dtype), the empirical chunks' centred copies (12 bytes a data element in fp32 modes, 6 in bf16)
    and the merge of the chunks' accumulators (each split's [B, d] fp32 read once), the moments tf32
    pre-pass (read the rows, write the centred transpose: 8 bytes an element)."""
    rows = []

    def row(kernel, shape, nbytes):
        ms = nbytes / CEILINGS["hbm"] * 1e3
        rows.append({"kernel": kernel, "shape": shape, "predicted_ms": ms, "compute_ms": 0.0, "hbm_ms": ms,
                     "bound": "hbm", "loop_terms_ms": {"math": 0.0, "smem": 0.0, "issue": 0.0},
                     "smem_full_width_ms": 0.0,
                     "fraction_of_peak": 0.0, "fraction_of_hbm_floor": 1.0, "ideal_ms": 0.0, "floor_ms": ms,
                     "launches": 1, "wave_efficiency": 1.0, "ctas_per_sm": 0, "hbm_gb": nbytes / 1e9})

    for r in _builds(results):
        kernel, modes = r["kernel"], r["kernel"].split("[")[1].rstrip("]").split(",")
        for t in r["targets"]:
            a, labels = t["int_args"], _labels(t["shape"])
            if kernel.startswith("gaussian_project") and r["constexprs"].get("CENTRED"):
                row(f"torch:centre x[{modes[1]}]", t["shape"], a["n_rows"] * a["dim"] * (4 + _eb(modes[1])))
            if kernel.startswith("empirical_sums"):
                n, d, b, chunk = labels["N"], labels["d"], labels["B"], labels["chunk"]
                row(f"torch:centre chunks[{modes[0]}]", t["shape"], n * d * (6 if modes[0] == "bf16" else 12))
                row(f"torch:merge chunks[{modes[0]}]", t["shape"], _cdiv(n, chunk) * t["grid"][2] * b * d * 4)
            if kernel.startswith("centered_gram") and modes[1] == "tf32":
                row("torch:centre and transpose[tf32]", t["shape"], labels["N"] * labels["d"] * 8)
    return rows


def _builds(results: list[dict]):
    return [r for r in results
            if r.get("arch") == 90 and r.get("build") == "jit" and r.get("targets") and r.get("registers", -1) > 0]


def _note(r: dict) -> dict:
    notes = ["gate: " + "; ".join(r["failures"])] if r.get("failures") else []
    if r.get("smem_consistent") is False:
        notes.append("smem at full width: " + (r.get("smem_note") or "no simulation"))
    return {"note": "; ".join(notes)} if notes else {}


def model(results: list[dict], full_width: bool = False) -> list[dict]:
    """Predictions for every target of every sm_90 'jit' build in a gate result list, the former
    launch plans of the same builds (``former_plans``) and the launchers' torch passes
    (``full_width``: every shared-memory access at full width, see ``predict``)."""
    rows = []
    for r in _builds(results):
        rows += [dict(predict(r, t, full_width), **_note(r)) for t in r["targets"] + former_plans(r)]
    return rows + torch_passes(results)


def format_table(rows: list[dict]) -> str:
    header = (f"{'kernel':<36} {'shape':<36} {'pred ms':>8} {'bound':>5} {'math':>7} {'smem':>7} {'smem fw':>7} "
              f"{'issue':>7} {'hbm':>7} {'of peak':>7} {'of HBM':>6} {'wave':>5}")
    lines = [header, "-" * len(header)]
    for p in rows:
        t = p["loop_terms_ms"]
        lines.append(f"{p['kernel']:<36} {p['shape']:<36} {p['predicted_ms']:>8.3f} {p['bound']:>5} "
                     f"{t['math']:>7.3f} {t['smem']:>7.3f} {p.get('smem_full_width_ms', t['smem']):>7.3f} "
                     f"{t['issue']:>7.3f} {p['hbm_ms']:>7.3f} "
                     f"{p['fraction_of_peak']:>7.2f} {p['fraction_of_hbm_floor']:>6.2f} {p['wave_efficiency']:>5.2f}"
                     + (f"  ({p['note']})" if p.get("note") else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gate", type=Path, help="a gate JSON (python -m fastgauss.kernels.check --json)")
    parser.add_argument("--json", type=Path, help="write the predictions here")
    parser.add_argument("--full-width", action="store_true",
                        help="count FFMA dot operands' shared memory at full width (no broadcast, no bank conflicts)")
    args = parser.parse_args(argv)
    if args.gate:
        results = json.loads(args.gate.read_text())
        triton_version = "from " + str(args.gate)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import triton

        from fastgauss.kernels import check

        results = [r.to_dict() for r in check.run_gate(archs=(90,))]
        triton_version = triton.__version__
    from roofline_calls import calls, format_calls

    rows = model(results, full_width=args.full_width)
    width = ", every shared access at full width" if args.full_width else ""
    print(f"roofline model (gate facts: triton {triton_version}{width})")
    print(format_table(rows))
    summary = calls(rows)
    print()
    print(format_calls(summary))
    if args.json:
        args.json.write_text(json.dumps({"triton": triton_version, "predictions": rows, "calls": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
