"""Shared pieces of benchmarks/gpu_check.py: the report, timing, the machine's peaks, the
versions it ran with, and the duration model behind ``--plan`` and ``--budget``."""

from __future__ import annotations

import functools
import importlib
import json
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch


@dataclass
class Check:
    name: str
    case: str
    error: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.error == self.error and self.error <= self.tolerance  # NaN never passes


@dataclass
class Timing:
    name: str
    case: str
    ms: float
    tflops: float | None = None
    gbps: float | None = None
    baseline: str | None = None  # the name of the row this one is compared with
    speedup: float | None = None  # baseline ms / this ms
    predicted_ms: float | None = None  # the static model's time (benchmarks/roofline_model.py), if it has one


@dataclass
class Report:
    meta: dict
    checks: list[Check] = field(default_factory=list)
    timings: list[Timing] = field(default_factory=list)

    def check(self, name: str, case: str, error: float, tolerance: float) -> Check:
        row = Check(name, case, float(error), tolerance)
        self.checks.append(row)
        print(f"[{'ok' if row.passed else 'FAIL'}] {name} {case}: error {row.error:.3e} (tolerance {tolerance:.1e})",
              flush=True)
        return row

    def time(self, name: str, case: str, ms: float, *, flops: float | None = None, nbytes: float | None = None,
             baseline: str | None = None) -> Timing:
        row = Timing(name, case, ms, flops / ms / 1e9 if flops else None, nbytes / ms / 1e6 if nbytes else None)
        if baseline is not None:
            ref = next(t for t in self.timings if t.name == baseline and t.case == case)
            row.baseline, row.speedup = baseline, ref.ms / ms
        row.predicted_ms = predicted_ms(name, case)
        self.timings.append(row)
        predicted = f" (predicted {row.predicted_ms:.3f} ms)" if row.predicted_ms is not None else ""
        print(f"[time] {name} {case}: {ms:.3f} ms{predicted}", flush=True)
        return row

    @property
    def all_passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict:
        """Every row carries ``env`` (GPU name and versions), so rows stay attributable when the
        results of several runs are merged into one folder."""
        env = self.meta.get("env", {})
        return {"meta": self.meta, "all_passed": self.all_passed,
                "checks": [dict(asdict(c), passed=c.passed, env=env) for c in self.checks],
                "timings": [dict(asdict(t), env=env) for t in self.timings]}

    def table(self) -> str:
        meta = self.meta
        lines = [f"fastgauss gpu_check  {meta['date']}  commit {meta['commit']}  {meta['device']}",
                 format_env(meta.get("env", {"torch": meta.get("torch"), "triton": meta.get("triton")}))]
        peaks = meta.get("peaks")
        if peaks:
            lines.append("measured peaks: " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
        standard = {"date", "commit", "device", "torch", "triton", "python", "fastgauss", "peaks", "env",
                    "phases", "budget_s", "wall_s"}
        lines += [f"{key}: {value}" for key, value in meta.items() if key not in standard]
        phases = meta.get("phases", {})
        if phases.get("checks") or phases.get("timings"):
            budget = meta.get("budget_s")
            lines.append(f"parts (estimate / actual seconds{f'; budget {budget:.0f} s' if budget else ''}):")
            for name, row in phases.get("checks", {}).items():
                lines.append(f"  checks {name}: {row['estimate_s']:.0f} / {row['actual_s']:.0f}")
            for row in phases.get("timings", []):
                actual = f"{row['actual_s']:.0f}" if row["actual_s"] is not None else f"skipped, {row['skipped']}"
                lines.append(f"  {row['part']} (priority {row['priority']}): {row['estimate_s']:.0f} / {actual}")
        lines += ["", f"{'check':<40} {'case':<34} {'error':>10} {'tol':>8}  result"]
        for c in self.checks:
            lines.append(f"{c.name:<40} {c.case:<34} {c.error:>10.2e} {c.tolerance:>8.0e}  "
                         f"{'ok' if c.passed else 'FAIL'}")
        if self.timings:
            lines += ["", f"{'timing':<40} {'case':<34} {'ms':>9} {'predicted':>9} {'TFLOP/s':>8} {'GB/s':>7}"
                          "  vs baseline"]
            for t in self.timings:
                tf = f"{t.tflops:8.1f}" if t.tflops is not None else " " * 8
                gb = f"{t.gbps:7.0f}" if t.gbps is not None else " " * 7
                pred = f"{t.predicted_ms:9.3f}" if t.predicted_ms is not None else " " * 9
                vs = f"{t.speedup:.2f}x vs {t.baseline}" if t.baseline else ""
                lines.append(f"{t.name:<40} {t.case:<34} {t.ms:>9.3f} {pred} {tf} {gb}  {vs}")
        passed = sum(c.passed for c in self.checks)
        lines += ["", f"{passed} passed, {len(self.checks) - passed} failed"]
        return "\n".join(lines)


#: Predictions of benchmarks/roofline_model.py, one file per Triton version that built the facts.
PREDICTIONS = Path(__file__).resolve().parent / "results"


@functools.lru_cache(maxsize=None)
def _predictions(triton_version: str) -> tuple:
    path = PREDICTIONS / f"roofline-triton{triton_version}.json"
    return tuple(json.loads(path.read_text())["predictions"]) if path.exists() else ()


def predicted_ms(name: str, case: str) -> float | None:
    """The static model's time for a timing row, from the predictions of the running Triton's
    version (written by ``python benchmarks/roofline_model.py --json``); None when it has none."""
    from roofline_calls import predicted_ms as lookup

    rows = _predictions(_module_version("triton"))
    return lookup(list(rows), name, case) if rows else None


def bench_ms(fn, *, warmup_ms: int = 50, rep_ms: int = 200) -> float:
    """Median time of fn() in milliseconds, measured with CUDA events (triton.testing.do_bench)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))


def measure_peaks(device) -> dict[str, float]:
    """Measured ceilings of this card: fp32 / tf32 / bf16 matmul TFLOP/s and copy GB/s."""
    n = 8192
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    peaks = {}
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for label, tf32 in (("fp32 TFLOP/s", False), ("tf32 TFLOP/s", True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            peaks[label] = 2 * n**3 / bench_ms(lambda: a @ b) / 1e9
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    a16, b16 = a.bfloat16(), b.bfloat16()
    peaks["bf16 TFLOP/s"] = 2 * n**3 / bench_ms(lambda: a16 @ b16) / 1e9
    src = torch.randn(1 << 30, device=device)  # 4 GiB
    dst = torch.empty_like(src)
    peaks["copy GB/s"] = 2 * src.numel() * 4 / bench_ms(lambda: dst.copy_(src)) / 1e6
    return peaks


# ---- versions --------------------------------------------------------------------------

def _module_version(name: str) -> str:
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # missing, or broken without a GPU (cupy): either way, say so
        return "missing"


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
        return out.splitlines()[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "none (no nvidia-smi)"


def environment(device) -> dict:
    """GPU name, driver and the versions that matter, for the report's header and every row.

        >>> sorted(environment(torch.device("cpu")))[:3]
        ['compute_capability', 'cuda', 'cupy']
    """
    cuda = device.type == "cuda"
    env = {
        "gpu": torch.cuda.get_device_name(device) if cuda else "cpu (Triton interpreter)",
        "compute_capability": "%d.%d" % torch.cuda.get_device_capability(device) if cuda else "-",
        "multiprocessors": torch.cuda.get_device_properties(device).multi_processor_count if cuda else 0,
        "driver": _driver_version() if cuda else "-",
        "cuda": str(torch.version.cuda),
        "torch": torch.__version__,
        "triton": _module_version("triton"),
        "numpy": _module_version("numpy"),
        "cupy": _module_version("cupy"),
        "python": platform.python_version(),
    }
    return env


def format_env(env: dict) -> str:
    keys = ("gpu", "driver", "cuda", "torch", "triton", "numpy", "cupy", "python")
    return "  ".join(f"{k} {env[k]}" for k in keys if k in env)


# ---- the duration model: --plan and --budget ----------------------------------------------

#: Throughputs the estimates assume on an H200, in FLOP/s and bytes/s: bf16 and copy from the
#: measurements in the device notes (790 TFLOP/s, 4.3 TB/s), the rest from the datasheet
#: (fp32 67, tf32 495, fp64 67 TFLOP/s dense), all derated to what kernels reach in practice.
RATES = {"fp32": 40e12, "tf32": 300e12, "bf16": 500e12, "fp64": 40e12, "bytes": 3.0e12, "host": 20e9}
#: Seconds for one torch.compile of a small function (first call), and per-launch overhead.
COMPILE_S = 25.0
LAUNCH_S = 30e-6


def call_seconds(flops: float = 0.0, nbytes: float = 0.0, kind: str = "fp32", launches: int = 1) -> float:
    """Estimated seconds of one call doing ``flops`` in ``kind`` and moving ``nbytes``."""
    return max(flops / RATES[kind], nbytes / RATES["bytes"]) + launches * LAUNCH_S


def bench_seconds(call_s: float, warmup_ms: int = 50, rep_ms: int = 200) -> float:
    """Wall seconds of one ``bench_ms``: do_bench times 5 calls to size the loop, then warms up
    and repeats for at least one call each (and zeroes a 256 MB buffer before every call)."""
    per = call_s + 1e-4
    return 5 * per + max(warmup_ms / 1e3, per) + max(rep_ms / 1e3, per) + 0.05


@dataclass
class Part:
    """One timed part of gpu_check: priority 1 runs first and is the last to be skipped."""

    family: str
    name: str
    priority: int
    estimate_s: float
    run: Callable = field(repr=False, compare=False)


def plan_parts(parts: list[Part], budget_s: float | None, spent_s: float = 0.0) -> tuple[list[Part], list[Part]]:
    """(kept, skipped): parts in priority order (stable), the lowest-priority ones dropped, last
    listed first, until the estimates of those kept fit in ``budget_s - spent_s``.

        >>> ps = [Part("a", "x", 1, 50, None), Part("a", "y", 3, 100, None), Part("b", "z", 2, 60, None)]
        >>> [p.name for p in plan_parts(ps, 130)[0]], [p.name for p in plan_parts(ps, 130)[1]]
        (['x', 'z'], ['y'])
    """
    ordered = sorted(parts, key=lambda p: p.priority)
    if budget_s is None:
        return ordered, []
    kept, skipped = list(ordered), []
    while kept and spent_s + sum(p.estimate_s for p in kept) > budget_s:
        lowest = max(p.priority for p in kept)
        victim = [p for p in kept if p.priority == lowest][-1]
        kept.remove(victim)
        skipped.insert(0, victim)
    return kept, skipped
