"""benchmarks/gpu_check.py runs end to end on CPU (interpreter, tiny sizes) and reports every check;
its plan, budget, merge and usage errors; and it runs from a bare checkout (nothing installed)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
VERSION_KEYS = {"gpu", "driver", "torch", "triton", "numpy", "cupy"}


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_check

    return gpu_check


def _run(*args, timeout=600, **kw):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, **kw)


def test_gpu_check_smoke_run_writes_results(tmp_path, gpu_check):
    proc = _run("--out", str(tmp_path), "--smoke")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith("gpu_check: gpu ") and all(f" {k} " in first for k in ("driver", "torch", "triton",
                                                                                       "numpy", "cupy"))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["all_passed"] and len(results["checks"]) >= 10
    names = {c["name"] for c in results["checks"]}
    assert {"moments covariance ieee", "moments covariance tf32x3", "moments covariance tf32"} <= names
    assert {f"gaussian denoise {p}" for p in ("ieee", "tf32", "bf16")} <= names
    assert all(VERSION_KEYS <= set(c["env"]) for c in results["checks"])  # versions beside every result
    import triton

    assert results["meta"]["env"]["triton"] == triton.__version__
    assert set(results["meta"]["phases"]["checks"]) == set(gpu_check.FAMILIES)
    assert (tmp_path / "results-smoke.json").exists() and (tmp_path / "table-smoke.txt").exists()
    assert (tmp_path / "table.txt").read_text().rstrip().endswith(" 0 failed")


def test_plan_lists_every_part_and_budget_skips_the_lowest_priority():
    full = _run("--plan")
    assert full.returncode == 0, full.stderr
    assert "skip" not in full.stdout and "gaussian d=12288" in full.stdout and "measured peaks" in full.stdout
    tight = _run("--plan", "--timings-only", "--budget", "120")
    assert tight.returncode == 0, tight.stderr
    planned = {line.split("  ")[0].strip(): line.split()[-1] for line in tight.stdout.splitlines()[1:] if line.strip()
               and not line.startswith("total")}
    assert planned["gaussian d=12288"] == "skip" and planned["measured peaks"] == "run"


def test_run_timings_keeps_priorities_and_the_budget(gpu_check):
    from gpu_check_lib import Part, Report

    ran, now = [], [0.0]

    def part(name, priority, estimate, real):
        def run(report, device):
            ran.append(name)
            now[0] += real
        return Part("f", name, priority, estimate, run)

    def broken(report, device):
        raise MemoryError("out of memory")

    parts = [part("low", 3, 50, 50), part("first", 1, 10, 40), part("second", 2, 30, 30),
             part("also first", 1, 10, 10), Part("f", "broken", 1, 1, broken)]
    report = Report(meta={})
    saves = []
    gpu_check.run_timings(report, None, parts, budget_s=60, started=0.0, clock=lambda: now[0],
                          save=lambda: saves.append(1))
    # "low" does not fit the 60 s estimate; "second" fitted by estimate but "first" ran 30 s over.
    assert ran == ["first", "also first"]
    rows = {r["part"]: r for r in report.meta["phases"]["timings"]}
    assert rows["low"]["skipped"] == "over budget (estimate)"
    assert rows["second"]["skipped"] == "over budget (run time)"
    assert rows["first"]["actual_s"] == 40 and rows["broken"]["skipped"].startswith("error: MemoryError")
    assert len(saves) == 3
    ran.clear()
    gpu_check.run_timings(Report(meta={}), None, parts[:4], budget_s=None, started=0.0, clock=lambda: now[0])
    assert ran == ["first", "also first", "second", "low"]


def test_merge_rebuilds_the_folder_from_every_run(gpu_check, tmp_path):
    env = {k: "x" for k in VERSION_KEYS}
    for label, date, passed in (("checks", "2026-01-01T00:00:00", True), ("timings-moments", "2026-01-01T00:05:00", False)):
        run = {"meta": {"label": label, "date": date, "env": env}, "all_passed": passed,
               "checks": [{"name": label, "passed": passed, "env": env}], "timings": []}
        (tmp_path / f"results-{label}.json").write_text(json.dumps(run))
        (tmp_path / f"table-{label}.txt").write_text(f"table of {label}\n")
    proc = _run("--merge", str(tmp_path))
    assert proc.returncode == 1  # one merged run failed a check
    merged = json.loads((tmp_path / "results.json").read_text())
    assert [c["name"] for c in merged["checks"]] == ["checks", "timings-moments"] and not merged["all_passed"]
    assert [r["label"] for r in merged["runs"]] == ["checks", "timings-moments"]
    assert "table of checks" in proc.stdout and proc.stdout.rstrip().endswith("1 passed, 1 failed")


@pytest.mark.parametrize("args,needle", [
    (["--budget", "0", "--out", "x"], "--budget"), (["--smoke", "--timings-only", "--out", "x"], "--timings-only"),
    ([], "--out"), (["--checks-only", "--timings-only", "--out", "x"], "not allowed"),
    (["--only", "nope", "--out", "x"], "--only"), (["--merge", "/nonexistent-folder"], "no results"),
])
def test_usage_errors_are_one_line_exit_2(args, needle):
    proc = _run(*args, timeout=120)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_runs_from_a_bare_checkout_without_the_installed_package(tmp_path):
    """What the GPU machine does: no install, kernels/ mapped to fastgauss.kernels by the script."""
    bare = ("import runpy, sys\n"
            "sys.meta_path[:] = [f for f in sys.meta_path if not str(getattr(f, '__module__', '')).startswith('__editable__')]\n"
            "sys.path[:] = [p for p in sys.path if p not in ('', '.')]\n"
            "try:\n    import fastgauss.kernels\nexcept ImportError:\n    print('BARE')\n"
            f"sys.argv = [{str(SCRIPT)!r}, '--smoke', '--only', 'moments', '--out', {str(tmp_path)!r}]\n"
            "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
            "finally:\n    print('KERNELS', sys.modules['fastgauss.kernels'].__file__)\n")
    proc = subprocess.run([sys.executable, "-c", bare], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert "SystemExit: 0" not in proc.stderr and proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("BARE") and f"KERNELS {REPO / 'kernels' / '__init__.py'}" in proc.stdout
    assert json.loads((tmp_path / "results.json").read_text())["all_passed"]


def test_library_docstring_examples(gpu_check):
    import doctest

    import gpu_check_lib

    result = doctest.testmod(gpu_check_lib)
    assert result.attempted >= 2 and result.failed == 0
