"""gpu_check entries for streaming moments: correctness in every mode, then speed."""

from __future__ import annotations

import functools

import torch
import triton

import fastgauss
from fastgauss import reference as ref
from fastgauss.kernels import moments as kernel
from gpu_check_lib import COMPILE_S, Part, Report, bench_ms, bench_seconds, call_seconds

#: Relative Frobenius error allowed for the covariance, by product mode.
TOLERANCE = {"ieee": 1e-6, "tf32x3": 1e-5, "tf32": 5e-3}


def _rel(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual = actual.detach().double().cpu()
    if not torch.isfinite(actual).all():
        return float("nan")
    return ((actual - expected).norm() / expected.norm()).item()


def _data(n: int, d: int, device, seed: int, offset: float = 100.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spread = torch.logspace(0, -2, d)
    return (torch.randn(n, d, generator=g) * spread + offset).to(device)


def _stream(x, z=None, *, precision="ieee", chunk=1000):
    m = fastgauss.Moments(precision=precision)
    for start in range(0, x.shape[0], chunk):
        m.update(x[start:start + chunk], None if z is None else z[start:start + chunk])
    return m


def check_moments(report: Report, device, *, smoke: bool) -> None:
    sizes = [(70, 7), (50, 65)] if smoke else [(4096, 1), (4096, 63), (4096, 129), (8192, 1024), (65536, 300)]
    for precision in kernel.PRECISIONS:
        for i, (n, d) in enumerate(sizes):
            x = _data(n, d, device, seed=i)
            m = _stream(x, precision=precision, chunk=max(1, n // 3 + 1))
            report.check(f"moments covariance {precision}", f"n={n} d={d} offset=100",
                         _rel(m.covariance(), ref.covariance(x)), TOLERANCE[precision])
        n, dx, dz = (40, 9, 5) if smoke else (8192, 257, 130)
        x, z = _data(n, dx, device, seed=7), _data(n, dz, device, seed=8, offset=-3.0)
        m = _stream(x, z, precision=precision, chunk=max(1, n // 4))
        report.check(f"moments cross-covariance {precision}", f"n={n} dx={dx} dz={dz}",
                     _rel(m.cross_covariance(), ref.cross_covariance(z, x)), TOLERANCE[precision])
    for dtype in (torch.float16, torch.bfloat16):
        x = _data(64 if smoke else 8192, 33 if smoke else 513, device, seed=9, offset=1.0).to(dtype)
        report.check(f"moments covariance {str(dtype)[6:]} input", f"n={x.shape[0]} d={x.shape[1]}",
                     _rel(_stream(x).covariance(), ref.covariance(x)), TOLERANCE["ieee"])
    if not smoke:
        _check_cupy(report)


def _check_cupy(report: Report) -> None:
    try:
        import cupy
    except ImportError:
        print("[skip] cupy is not installed: DLPack input from cupy not checked", flush=True)
        return
    x = cupy.random.standard_normal((5000, 200), dtype=cupy.float32) + 3
    m = fastgauss.Moments().update(x)
    expected = ref.covariance(torch.from_dlpack(x))
    report.check("moments covariance cupy input", "n=5000 d=200 (DLPack)", _rel(m.covariance(), expected),
                 TOLERANCE["ieee"])


#: Timed grid: N rows of d features.
ROWS, DIMS = 65536, (3072, 12288)


def timing_parts() -> list[Part]:
    """The timed parts, each with its estimated duration (from the grid above) and priority."""
    parts = [Part("moments", f"moments N={ROWS} d={d}", 1 if d <= 3072 else 2, _estimate_dim(ROWS, d),
                  functools.partial(_time_dim, n=ROWS, d=d)) for d in DIMS]
    gram = 50_000 * 3072 * 3072  # half the full Gram's 2 N d^2
    estimate = 3 * bench_seconds(call_seconds(gram, launches=13)) + 3 * bench_seconds(call_seconds(gram, kind="tf32"))
    parts.append(Part("moments", "moments launch plans A/B N=50000 d=3072", 2, estimate + 2, time_launch_plans))
    return parts


def time_launch_plans(report: Report, device, n: int = 50_000, d: int = 3072) -> None:
    """Issue 14's A/B: one split per launch under the row cap (13 launches in ieee, each followed by
    a d x d float64 merge) against the plan that fills the scratch (2), and the tf32 pre-pass."""
    from fastgauss.kernels._common import multiprocessors

    x = torch.randn(n, d, device=device) + 3
    shift = x.mean(0)
    out = torch.zeros(d, d, dtype=torch.float64, device=device)
    sms = multiprocessors(x.device)
    flops = 2 * n * d * d
    for precision in ("ieee", "tf32x3", "tf32"):
        new = kernel.launch_plan(n, d, d, True, precision, sms)
        cap = kernel.MAX_ROWS_PER_PROGRAM[precision]
        old = kernel.GramPlan(new.config, new.tiles, 1, cap, triton.cdiv(n, cap))
        cases = [(f"{old.launches} launches x {old.tiles} programs (before)", old, False),
                 (f"{new.launches} launches x {new.tiles * new.splits} programs", new, False)]
        if precision == "tf32":
            cases.append((f"{new.launches} launches, centre-and-transpose pre-pass (after)", new, True))
        first = None
        for label, plan, precentre in cases:
            ms = bench_ms(lambda: kernel.centered_gram_accumulate(out, x, shift, precision=precision, plan=plan,
                                                                  precentre=precentre))
            row = report.time(f"centred gram {precision}: {label}", f"N={n} d={d}", ms, flops=flops, nbytes=n * d * 4)
            if first is None:
                first = row
            else:
                row.baseline, row.speedup = first.name, first.ms / ms
    del x, out
    torch.cuda.empty_cache()


def _estimate_dim(n: int, d: int) -> float:
    """Seconds for _time_dim(n, d): one torch.compile, then its eight benches."""
    gram, nbytes = 2 * n * d * d, n * d * 4
    calls = [call_seconds(gram, nbytes), call_seconds(gram, 3 * nbytes, launches=4),  # x.T @ x, torch.cov
             call_seconds(gram, 3 * nbytes, launches=3), call_seconds(gram, nbytes, kind="tf32"),
             call_seconds(gram / 2, nbytes),                                        # ieee: half the Gram
             call_seconds(3 * gram / 2, nbytes, kind="tf32"), call_seconds(gram / 2, nbytes, kind="tf32"),
             call_seconds(gram / 2, 2 * nbytes, launches=3)]                          # Moments.update
    return COMPILE_S + sum(bench_seconds(c) for c in calls)


def time_moments(report: Report, device, n: int = ROWS) -> None:
    """Centred Gram kernel against torch's full Gram x.T @ x in the same precision."""
    for d in DIMS:
        _time_dim(report, device, n, d)


def _time_dim(report: Report, device, n: int, d: int) -> None:
    case = f"N={n} d={d}"
    x = torch.randn(n, d, device=device)
    flops = 2 * n * d * d  # the full Gram's count; the kernel does about half of it
    nbytes = n * d * 4
    shift = x.mean(0)
    out = torch.zeros(d, d, dtype=torch.float64, device=device)
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        report.time("torch x.T @ x fp32", case, bench_ms(lambda: x.T @ x), flops=flops, nbytes=nbytes)
        report.time("torch.cov fp32 (eager)", case, bench_ms(lambda: torch.cov(x.T, correction=0)),
                    flops=flops, nbytes=nbytes)
        compiled = torch.compile(lambda t: (t - t.mean(0)).T @ (t - t.mean(0)))
        compiled(x)
        report.time("torch.compile centred gram fp32", case, bench_ms(lambda: compiled(x)), flops=flops,
                    nbytes=nbytes)
        torch.backends.cuda.matmul.allow_tf32 = True
        report.time("torch x.T @ x tf32", case, bench_ms(lambda: x.T @ x), flops=flops, nbytes=nbytes)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    for precision, baseline in (("ieee", "torch x.T @ x fp32"), ("tf32x3", "torch x.T @ x fp32"),
                                ("tf32", "torch x.T @ x tf32")):
        ms = bench_ms(lambda: kernel.centered_gram_accumulate(out, x, shift, precision=precision))
        report.time(f"fastgauss centred gram {precision}", case, ms, flops=flops, nbytes=nbytes,
                    baseline=baseline)
    ms = bench_ms(lambda: fastgauss.Moments().update(x))
    report.time("fastgauss Moments.update ieee (end to end)", case, ms, flops=flops, nbytes=nbytes,
                baseline="torch.cov fp32 (eager)")
    del x, out
    torch.cuda.empty_cache()
