"""gpu_check entries for the nearest-neighbour candidate kernel: its error against the bound the
re-rank relies on (every product mode, on the hardware), then the A/B launch geometries of issue 14."""

from __future__ import annotations

import torch
import triton

from fastgauss.ops.neighbors import op as nn
from fastgauss.kernels import neighbors as kernel
from fastgauss.kernels._common import multiprocessors
from gpu_check_lib import Part, Report, bench_ms, bench_seconds, call_seconds


def _inputs(b: int, n: int, d: int, device, seed: int, offset: float = 3.0):
    """Queries near training rows, data with a common offset (large products, small differences)."""
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(n, d, generator=g) * 2 - 1 + offset
    x = data[torch.randint(0, n, (b,), generator=g)] + 0.05 * torch.randn(b, d, generator=g)
    data, x = data.to(device), x.to(device)
    summary = nn._summary(data, data)
    a = (x.double() - summary.center).float()
    args = (a.contiguous(), (a.double() ** 2).sum(1).float(), data, summary.center.float(), summary.norms.float())
    return x, data, summary, a, args


def check_neighbor_kernel(report: Report, device, *, smoke: bool) -> None:
    """max |fp32 distance - float64 distance| / bound over every candidate returned, per mode (<= 1:
    the bound of dot_error holds on this hardware, so the float64 re-rank is exact)."""
    b, n, d = (5, 150, 37) if smoke else (256, 20_000, 3072)
    x, data, summary, a, args = _inputs(b, n, d, device, seed=11)
    for precision in kernel.PRECISIONS:
        dist, idx = kernel.nn_candidates(*args, kernel.MAX_CANDIDATES, precision=precision)
        exact = ((data[idx.reshape(-1)].double().reshape(b, -1, d) - x.double()[:, None]) ** 2).sum(-1)
        bound = nn._error_bound(a, summary, kernel.dot_error(d, precision), 2.0**-24)
        ratio = ((dist.double() - exact).abs() / bound[:, None]).max()
        report.check(f"nn candidates {precision} error / bound", f"N={n} d={d} B={b} offset=3", float(ratio), 1.0)


#: A/B shape of issue 14: B queries, N rows, d features.
B, N, D = 1024, 50_000, 3072


def _old_plan(query_blocks: int, sms: int) -> kernel.SplitPlan:
    """Before issue 14: cdiv(2 SMs, query blocks) splits of cdiv(N, splits) rows."""
    splits = max(1, min(triton.cdiv(2 * sms, query_blocks), triton.cdiv(N, kernel.BLOCK_N)))
    rows = triton.cdiv(N, splits)
    return kernel.SplitPlan(query_blocks, triton.cdiv(N, rows), rows)


def time_neighbor_plans(report: Report, device) -> None:
    """The candidate kernel alone: the old tiles and splits, each change of issue 14 apart, then all."""
    _, _, _, _, args = _inputs(B, N, D, device, seed=12)
    sms = multiprocessors(device)
    ieee, tf32x3, sm90 = kernel.CONFIGS["ieee"], kernel.CONFIGS["tf32x3"], kernel.CONFIGS_SM90["tf32x3"]
    direct = kernel.IEEE_DIRECT  # x' Y'^T, the form before the transposed products
    new_ieee = kernel.split_plan(B, N, sms, ieee.ctas_per_sm)
    cases = [("32x64 ieee, cdiv splits (before)", "ieee", 32, _old_plan(triton.cdiv(B, 32), sms), direct),
             ("64x64 ieee, cdiv splits", "ieee", 64, _old_plan(triton.cdiv(B, 64), sms), direct),
             ("64x64 ieee, wave-rounded splits", "ieee", 64, new_ieee, direct),
             ("64x64 ieee, wave-rounded splits, transposed products", "ieee", 64, new_ieee, ieee),
             ("64x64 tf32x3 8 warps, wave-rounded splits", "tf32x3", 64,
              kernel.split_plan(B, N, sms, tf32x3.ctas_per_sm), tf32x3),
             ("64x64 tf32x3 4 warps, wave-rounded splits (after)", "tf32x3", 64,
              kernel.split_plan(B, N, sms, sm90.ctas_per_sm), sm90)]
    first = None
    for label, precision, block_m, plan, cfg in cases:
        name = f"nn kernel {label}"
        case = f"N={N} d={D} B={B} grid={plan.grid[0]}x{plan.grid[1]}"
        ms = bench_ms(lambda: kernel.nn_candidates(*args, 2, precision=precision, plan=plan, block_m=block_m,
                                                   config=cfg))
        report.time(name, case, ms, flops=2 * B * N * D)
        if first is None:
            first = report.timings[-1]
        else:  # against the "before" row (its case names its own grid)
            report.timings[-1].baseline, report.timings[-1].speedup = first.name, first.ms / ms
    del args
    torch.cuda.empty_cache()


def timing_parts() -> list[Part]:
    """One part: six kernel timings of 2 B N d FLOP each (fp32 and tf32x3 rates)."""
    flops = 2 * B * N * D
    estimate = 4 * bench_seconds(call_seconds(flops)) + 2 * bench_seconds(call_seconds(3 * flops, kind="tf32")) + 10
    return [Part("empirical", f"nearest-neighbour kernel A/B N={N} d={D} B={B}", 2, estimate, time_neighbor_plans)]
