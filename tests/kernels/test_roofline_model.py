"""benchmarks/roofline_model.py on a synthetic set of gate facts: the per-iteration terms, the wave
and L2 arithmetic, the prediction and its lookup from gpu_check's timing rows."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import roofline_model as rm  # noqa: E402

CLOCK, SMS = 1.98e9, 132


def _loop(**kw):
    base = {"instructions": 0, "hgmma": {}, "hgmma_smem_bytes": 0, "ffma": 0, "shared_bytes": 0, "math": 1}
    return dict(base, **kw)


def test_iteration_terms():
    loop = _loop(instructions=200, hgmma={"HGMMA.64x64x16.F32.BF16": 2}, hgmma_smem_bytes=4096, shared_bytes=8704)
    t = rm.iteration_seconds(loop, num_warps=8)
    assert t["math"] == pytest.approx(2 * 2 * 64 * 64 * 16 * 2 / (790e12 / SMS))  # two warpgroups
    assert t["smem"] == pytest.approx((8704 * 8 + 4096 * 2) / (128 * CLOCK))
    assert t["issue"] == pytest.approx(200 * 8 / (4 * CLOCK))
    t = rm.iteration_seconds(_loop(ffma=256, hgmma={"HGMMA.64x8x8.F32.TF32": 1}), num_warps=4)
    assert t["math"] == pytest.approx(256 * 32 * 2 * 4 / (67e12 / SMS) + 2 * 64 * 8 * 8 / (395e12 / SMS))


def test_wave_reads():
    # 4 x 2 grid, 4 slots: each wave touches pid0 0..3 and one pid1
    assert rm.wave_reads((4, 2), 4, 10, 100, 1e9, 1e9) == 2 * (4 * 10 + 100)
    assert rm.wave_reads((4, 2), 8, 10, 100, 1e9, 1e9) == 4 * 10 + 2 * 100
    assert rm.wave_reads((4, 2), 4, 10, 100, 40, 1e9) == 40 + 2 * 100  # operand 0 fits in L2: read once
    assert [rm._upper(p) for p in range(6)] == [(0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2)]


def _result(per_sm=2):
    loop = _loop(instructions=100, hgmma={"HGMMA.64x64x16.F32.BF16": 2}, hgmma_smem_bytes=4096, shared_bytes=2048)
    target = {"shape": "B=8192,d=3072,r=3072", "grid": [64, 48], "ctas": 3072, "wave_efficiency": 0.97,
              "int_args": {"n_rows": 8192, "n_levels": 1, "dim": 3072, "rank": 3072, "stride_x": 3072,
                           "stride_u": 3072}}
    return {"kernel": "gaussian_project[large,bf16]", "arch": 90, "build": "jit", "num_warps": 8,
            "ctas_per_sm": per_sm, "registers": 100, "failures": [], "main_loop": loop, "inner_loops": [loop],
            "outer_loops": [], "constexprs": {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, "targets": [target]}


def test_prediction_from_synthetic_facts():
    r = _result()
    p = rm.predict(r, r["targets"][0])
    each = rm.iteration_seconds(r["main_loop"], 8)
    cta = 3072 // 32 * max(each.values())
    waves = -(-3072 // (SMS * 2))
    assert p["compute_ms"] == pytest.approx(waves * 2 * cta * 1e3)
    # x [8192, 3072] fp32 > L2: a 128 x 3072 tile per pid_m per wave; U [3072, 3072] bf16 is 18.9 MB
    x_reads = sum(len({q % 64 for q in range(s, min(3072, s + 264))}) for s in range(0, 3072, 264))
    hbm = x_reads * 128 * 3072 * 4 + 3072 * 3072 * 2 + 8192 * 3072 * 4
    assert p["hbm_ms"] == pytest.approx(hbm / 4.3e12 * 1e3)
    assert p["predicted_ms"] == pytest.approx(max(p["compute_ms"], p["hbm_ms"]))
    assert p["fraction_of_peak"] == pytest.approx(2 * 8192 * 3072 * 3072 / 790e12 * 1e3 / p["predicted_ms"])
    assert p["bound"] in ("math", "smem", "issue", "hbm") and 0 < p["fraction_of_peak"] <= 1
    slower = rm.predict(_result(per_sm=1), r["targets"][0])  # fewer resident CTAs: 24 waves of 1, not 12 of 2
    assert slower["compute_ms"] == pytest.approx(-(-3072 // SMS) * cta * 1e3)


def test_model_keeps_failing_builds_with_a_note_and_skips_others():
    ok, bad, odd = _result(), _result(), dict(_result(), build="odd")
    bad["failures"] = ["spills 8 bytes"]
    rows = rm.model([ok, bad, odd, dict(_result(), arch=80)])
    assert len(rows) == 2 and "note" not in rows[0] and rows[1]["note"] == "gate: spills 8 bytes"
    assert rm.format_table(rows).count("gaussian_project") == 2


def test_gpu_check_lookup_sums_the_kernels_of_a_row():
    rows = [{"kernel": "gaussian_project[large,tf32]", "shape": "B=8192,d=3072,r=3072", "predicted_ms": 1.0},
            {"kernel": "gaussian_reconstruct[large,tf32]", "shape": "B=8192,d=3072,r=3072", "predicted_ms": 0.5},
            {"kernel": "centered_gram[large,tf32,sym]", "shape": "N=50000,d=3072,rows=16384,launches=3",
             "predicted_ms": 3.0},
            {"kernel": "centered_gram[large,tf32,sym]", "shape": "N=50000,d=3072,rows=848,launches=1",
             "predicted_ms": 0.1}]
    assert rm.predicted_ms(rows, "fastgauss per-sample tf32", "d=3072 r=3072 B=8192 T=1") == pytest.approx(1.5)
    assert rm.predicted_ms(rows, "fastgauss centred gram tf32", "N=50000 d=3072") == pytest.approx(3.1)
    assert rm.predicted_ms(rows, "fastgauss per-sample bf16", "d=3072 r=3072 B=8192 T=1") is None
    assert rm.predicted_ms(rows, "torch eager fp32", "d=3072 r=3072 B=8192 T=1") is None


def test_gpu_check_report_prints_the_prediction(tmp_path, monkeypatch, capsys):
    import gpu_check_lib

    version = gpu_check_lib._module_version("triton")
    rows = [{"kernel": "nn_candidates[ieee]", "shape": "B=1024,N=50000,d=3072", "predicted_ms": 2.5}]
    (tmp_path / f"roofline-triton{version}.json").write_text(json.dumps({"predictions": rows}))
    monkeypatch.setattr(gpu_check_lib, "PREDICTIONS", tmp_path)
    gpu_check_lib._predictions.cache_clear()
    try:
        report = gpu_check_lib.Report(meta={})
        row = report.time("fastgauss nearest_neighbors", "N=50000 d=3072 B=1024 k=2", 3.0)
        other = report.time("torch.cdist + topk", "N=50000 d=3072 B=1024 k=2", 4.0)
    finally:
        gpu_check_lib._predictions.cache_clear()
    assert row.predicted_ms == 2.5 and other.predicted_ms is None
    assert "(predicted 2.500 ms)" in capsys.readouterr().out
