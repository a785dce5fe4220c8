"""One-shot GPU check: every kernel against float64 references, then timings against baselines.

    python benchmarks/gpu_check.py --out DIR                       (on a CUDA machine: all of it)
    python benchmarks/gpu_check.py --out DIR --checks-only         (correctness of every kernel and mode)
    python benchmarks/gpu_check.py --out DIR --timings-only --budget 270 --only moments --only gaussian
    python benchmarks/gpu_check.py --plan                          (the timed parts and their estimates)
    python benchmarks/gpu_check.py --out /tmp/smoke --smoke        (CPU, Triton interpreter)
    python benchmarks/gpu_check.py --merge DIR                     (results.json / table.txt of a folder)

It imports fastgauss from this checkout whether or not it is installed (the GPU machine runs a
bare copy with its own torch and triton), and prints the GPU, driver, CUDA, torch, triton,
numpy and cupy versions first; every row of the JSON carries them too. Each run writes
``results-LABEL.json`` and ``table-LABEL.txt`` (LABEL: smoke, checks, timings or full, plus
the ``--only`` families), then rebuilds ``results.json`` and ``table.txt`` from every
``results-*.json`` in the folder, so several runs (the ``--only`` splits of the GPU run plan in
benchmarks/results/README.md) fill one folder. Timings come in parts, each with a priority and
an estimate from its grid sizes; ``--budget SECONDS`` skips the lowest-priority parts whose
estimates do not fit in what is left of the budget. Exit status 1 when any check fails, 2 on a
usage error. ``--smoke`` runs the correctness part at tiny sizes on CPU tensors through the
Triton interpreter (no timings), so the script itself is tested without a GPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
# Each family's checks and timed parts live beside its CPU benchmark (benchmarks/<family>/gpu_check_<family>.py).
for _folder in (BENCHMARKS, *(BENCHMARKS / f for f in ("moments", "gaussian", "empirical", "neighbors", "analysis"))):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))
FAMILIES = ("moments", "gaussian", "empirical", "analyze")
#: Estimated seconds of each family's correctness checks on an H200 (mostly Triton and
#: torch.compile builds); the run records the real ones in meta.phases.
CHECK_ESTIMATE_S = {"moments": 30.0, "gaussian": 60.0, "empirical": 40.0, "analyze": 30.0}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump
        print(f"gpu_check: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parse_args(argv=None):
    parser = _Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the results (created if missing)")
    parser.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny sizes, no timings")
    parser.add_argument("--only", action="append", choices=FAMILIES,
                        help="run only this kernel family (repeatable; default: all)")
    phase = parser.add_mutually_exclusive_group()
    phase.add_argument("--checks-only", action="store_true", help="correctness checks only, no timings")
    phase.add_argument("--timings-only", action="store_true", help="timings only (run the checks first, apart)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="wall-clock budget of this run: the lowest-priority timed parts are skipped "
                             "when the estimates run over it")
    parser.add_argument("--plan", action="store_true", help="print the parts, priorities and estimates; run nothing")
    parser.add_argument("--merge", type=Path, metavar="DIR",
                        help="rebuild DIR/results.json and DIR/table.txt from DIR/results-*.json; run nothing")
    args = parser.parse_args(argv)
    if args.budget is not None and not args.budget > 0:
        parser.error(f"--budget must be a positive number of seconds, got {args.budget:g}")
    if args.smoke and args.timings_only:
        parser.error("--smoke runs no timings: drop --timings-only")
    if not (args.plan or args.merge) and args.out is None:
        parser.error("--out DIR is required (or --plan / --merge DIR)")
    return args


def _import_fastgauss():
    """Import fastgauss from this checkout, installed or not (the device machine runs a bare copy)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import fastgauss

    try:
        import fastgauss.kernels  # noqa: F401
    except ImportError:  # not installed: map kernels/ to fastgauss.kernels as the package does
        spec = importlib.util.spec_from_file_location(
            "fastgauss.kernels", REPO / "kernels" / "__init__.py",
            submodule_search_locations=[str(REPO / "kernels")])
        module = importlib.util.module_from_spec(spec)
        sys.modules["fastgauss.kernels"] = module
        spec.loader.exec_module(module)
    return fastgauss


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("FASTGAUSS_COMMIT", "unknown")


def timing_parts(families) -> list:
    """Every timed part of the chosen families, plus the card's peaks (priority 1)."""
    from gpu_check_empirical import time_empirical
    from gpu_check_gaussian import timing_parts as gaussian_parts
    from gpu_check_lib import Part, bench_seconds, call_seconds, measure_peaks
    from gpu_check_moments import timing_parts as moments_parts

    n = 8192
    peaks_s = (bench_seconds(call_seconds(2 * n**3)) + bench_seconds(call_seconds(2 * n**3, kind="tf32"))
               + bench_seconds(call_seconds(2 * n**3, kind="bf16")) + bench_seconds(call_seconds(0, 2 * 4 << 30)) + 2)
    parts = [Part("machine", "measured peaks", 1, peaks_s,
                  lambda report, device: report.meta.__setitem__("peaks", measure_peaks(device)))]
    if "moments" in families:
        parts += moments_parts()
    if "gaussian" in families:
        parts += gaussian_parts()
    if "empirical" in families:
        parts.append(Part("empirical", "empirical + nearest neighbours N=50000 d=3072", 1, _estimate_empirical(),
                          time_empirical))
        from gpu_check_neighbors import timing_parts as neighbor_parts
        parts += neighbor_parts()
    if "analyze" in families:  # skips itself, with a line, where diffusers is not importable
        from gpu_check_analyze import timing_parts as analyze_parts
        parts += analyze_parts()
    return parts


def _estimate_empirical(n: int = 50_000, d: int = 3072, batches=(64, 1024, 8192)) -> float:
    """Seconds of gpu_check_empirical.time_empirical, from its grid (kept in step by hand)."""
    from gpu_check_empirical import SIGMAS
    from gpu_check_lib import bench_seconds, call_seconds

    total = 0.0
    for b in batches:
        full = 4 * b * n * d
        per_sigma = [call_seconds(full, 16 * b * n, launches=6), call_seconds(full, 4 * b * n, launches=2),
                     call_seconds(full, launches=3), call_seconds(full, launches=3)]
        total += len(SIGMAS) * sum(bench_seconds(c) for c in per_sigma)
        total += 2 * bench_seconds(call_seconds(2 * b * n * d, 8 * b * n, launches=3))
    reached = [8192 << k for k in range(6)]  # the largest-batch search doubles B up to 2^18
    total += sum(call_seconds(4 * b * n * d) for b in reached[:5]) + sum(call_seconds(4 * b * n * d) for b in reached)
    host = 1_000_000 * d * 4
    total += host / 3e9 + host / 20e9 + 7 * call_seconds(4 * 1024 * 1_000_000 * d, 0) + 7 * host / 20e9
    return total


def _label(args) -> str:
    phase = "smoke" if args.smoke else "checks" if args.checks_only else "timings" if args.timings_only else "full"
    return phase + ("-" + "+".join(args.only) if args.only else "")


def merge_folder(folder: Path) -> dict:
    """Rebuild folder/results.json and folder/table.txt from every folder/results-*.json."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("results-*.json"))]
    if not runs:
        raise FileNotFoundError(f"no results-*.json in {folder}")
    runs.sort(key=lambda r: r["meta"]["date"])
    merged = {"meta": runs[-1]["meta"], "runs": [r["meta"] for r in runs],
              "all_passed": all(r["all_passed"] for r in runs),
              "checks": [c for r in runs for c in r["checks"]], "timings": [t for r in runs for t in r["timings"]]}
    tables = [(folder / f"table-{r['meta']['label']}.txt") for r in runs]
    text = "\n\n".join(t.read_text().rstrip() for t in tables if t.exists())
    passed = sum(c["passed"] for c in merged["checks"])
    (folder / "results.json").write_text(json.dumps(merged, indent=2))
    (folder / "table.txt").write_text(f"{text}\n\nall runs: {passed} passed, {len(merged['checks']) - passed} failed\n")
    return merged


def main(argv=None) -> int:
    started = time.monotonic()
    args = _parse_args(argv)
    if args.merge:
        try:
            merged = merge_folder(args.merge)
        except (FileNotFoundError, json.JSONDecodeError, KeyError) as exc:
            print(f"gpu_check: error: {exc}", file=sys.stderr)
            return 2
        print((args.merge / "table.txt").read_text().rstrip())
        return 0 if merged["all_passed"] else 1
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["FASTGAUSS_BACKEND"] = "triton"
    chosen = tuple(args.only or FAMILIES)
    if args.plan:
        _import_fastgauss()
        return _print_plan(chosen, args)
    fastgauss = _import_fastgauss()
    import torch

    from gpu_check_empirical import check_empirical
    from gpu_check_gaussian import check_gaussian
    from gpu_check_lib import Report, environment, format_env
    from gpu_check_moments import check_moments

    device = torch.device("cpu" if args.smoke else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: error: no CUDA device; use --smoke to run the checks on CPU", file=sys.stderr)
        return 2
    env = environment(device)
    print("gpu_check: " + format_env(env), flush=True)
    label = _label(args)
    report = Report(meta={
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _commit(), "label": label, "device": env["gpu"],
        "torch": env["torch"], "triton": env["triton"], "python": env["python"],
        "fastgauss": fastgauss.__version__, "env": env, "budget_s": args.budget,
        "phases": {"checks": {}, "timings": []},
    })
    phases = report.meta["phases"]
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> str:  # after every family and part: a run cut off at its time limit keeps its rows
        report.meta["wall_s"] = round(time.monotonic() - started, 1)
        table = report.table()
        (args.out / f"results-{label}.json").write_text(json.dumps(report.as_dict(), indent=2))
        (args.out / f"table-{label}.txt").write_text(table + "\n")
        merge_folder(args.out)
        return table

    from gpu_check_analyze import check_analyze

    from gpu_check_neighbors import check_neighbor_kernel

    def check_empirical_and_neighbors(report, device, *, smoke):
        check_empirical(report, device, smoke=smoke)
        check_neighbor_kernel(report, device, smoke=smoke)

    checks = {"moments": check_moments, "gaussian": check_gaussian, "empirical": check_empirical_and_neighbors,
              "analyze": check_analyze}
    if not args.timings_only:
        for name in chosen:
            t0 = time.monotonic()
            checks[name](report, device, smoke=args.smoke)
            phases["checks"][name] = {"actual_s": round(time.monotonic() - t0, 1),
                                      "estimate_s": CHECK_ESTIMATE_S[name]}
            save()
    if not (args.smoke or args.checks_only):
        run_timings(report, device, timing_parts(chosen), args.budget, started, save=save)
    table = save()
    print(table)
    print(f"gpu_check: {label} took {report.meta['wall_s']:.0f} s; results in {args.out}", flush=True)
    errors = [row for row in phases["timings"] if row["skipped"].startswith("error")]
    return 0 if report.all_passed and not errors else 1


def run_timings(report, device, parts, budget_s, started: float, clock=time.monotonic, save=None) -> None:
    """Run the timed parts in priority order within ``budget_s`` (seconds since ``started`` on
    ``clock``; None: no budget). The lowest-priority parts whose estimates do not fit are skipped
    first; a part that would still pass the budget when its turn comes (the real time of those
    before it ran over their estimates) is skipped too. A part that raises is recorded as an
    error and the others still run. Each part's row goes to meta.phases; ``save()`` follows each."""
    from gpu_check_lib import plan_parts

    rows = report.meta.setdefault("phases", {}).setdefault("timings", [])
    kept, skipped = plan_parts(parts, budget_s, clock() - started)
    for part in skipped:
        print(f"[skip] {part.name}: estimate {part.estimate_s:.0f} s does not fit the budget", flush=True)
        rows.append(_part_row(part, None, "over budget (estimate)"))
    for part in kept:
        elapsed = clock() - started
        if budget_s is not None and elapsed + part.estimate_s > budget_s:
            print(f"[skip] {part.name}: {elapsed:.0f} s spent, estimate {part.estimate_s:.0f} s "
                  f"would pass the budget", flush=True)
            rows.append(_part_row(part, None, "over budget (run time)"))
            continue
        print(f"[part] {part.name} (priority {part.priority}, estimate {part.estimate_s:.0f} s)", flush=True)
        t0 = clock()
        try:
            part.run(report, device)
            rows.append(_part_row(part, clock() - t0, ""))
        except Exception as exc:  # one part's failure (out of memory, say) must not lose the others
            print(f"[error] {part.name}: {type(exc).__name__}: {exc}", flush=True)
            rows.append(_part_row(part, clock() - t0, f"error: {type(exc).__name__}: {str(exc)[:200]}"))
        if save is not None:
            save()


def _part_row(part, actual_s, skipped: str) -> dict:
    return {"part": part.name, "family": part.family, "priority": part.priority,
            "estimate_s": round(part.estimate_s, 1),
            "actual_s": None if actual_s is None else round(actual_s, 1), "skipped": skipped}


def _print_plan(chosen, args) -> int:
    from gpu_check_lib import plan_parts

    print(f"{'part':<52} {'priority':>8} {'estimate s':>10}  planned")
    checks = sum(CHECK_ESTIMATE_S[name] for name in chosen) if not args.timings_only else 0.0
    if not args.timings_only:
        for name in chosen:
            print(f"{'checks ' + name:<52} {0:>8} {CHECK_ESTIMATE_S[name]:>10.0f}  run")
    if args.checks_only or args.smoke:
        print(f"\ntotal {checks:.0f} s")
        return 0
    kept, skipped = plan_parts(timing_parts(chosen), args.budget, checks)
    for part in kept + skipped:
        print(f"{part.name:<52} {part.priority:>8} {part.estimate_s:>10.0f}  {'run' if part in kept else 'skip'}")
    total = checks + sum(p.estimate_s for p in kept)
    print(f"\ntotal {total:.0f} s" + (f" of a {args.budget:.0f} s budget" if args.budget else "")
          + (f"; skipped {sum(p.estimate_s for p in skipped):.0f} s" if skipped else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
