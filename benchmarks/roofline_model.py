"""Static roofline model of every kernel at its target shapes, from the compile gate's facts.

    python benchmarks/roofline_model.py [--gate GATE.json] [--json OUT.json]
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
and sums over the loops' trip counts: T_cta. Shared-memory bytes are counted at full width (no
broadcast: several lanes reading one word cost one), an upper bound on that term, tightest for
tensor-core loops and loosest for FFMA loops whose lanes share operands. The compute time is waves x CTAs per SM x T_cta
(the CTAs resident on one SM share it; the last wave's idle SMs are the wave efficiency). The HBM
time is the modelled traffic / 4.3 TB/s, where an operand tile is read from HBM once per wave
that touches it (L2 holds one wave's working set, not more) unless the whole operand fits in L2,
plus scratch the kernel round-trips (the empirical accumulator) when the resident CTAs' share
of it exceeds L2. Predicted time = max(compute, HBM). Not modelled: prologues and epilogues
outside loops, latency (a wgmma waited on at once, wait depth 0, is costed as throughput only),
launch overhead, L2 bandwidth, the host-side merges.

Outputs per kernel and shape: predicted time, the binding term, the fraction of peak
(the time the useful flops would take at the ceilings / predicted time) and of the HBM floor
(compulsory bytes / 4.3 TB/s / predicted time).

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


def iteration_seconds(loop: dict, num_warps: int) -> dict:
    """Seconds one CTA's iteration of ``loop`` (a gate loop dict) needs of each SM resource."""
    groups = num_warps / 4
    math_s = 0.0
    for opcode, count in loop["hgmma"].items():
        m, n, k = (int(v) for v in opcode.split(".")[1].split("x"))
        kind = _HGMMA_KIND.get(opcode.split(".")[-1], "tf32")
        math_s += count * 2 * m * n * k * groups / (CEILINGS[kind] / SMS)
    math_s += loop["ffma"] * 32 * 2 * num_warps / (CEILINGS["fp32"] / SMS)
    smem = (loop["shared_bytes"] * num_warps + loop["hgmma_smem_bytes"] * groups) / (SMEM_BYTES_PER_CLOCK * CLOCK)
    issue = loop["instructions"] * num_warps / (ISSUE_PER_CLOCK * CLOCK)
    return {"math": math_s, "smem": smem, "issue": issue}


def _labels(shape: str) -> dict:
    return {k: int(v) for k, v in (kv.split("=") for kv in shape.split(","))}


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def wave_reads(grid: tuple[int, int], slots: int, tile_0: float, tile_1: float, total_0: float,
               total_1: float, coords=None) -> float:
    """HBM bytes of two operands indexed by the grid's two coordinates (program_id(0) fastest):
    per wave, each distinct tile once; an operand that fits in L2 is read once in all.
    ``coords(linear id) -> (i, j)`` replaces the default (id % grid0, id // grid0)."""
    ctas = grid[0] * grid[1]
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


def workload(kernel: str, constexprs: dict, target: dict, slots: int) -> dict:
    """Trip counts and bytes of one launch (the launchers' arithmetic): {'loops': 'main' | 'tiles',
    'main_trips', 'tile_trips', 'inner_trips', 'flops': {precision: flops}, 'hbm', 'compulsory',
    'launches'}."""
    a, g = target["int_args"], tuple(target["grid"])
    family, modes = kernel.split("[")[0], kernel.split("[")[1].rstrip("]").split(",")
    c = constexprs
    if family == "gaussian_project":
        prec, eb = modes[1], 2 if modes[1] == "bf16" else 4
        b, d, r, t = a["n_rows"], a["dim"], a["rank"], a["n_levels"]
        hbm = wave_reads(g, slots, c["BLOCK_M"] * d * 4, d * c["BLOCK_N"] * eb, b * d * 4, d * r * eb) + t * b * r * 4
        return {"loops": "main", "main_trips": _cdiv(d, c["BLOCK_K"]), "flops": {prec: 2 * b * d * r},
                "hbm": hbm, "compulsory": b * d * 4 + d * r * eb + t * b * r * 4, "launches": 1}
    if family == "gaussian_reconstruct":
        prec, eb = modes[1], 2 if modes[1] == "bf16" else 4
        b, d, r, t = a["n_rows"], a["dim"], a["rank"], a["n_levels"]
        io = b * d * 4 + t * b * d * 4
        hbm = wave_reads(g, slots, c["BLOCK_M"] * r * 4, c["BLOCK_N"] * r * eb, t * b * r * 4, d * r * eb) + io
        return {"loops": "main", "main_trips": _cdiv(r, c["BLOCK_K"]), "flops": {prec: 2 * t * b * r * d},
                "hbm": hbm, "compulsory": t * b * r * 4 + d * r * eb + io, "launches": 1}
    if family == "centered_gram":
        prec, launches = modes[1], _labels(target["shape"]).get("launches", 1)
        rows, d, blk = a["n_rows"], a["dim_a"], c["BLOCK_I"]
        per_cta = min(rows, a["rows_per_split"])
        chunk = rows * d * 4
        reads = wave_reads(g, slots, per_cta * blk * 4, per_cta * blk * 4, chunk, chunk, coords=_upper)
        if chunk <= L2_BYTES:
            reads = chunk  # the chunk stays in L2: read once
        out = g[0] * g[1] * blk * blk * 4
        return {"loops": "main", "main_trips": _cdiv(per_cta, c["BLOCK_K"]),
                "flops": {prec: g[0] * blk * blk * 2 * rows}, "hbm": reads + out, "compulsory": chunk + out,
                "launches": launches}
    if family in ("empirical_partial", "nn_candidates"):
        bq, n, d, rps = a["n_queries"], a["n_data"], a["dim"], a["rows_per_split"]
        bm, bn, bk = c["BLOCK_M"], c["BLOCK_N"], c["BLOCK_K"]
        tiles = _cdiv(rps, bn)
        reads = wave_reads(g, slots, bm * d * 4, rps * d * 4, bq * d * 4, n * d * 4)
        ctas = g[0] * g[1]
        if family == "nn_candidates":
            out = g[1] * bq * bn * 8
            return {"loops": "tiles", "tile_trips": tiles, "inner_trips": _cdiv(d, bk),
                    "flops": {"ieee": 2 * bq * n * d}, "hbm": reads + out,
                    "compulsory": bq * d * 4 + n * d * 4 + out, "launches": 1}
        out = g[1] * bq * d * 4
        round_trips = ctas * tiles * bm * d * 4 * 2 + ctas * bm * d * 4  # per tile load + store, the zeroing
        in_l2 = min(ctas, slots) * bm * d * 4 <= L2_BYTES
        qk, pv = c["QK_PRECISION"], c["PV_PRECISION"]
        flops = {qk: 2 * bq * n * d}
        flops[pv] = flops.get(pv, 0) + 2 * bq * n * d
        return {"loops": "tiles", "tile_trips": tiles, "inner_trips": _cdiv(d, bk), "flops": flops,
                "hbm": reads + out + (0 if in_l2 else round_trips), "compulsory": bq * d * 4 + n * d * 4 + out,
                "launches": 1}
    raise KeyError(f"no workload model for {kernel}")


def predict(result: dict, target: dict) -> dict:
    """The model's prediction for one gate result (an sm_90 'jit' build) at one of its targets."""
    warps, per_sm = result["num_warps"], max(result["ctas_per_sm"], 1)
    slots = SMS * per_sm
    work = workload(result["kernel"], result["constexprs"], target, slots)
    terms = {"math": 0.0, "smem": 0.0, "issue": 0.0}
    if work["loops"] == "main":
        pieces = [(result["main_loop"], work["main_trips"])] if result["main_loop"] else []
    else:
        pieces = [(loop, work["tile_trips"] * work["inner_trips"]) for loop in result["inner_loops"] if loop["math"]]
        pieces += [(loop, work["tile_trips"]) for loop in result.get("outer_loops", [])]
    cta_s = 0.0
    for loop, trips in pieces:
        each = iteration_seconds(loop, warps)
        for k in terms:
            terms[k] += trips * each[k]
        cta_s += trips * max(each.values())
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
            "fraction_of_peak": ideal / predicted, "fraction_of_hbm_floor": floor / predicted,
            "wave_efficiency": target["wave_efficiency"], "ctas_per_sm": per_sm,
            "hbm_gb": work["hbm"] * work["launches"] / 1e9}


def model(results: list[dict]) -> list[dict]:
    """Predictions for every target of every sm_90 'jit' build in a gate result list."""
    rows = []
    for r in results:
        if r.get("arch") == 90 and r.get("build") == "jit" and r.get("targets") and r.get("registers", -1) > 0:
            note = {"note": "gate: " + "; ".join(r["failures"])} if r.get("failures") else {}
            rows += [dict(predict(r, t), **note) for t in r["targets"]]
    return rows


def format_table(rows: list[dict]) -> str:
    header = (f"{'kernel':<36} {'shape':<36} {'pred ms':>8} {'bound':>5} {'math':>7} {'smem':>7} {'issue':>7} "
              f"{'hbm':>7} {'of peak':>7} {'of HBM':>6} {'wave':>5}")
    lines = [header, "-" * len(header)]
    for p in rows:
        t = p["loop_terms_ms"]
        lines.append(f"{p['kernel']:<36} {p['shape']:<36} {p['predicted_ms']:>8.3f} {p['bound']:>5} "
                     f"{t['math']:>7.3f} {t['smem']:>7.3f} {t['issue']:>7.3f} {p['hbm_ms']:>7.3f} "
                     f"{p['fraction_of_peak']:>7.2f} {p['fraction_of_hbm_floor']:>6.2f} {p['wave_efficiency']:>5.2f}"
                     + (f"  ({p['note']})" if p.get("note") else ""))
    return "\n".join(lines)


#: gpu_check timing rows the model predicts: (timing name, case) -> [(kernel, shape label)].
def gpu_check_cases() -> dict:
    cases = {}
    for d in (3072, 12288):
        for r in (d, d // 8, 256):
            for p in ("ieee", "tf32", "bf16"):  # the launcher's tiles: large when min(B, r) >= 1024
                label = f"B=8192,d={d},r={r}"
                cases[(f"fastgauss per-sample {p}", f"d={d} r={r} B=8192 T=1")] = [
                    (f"gaussian_project[{'large' if r >= 1024 else 'small'},{p}]", label),
                    (f"gaussian_reconstruct[large,{p}]", label)]
    for p in ("ieee", "tf32x3", "tf32"):
        cases[(f"fastgauss centred gram {p}", "N=50000 d=3072")] = [(f"centered_gram[large,{p},sym]", "*")]
    for sigma in (0.002, 1.0):
        cases[("kernel fp32 pass (before)", f"N=50000 d=3072 B=1024 sigma={sigma}")] = [
            ("empirical_partial[ieee,ieee]", "B=1024,N=50000,d=3072")]
    cases[("fastgauss nearest_neighbors", "N=50000 d=3072 B=1024 k=2")] = [
        ("nn_candidates[ieee]", "B=1024,N=50000,d=3072")]
    return cases


def predicted_ms(rows: list[dict], name: str, case: str) -> float | None:
    """The model's time for a gpu_check timing row (sum of its kernels' launches), or None."""
    wanted = gpu_check_cases().get((name, case))
    if not wanted:
        return None
    total = 0.0
    for kernel, shape in wanted:
        hits = [p for p in rows if p["kernel"] == kernel and (shape == "*" or p["shape"] == shape)]
        if not hits:
            return None
        total += sum(p["predicted_ms"] for p in hits)
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gate", type=Path, help="a gate JSON (python -m fastgauss.kernels.check --json)")
    parser.add_argument("--json", type=Path, help="write the predictions here")
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
    rows = model(results)
    print(f"roofline model (gate facts: triton {triton_version})")
    print(format_table(rows))
    if args.json:
        args.json.write_text(json.dumps({"triton": triton_version, "predictions": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
