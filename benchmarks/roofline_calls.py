"""The roofline model's predictions per gpu_check timing row: which kernels and passes each row
runs (``gpu_check_cases``), their summed predicted time (``predicted_ms``, what gpu_check prints
as "predicted") and, per row, the fraction of peak and of the call's HBM floor (``calls``).
The per-kernel model is ``roofline_model.py``."""

from __future__ import annotations

import fnmatch

from roofline_model import CEILINGS, _eb


def format_calls(summary: list[dict]) -> str:
    header = f"{'gpu_check timing':<58} {'case':<34} {'pred ms':>8} {'of peak':>7} {'of HBM':>6}"
    lines = [header, "-" * len(header)]
    for c in summary:
        lines.append(f"{c['name']:<58} {c['case']:<34} {c['predicted_ms']:>8.3f} {c['fraction_of_peak']:>7.2f} "
                     f"{c['fraction_of_hbm_floor']:>6.2f}")
    return "\n".join(lines)


def _case(kernels, floor_bytes=0.0):
    return {"kernels": kernels, "floor_bytes": floor_bytes}


#: gpu_check timing rows the model predicts: (timing name, case) -> {'kernels': [(kernel, shape)],
#: 'floor_bytes': the call's compulsory HBM bytes}; a shape ending in '*' matches every row of
#: the kernel whose label starts so (e.g. each chunk geometry), '*' alone any label.
def gpu_check_cases() -> dict:
    cases = {}
    b = 8192
    for d in (3072, 12288):
        for r in (d, d // 8, 256):
            label = f"B={b},d={d},r={r}"
            for p in ("ieee", "tf32", "bf16"):  # the launcher's tiles: large when min(B, r) >= 1024,
                size = "large" if r >= 1024 else "small"  # narrow (tensor cores) when 128 < r <= 256
                psize = "narrow" if p != "ieee" and 128 < r <= 256 else size
                project = [(f"gaussian_project[{psize},{p}]", label)]
                if p != "ieee" and size == "large":  # x - mu formed once per call
                    project.append((f"torch:centre x[{p}]", label))
                kernels = project + [(f"gaussian_reconstruct[large,{p}]", label)]  # x read again (lam_rest > 0)
                once = project + [(f"gaussian_reconstruct[large,{p},lam_rest=0]", label)]  # the module's default
                floor = 2 * b * d * 4 + d * r * _eb(p)  # read x, write D, read U once
                cases[(f"fastgauss per-sample {p}", f"d={d} r={r} B={b} T=1")] = _case(once, floor)
                if d == 3072 and r in (3072, 256):  # the launcher's A/B (_time_ab)
                    case = f"d={d} r={r} B={b} T=1"
                    tuned, former = ("128x128x16", "128x32") if p == "ieee" else ("128x128x32", "128x64")
                    cases[(f"gaussian kernels {p} tuned ({tuned}, GROUP_M=8)", case)] = _case(kernels, floor)
                    if r == 256 and p != "ieee":  # gpu_check times it there only
                        cases[(f"gaussian kernels {p} tuned, x read once (lam_rest = 0)", case)] = _case(once, floor)
                    before = f"{label},before"
                    former_p = "before-large" if size == "large" else "before-narrow" if psize == "narrow" else psize
                    old = [(f"gaussian_project[{former_p},{p}]", before),
                           (f"gaussian_reconstruct[before-large,{p}]", before)]
                    if size == "large" and p != "ieee":
                        old.append((f"torch:centre x[{p}]", before))
                    cases[(f"gaussian kernels {p} before ({former}, rows fastest)", case)] = _case(old, floor)
    n, d, q = 50_000, 3072, 1024
    data = n * d * 4
    for p in ("ieee", "tf32x3", "tf32"):
        kernels = [(f"centered_gram[large,{p},sym]", "N=50000,d=3072 (*launches)")]
        if p == "tf32":
            kernels.append(("torch:centre and transpose[tf32]", "N=50000,d=3072 (*launches)"))
        cases[(f"fastgauss centred gram {p}", f"N={n} d={d}")] = _case(kernels, data)
        if p != "tf32":
            after = [(f"centered_gram[large,{p},sym]", f"N={n},d={d} (2 launches)")]
            cases[(f"centred gram {p}: 2 launches x 2100 programs", f"N={n} d={d}")] = _case(after, data)
            old = [(f"centered_gram[large,{p},sym]", f"N={n},d={d} (*, 1 split, before*")]
            cases[(f"centred gram {p}: 13 launches x 300 programs (before)", f"N={n} d={d}")] = _case(old, data)
        else:
            cases[("centred gram tf32: 1 launches, centre-and-transpose pre-pass (after)", f"N={n} d={d}")] = \
                _case(kernels, data)
    target = f"B={q},N={n},d={d},chunk=*"
    for mode in ("tf32", "bf16"):  # the whole denoiser call: three kernels a chunk, the chunks, the copies
        kernels = [(f"empirical_dots[{mode}]", target),
                   (f"empirical_softmax[p={'bf16' if mode == 'bf16' else 'fp32'}]", target),
                   (f"empirical_sums[{mode}]", target), (f"torch:centre chunks[{mode}]", target),
                   (f"torch:merge chunks[{mode}]", target)]
        cases[("empirical kernel after (chunks, acc in registers)", f"N={n} d={d} B={q} sigma=1 {mode}")] = \
            _case(kernels, data)
    ieee = [("empirical_dots[ieee]", target), ("empirical_softmax[p=fp32]", target), ("empirical_sums[ieee]", target),
            ("torch:centre chunks[ieee]", target), ("torch:merge chunks[ieee]", target)]
    for sigma in (0.002, 1.0):
        cases[("kernel fp32 pass (before)", f"N={n} d={d} B={q} sigma={sigma}")] = _case(ieee, data)
    nn = f"B={q},N={n},d={d}"
    cases[("fastgauss nearest_neighbors", f"N={n} d={d} B={q} k=2")] = _case([("nn_candidates[tf32x3,sm90]", nn)],
                                                                          data)
    for label, p, grid, shape in (("64x64 ieee, cdiv splits", "ieee,direct", "16x17", nn + ",cdiv splits"),
                                  ("64x64 ieee, wave-rounded splits", "ieee,direct", "16x16", nn),
                                  ("64x64 ieee, wave-rounded splits, transposed products", "ieee", "16x16", nn),
                                  ("64x64 tf32x3 8 warps, wave-rounded splits", "tf32x3", "16x16", nn),
                                  ("64x64 tf32x3 4 warps, wave-rounded splits (after)", "tf32x3,sm90", "16x33", nn)):
        cases[(f"nn kernel {label}", f"N={n} d={d} B={q} grid={grid}")] = _case([(f"nn_candidates[{p}]", shape)], data)
    return cases


def _matches(pattern: str, shape: str) -> bool:
    if "*" not in pattern:
        return pattern == shape
    return fnmatch.fnmatchcase(shape, pattern)


def _hits(rows: list[dict], name: str, case: str):
    wanted = gpu_check_cases().get((name, case))
    if not wanted:
        return None
    hits = []
    for kernel, shape in wanted["kernels"]:
        found = [p for p in rows if p["kernel"] == kernel and _matches(shape, p["shape"])]
        if not found:
            return None
        hits += found
    return hits


def predicted_ms(rows: list[dict], name: str, case: str) -> float | None:
    """The model's time for a gpu_check timing row (sum of its kernels' launches and passes), or None."""
    hits = _hits(rows, name, case)
    return None if hits is None else sum(p["predicted_ms"] for p in hits)


def calls(rows: list[dict]) -> list[dict]:
    """Per gpu_check timing row the model covers: predicted time, fraction of peak (the ideal time
    of the useful flops / predicted) and of the call's HBM floor (its compulsory bytes)."""
    out = []
    for (name, case), spec in gpu_check_cases().items():
        hits = _hits(rows, name, case)
        if hits:
            ms = sum(p["predicted_ms"] for p in hits)
            out.append({"name": name, "case": case, "predicted_ms": ms,
                        "fraction_of_peak": sum(p.get("ideal_ms", 0.0) for p in hits) / ms,
                        "fraction_of_hbm_floor": spec["floor_bytes"] / CEILINGS["hbm"] * 1e3 / ms,
                        "parts": [f"{p['kernel']} {p['shape']}" for p in hits]})
    return out
