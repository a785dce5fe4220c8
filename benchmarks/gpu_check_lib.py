"""Shared pieces of benchmarks/gpu_check.py: the report, timing, and the machine's peaks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
        self.timings.append(row)
        print(f"[time] {name} {case}: {ms:.3f} ms", flush=True)
        return row

    @property
    def all_passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict:
        return {"meta": self.meta, "all_passed": self.all_passed,
                "checks": [dict(asdict(c), passed=c.passed) for c in self.checks],
                "timings": [asdict(t) for t in self.timings]}

    def table(self) -> str:
        meta = self.meta
        lines = [f"fastgauss gpu_check  {meta['date']}  commit {meta['commit']}  {meta['device']}",
                 f"torch {meta['torch']}  triton {meta['triton']}"]
        peaks = meta.get("peaks")
        if peaks:
            lines.append("measured peaks: " + ", ".join(f"{k} {v:.1f}" for k, v in peaks.items()))
        standard = {"date", "commit", "device", "torch", "triton", "python", "fastgauss", "peaks"}
        lines += [f"{key}: {value}" for key, value in meta.items() if key not in standard]
        lines += ["", f"{'check':<40} {'case':<34} {'error':>10} {'tol':>8}  result"]
        for c in self.checks:
            lines.append(f"{c.name:<40} {c.case:<34} {c.error:>10.2e} {c.tolerance:>8.0e}  "
                         f"{'ok' if c.passed else 'FAIL'}")
        if self.timings:
            lines += ["", f"{'timing':<40} {'case':<34} {'ms':>9} {'TFLOP/s':>8} {'GB/s':>7}  vs baseline"]
            for t in self.timings:
                tf = f"{t.tflops:8.1f}" if t.tflops is not None else " " * 8
                gb = f"{t.gbps:7.0f}" if t.gbps is not None else " " * 7
                vs = f"{t.speedup:.2f}x vs {t.baseline}" if t.baseline else ""
                lines.append(f"{t.name:<40} {t.case:<34} {t.ms:>9.3f} {tf} {gb}  {vs}")
        passed = sum(c.passed for c in self.checks)
        lines += ["", f"{passed} passed, {len(self.checks) - passed} failed"]
        return "\n".join(lines)


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
