"""benchmarks/roofline_model.py on a synthetic set of gate facts: the per-iteration terms, the wave
and L2 arithmetic, the prediction and its lookup from gpu_check's timing rows."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import roofline_calls as rc  # noqa: E402
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
    target = {"shape": "B=8192,d=3072,r=3072", "grid": [3072], "ctas": 3072, "wave_efficiency": 0.97,
              "int_args": {"n_rows": 8192, "n_levels": 1, "dim": 3072, "rank": 3072, "stride_x": 3072,
                           "stride_u": 3072}}
    return {"kernel": "gaussian_project[large,bf16]", "arch": 90, "build": "jit", "num_warps": 8,
            "ctas_per_sm": per_sm, "registers": 100, "failures": [], "main_loop": loop, "inner_loops": [loop],
            "outer_loops": [], "constexprs": {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 1 << 16}, "targets": [target]}


def test_prediction_from_synthetic_facts():
    r = _result()
    p = rm.predict(r, r["targets"][0])
    each = rm.iteration_seconds(r["main_loop"], 8)
    cta = 3072 // 32 * max(each.values())
    waves = -(-3072 // (SMS * 2))
    assert p["compute_ms"] == pytest.approx(waves * 2 * cta * 1e3)
    # rows fastest (GROUP_M 2^16): x [8192, 3072] fp32 > L2: a 128 x 3072 tile per pid_m per wave;
    # U [3072, 3072] bf16 is 18.9 MB; C written in bf16
    x_reads = sum(len({q % 64 for q in range(s, min(3072, s + 264))}) for s in range(0, 3072, 264))
    hbm = x_reads * 128 * 3072 * 4 + 3072 * 3072 * 2 + 8192 * 3072 * 2
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
            {"kernel": "gaussian_reconstruct[large,tf32,lam_rest=0]", "shape": "B=8192,d=3072,r=3072",
             "predicted_ms": 0.375},
            {"kernel": "torch:centre x[tf32]", "shape": "B=8192,d=3072,r=3072", "predicted_ms": 0.25},
            {"kernel": "centered_gram[large,tf32,sym]", "shape": "N=50000,d=3072 (1 launches)", "predicted_ms": 3.0},
            {"kernel": "torch:centre and transpose[tf32]", "shape": "N=50000,d=3072 (1 launches)",
             "predicted_ms": 0.1},
            {"kernel": "centered_gram[large,ieee,sym]", "shape": "N=50000,d=3072 (2 launches)", "predicted_ms": 4.0},
            {"kernel": "centered_gram[large,ieee,sym]", "shape": "N=50000,d=3072 (12 launches, 1 split, before)",
             "predicted_ms": 6.0},
            {"kernel": "centered_gram[large,ieee,sym]",
             "shape": "N=50000,d=3072 (1 launch, 1 split, before, 848 rows)", "predicted_ms": 0.5}]
    # the module (lam_rest = 0 by default) skips the reconstruction's read of x; the A/B row reads it
    assert rc.predicted_ms(rows, "fastgauss per-sample tf32", "d=3072 r=3072 B=8192 T=1") == pytest.approx(1.625)
    assert rc.predicted_ms(rows, "gaussian kernels tf32 tuned (128x128x32, GROUP_M=8)",
                           "d=3072 r=3072 B=8192 T=1") == pytest.approx(1.75)
    assert rc.predicted_ms(rows, "gaussian kernels tf32 tuned, x read once (lam_rest = 0)",
                           "d=3072 r=3072 B=8192 T=1") is None  # timed at r = 256 only
    assert rc.predicted_ms(rows, "fastgauss centred gram tf32", "N=50000 d=3072") == pytest.approx(3.1)
    assert rc.predicted_ms(rows, "fastgauss centred gram ieee", "N=50000 d=3072") == pytest.approx(4.0)
    assert rc.predicted_ms(rows, "centred gram ieee: 13 launches x 300 programs (before)",
                           "N=50000 d=3072") == pytest.approx(6.5)
    assert rc.predicted_ms(rows, "fastgauss per-sample bf16", "d=3072 r=3072 B=8192 T=1") is None
    assert rc.predicted_ms(rows, "torch eager fp32", "d=3072 r=3072 B=8192 T=1") is None
    calls = {(c["name"], c["case"]): c for c in rc.calls(rows)}
    c = calls[("fastgauss centred gram ieee", "N=50000 d=3072")]
    assert c["predicted_ms"] == pytest.approx(4.0)
    assert c["fraction_of_hbm_floor"] == pytest.approx(50_000 * 3072 * 4 / 4.3e12 * 1e3 / 4.0)


def test_labels_and_grouped_order():
    assert rm._labels("N=50000,d=3072 (2 launches)") == {"N": 50000, "d": 3072, "launches": 2}
    assert rm._labels("N=50000,d=3072 (1 launch, 1 split, before, 848 rows)")["launches"] == 1
    assert rm._labels("B=1024,N=50000,d=3072,K=1,chunk=7168,splits=1") == {
        "B": 1024, "N": 50000, "d": 3072, "K": 1, "chunk": 7168, "splits": 1}
    assert rm._labels("B=8192,d=3072,r=3072,before") == {"B": 8192, "d": 3072, "r": 3072}
    # 3 row blocks x 2 column blocks, groups of 2 row blocks: (0,0) (1,0) (0,1) (1,1), then row 2
    coords = rm.grouped(3, 2, 1, 1, 2)
    assert [coords(p) for p in range(6)] == [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0), (2, 1)]
    rows_fastest = rm.grouped(3, 2, 1, 1, 1 << 16)
    assert [rows_fastest(p) for p in range(6)] == [(p % 3, p // 3) for p in range(6)]


def _softmax_result():
    loop = lambda start, end: _loop(instructions=80, start=start, end=end, math=0)  # noqa: E731
    target = {"shape": "B=1024,N=50000,d=3072,K=1,chunk=7168,splits=1", "grid": [1024], "ctas": 1024,
              "wave_efficiency": 0.97, "int_args": {"n_queries": 1024, "n_cols": 7168, "stride_s": 7168,
                                                    "stride_p": 7168, "n_probes": 1, "first_row": 0, "store_p": 1}}
    return {"kernel": "empirical_softmax[p=fp32,window]", "arch": 90, "build": "jit", "num_warps": 4,
            "ctas_per_sm": 4, "registers": 100, "failures": [], "main_loop": loop(300, 400),
            "inner_loops": [loop(0, 100), loop(100, 200), loop(300, 400)],
            "outer_loops": [dict(loop(250, 450), instructions=20)], "constexprs": {"BLOCK_C": 1024, "WINDOW": True},
            "targets": [target]}


def test_softmax_passes_and_chunks():
    r = _softmax_result()
    p = rm.predict(r, r["targets"][0])
    trips = 7  # cdiv(7168, 1024) a pass; the probe's pass once per probe, its outer loop once
    per_iteration = 80 * 4 / (4 * CLOCK)
    chunks = -(-50_000 // 7168)
    assert p["launches"] == chunks
    assert p["loop_terms_ms"]["issue"] == pytest.approx(
        (3 * trips * per_iteration + 20 * 4 / (4 * CLOCK)) * 2 * 4 * chunks * 1e3)  # 1024 CTAs: 2 waves of 528
    row = 7168 * 4  # the resident rows (528 x 28 KB) fit L2: S read once; the probe reads s and t
    assert p["hbm_gb"] == pytest.approx(chunks * (1024 * row + 1024 * 7168 * 4 + 1024 * (2 * row + 7168 * 4)) / 1e9)
    assert p["fraction_of_peak"] == 0


def test_former_plans_reuse_the_build():
    loop = _loop(instructions=100, ffma=256)
    target = {"shape": "N=50000,d=3072 (2 launches)", "grid": [300, 7], "ctas": 2100, "wave_efficiency": 0.99,
              "int_args": {"n_rows": 25088, "rows_per_split": 3584, "dim_a": 3072, "dim_b": 3072}}
    r = {"kernel": "centered_gram[large,ieee,sym]", "arch": 90, "build": "jit", "num_warps": 8, "ctas_per_sm": 1,
         "registers": 144, "failures": [], "main_loop": loop, "inner_loops": [loop], "outer_loops": [],
         "constexprs": {"BLOCK_I": 128, "BLOCK_K": 16}, "targets": [target]}
    full, last = rm.former_plans(r)
    assert full["shape"] == "N=50000,d=3072 (12 launches, 1 split, before)" and full["grid"] == [300, 1]
    assert last["int_args"]["n_rows"] == 50_000 - 12 * 4096
    rows = rm.model([r])
    assert [p["launches"] for p in rows] == [2, 12, 1]
    assert rc.predicted_ms(rows, "centred gram ieee: 13 launches x 300 programs (before)", "N=50000 d=3072") == \
        pytest.approx(rows[1]["predicted_ms"] + rows[2]["predicted_ms"])


def _ffma_result(consistent=True):
    """centered_gram's large ieee build as the gate reports it: 8 warps, 1024 FFMA an iteration, A
    broadcast (64 LDS.128 of 1 wavefront), B contiguous (16 LDS.128 of 4), 47488 shared bytes."""
    loop = _loop(instructions=1186, ffma=1024, shared_bytes=47488, start=0x100, end=0x900)
    other = _loop(instructions=50, ffma=16, shared_bytes=4096, start=0x1000, end=0x1100)  # not the main loop
    target = {"shape": "N=50000,d=3072 (2 launches)", "grid": [300, 7], "ctas": 2100, "wave_efficiency": 0.99,
              "int_args": {"n_rows": 25088, "rows_per_split": 3584, "dim_a": 3072, "dim_b": 3072}}
    operands = {"A": {"accesses": 64, "bytes": 64 * 512, "wavefronts": 64, "width_bits": 128},
                "B": {"accesses": 16, "bytes": 16 * 512, "wavefronts": 64, "width_bits": 128}}
    return {"kernel": "centered_gram[large,ieee,sym]", "arch": 90, "build": "jit", "num_warps": 8, "ctas_per_sm": 1,
            "registers": 144, "failures": [], "main_loop": dict(loop), "inner_loops": [loop, other],
            "outer_loops": [], "constexprs": {"BLOCK_I": 128, "BLOCK_K": 16}, "targets": [target],
            "smem_wavefronts": operands, "smem_consistent": consistent,
            "smem_note": "" if consistent else "SASS main loop has LDS.128 x83"}


def test_ffma_smem_term_counts_operand_wavefronts():
    """smem = (loop bytes - operands' full-width bytes + their wavefronts x 128) x warps / (128 B x
    clock) in the FFMA main loop; full width with --full-width, on a disagreeing simulation, and
    in every loop that is not the main loop."""
    r = _ffma_result()
    loop = r["main_loop"]
    assert rm.shared_bytes(loop, r["smem_wavefronts"]) == 47488 - 40960 + 128 * 128
    each = rm.iteration_seconds(loop, 8, r["smem_wavefronts"])
    assert each["smem"] == pytest.approx((47488 - 40960 + 128 * 128) * 8 / (128 * CLOCK))
    assert rm.iteration_seconds(loop, 8)["smem"] == pytest.approx(47488 * 8 / (128 * CLOCK))
    t = r["targets"][0]
    trips, scale = -(-3584 // 16), 16 * 1 * 2 * 1e3  # 2100 CTAs: 16 waves of 132, 1 per SM, 2 launches
    p, before = rm.predict(r, t), rm.predict(r, t, full_width=True)
    assert p["loop_terms_ms"]["smem"] == pytest.approx(trips * each["smem"] * scale)
    assert p["smem_full_width_ms"] == pytest.approx(trips * 47488 * 8 / (128 * CLOCK) * scale)
    assert before["loop_terms_ms"]["smem"] == pytest.approx(p["smem_full_width_ms"])
    assert before["smem_full_width_ms"] == pytest.approx(p["smem_full_width_ms"])
    assert p["loop_terms_ms"]["math"] == before["loop_terms_ms"]["math"]
    assert p["loop_terms_ms"]["smem"] < before["loop_terms_ms"]["smem"]  # the broadcast A is cheaper
    conflicted = _ffma_result()
    conflicted["smem_wavefronts"]["B"]["wavefronts"] = 512  # 32 an LDS.128: bank-conflicted B
    worse = rm.predict(conflicted, t)
    assert worse["loop_terms_ms"]["smem"] == pytest.approx(
        trips * (47488 - 40960 + 576 * 128) * 8 / (128 * CLOCK) * scale)
    assert worse["bound"] == "smem" and worse["predicted_ms"] > p["predicted_ms"]
    off = _ffma_result(consistent=False)
    rows = rm.model([off])
    assert rows[0]["loop_terms_ms"]["smem"] == pytest.approx(p["smem_full_width_ms"])
    assert "smem at full width: SASS main loop has LDS.128 x83" in rows[0]["note"]
    assert "note" not in rm.model([r])[0] and "smem fw" in rm.format_table(rows)
    # a loop nest (neighbours: every inner loop with math runs): only the main loop's operands change
    nn = dict(_ffma_result(), kernel="nn_candidates[ieee]", constexprs={"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 16})
    nn["targets"] = [{"shape": "B=1024,N=50000,d=3072", "grid": [16, 33], "ctas": 528, "wave_efficiency": 1.0,
                      "int_args": {"n_queries": 1024, "n_data": 50000, "dim": 3072, "rows_per_split": 1536}}]
    trips = -(-1536 // 64) * (3072 // 16)
    other = nn["inner_loops"][1]
    want = trips * (rm.shared_bytes(loop, nn["smem_wavefronts"]) + other["shared_bytes"]) * 8 / (128 * CLOCK)
    assert rm.predict(nn, nn["targets"][0])["loop_terms_ms"]["smem"] == pytest.approx(want * 4 * 1e3)  # 4 waves


def test_gpu_check_report_prints_the_prediction(tmp_path, monkeypatch, capsys):
    import gpu_check_lib

    version = gpu_check_lib._module_version("triton")
    rows = [{"kernel": "nn_candidates[tf32x3,sm90]", "shape": "B=1024,N=50000,d=3072", "predicted_ms": 2.5}]
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


def test_every_gaussian_ab_timing_row_has_a_model_case():
    """gpu_check's Gaussian A/B rows (every precision, both ranks) are the names the model predicts,
    and the 'before' rows name the former builds (before-large, before-narrow or small)."""
    import gpu_check  # noqa: F401  (puts benchmarks/<family>/ on the path)
    import gpu_check_gaussian

    cases = rc.gpu_check_cases()
    for precision, variants in gpu_check_gaussian.AB_VARIANTS.items():
        for r in (3072, 256):
            timed = gpu_check_gaussian._variants(variants, 3072, r)
            # x read once: timed at r = 256, tensor cores only
            assert any(v[1].get("rest_zero") for v in timed) == (r == 256 and precision != "ieee")
            for label, options in timed:
                key = (f"gaussian kernels {precision} {label}", f"d=3072 r={r} B=8192 T=1")
                assert (key in cases) == ("centre" not in options), key  # in-kernel centring: no model row
                if key in cases and options.get("variant") == "before":
                    names = [k for k, _ in cases[key]["kernels"]]
                    assert all("before" in n or "[small," in n for n in names if n.startswith("gaussian")), names
    narrow = cases[("fastgauss per-sample bf16", "d=3072 r=256 B=8192 T=1")]["kernels"]
    assert ("gaussian_project[narrow,bf16]", "B=8192,d=3072,r=256") in narrow


def test_the_reconstruction_without_x_reads_b_d_fewer_bytes():
    b, d, r = 8192, 3072, 256
    target = {"shape": f"B={b},d={d},r={r}", "grid": [(b // 128) * (d // 128)],
              "int_args": {"n_rows": b, "n_levels": 1, "dim": d, "rank": r, "stride_x": d, "output_mode": 0}}
    tiles = {"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}
    read, skip = (rm.workload("gaussian_reconstruct[large,bf16]", {**tiles, "READ_X": flag}, target, 264)
                  for flag in (True, False))
    assert read["hbm"] - skip["hbm"] == pytest.approx(b * d * 4)
    assert read["compulsory"] - skip["compulsory"] == pytest.approx(b * d * 4)
    assert skip["flops"] == read["flops"]
