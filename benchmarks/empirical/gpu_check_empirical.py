"""gpu_check entries for the empirical denoiser and nearest neighbours."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fastgauss
from fastgauss import reference as ref
from gpu_check_lib import Report, bench_ms

SIGMAS = (0.002, 0.5, 5.0, 80.0)


def _rel(actual, expected) -> float:
    actual = actual.detach().double().cpu()
    if not torch.isfinite(actual).all():
        return float("nan")
    return ((actual - expected).norm() / expected.norm()).item()


def _problem(n: int, d: int, b: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(n, d, generator=g) * 2 - 1
    x = data[torch.randint(0, n, (b,), generator=g)] + 0.3 * torch.randn(b, d, generator=g)
    return data, x


def check_empirical(report: Report, device, *, smoke: bool) -> None:
    n, d, b = (300, 37, 9) if smoke else (5000, 257, 129)
    data, x = _problem(n, d, b, 0)
    dev_data, dev_x = data.to(device), x.to(device)
    den = fastgauss.EmpiricalDenoiser(dev_data)
    for sigma in SIGMAS:
        expected = ref.empirical_denoiser(x, torch.full((b,), sigma, dtype=torch.float64), data)
        modes = {"ieee": 5e-5, "auto": 5e-5}
        if sigma >= 5:  # the low-precision modes are only claimed where their bound holds
            modes.update(tf32=1e-3, bf16=1e-2)
        for mode, tol in modes.items():
            got = den(dev_x, sigma, precision=mode)
            chosen = f" (chose {den.last_precision})" if mode == "auto" else ""
            report.check(f"empirical denoise {mode}", f"N={n} d={d} B={b} sigma={sigma}{chosen}",
                         _rel(got, expected), tol)
    pick = torch.arange(0, n, max(1, n // 7))
    noisy = (data[pick] + 1e-3 * torch.randn(len(pick), d)).to(device)
    report.check("empirical sigma=0.002 returns the training point", f"N={n} d={d}",
                 _rel(den(noisy, 0.002), data[pick].double()), 1e-6)
    if not smoke:
        streamed = fastgauss.EmpiricalDenoiser(data.pin_memory())  # host memory, streamed to the GPU
        report.check("empirical host-streamed equals device-resident", f"N={n} d={d} B={b}",
                     _rel(streamed(dev_x, 0.5), den(dev_x, 0.5).double().cpu()), 1e-5)
        v = torch.randn(b, d)
        _, jv = den.jvp(dev_x[:4], 0.5, v[:4].to(device))
        jac = [ref.empirical_jacobian(x[i], 0.5, data) for i in range(4)]
        report.check("empirical jvp", f"N={n} d={d} B=4", _rel(jv, torch.stack([v[i].double() @ jac[i] for i in range(4)])),
                     1e-4)
    _check_exact_path(report, device, smoke=smoke)
    if not smoke:  # the interpreter's cast truncates: the claim is about CUDA (tests check the PTX)
        check_bf16_rounding(report, device)
    for mode, tol in (("ieee", 1e-5), ("tf32", 1e-3), ("bf16", 2e-2)):  # the A/B's two kernels agree
        before = _legacy(dev_x, 2.0, den, mode).double().cpu()
        report.check("empirical kernel after vs before", f"N={n} d={d} B={b} sigma=2 {mode}",
                     _rel(_after(dev_x, 2.0, den, mode), before), tol)
    dist, idx = fastgauss.nearest_neighbors(dev_x, dev_data, k=3)
    ref_dist, ref_idx = ref.nearest_neighbors(x, data, 3)
    report.check("nearest neighbours (indices differ)", f"N={n} d={d} B={b} k=3",
                 float((idx.cpu() != ref_idx).sum()), 0)
    report.check("nearest neighbours distances", f"N={n} d={d} B={b} k=3", _rel(dist, ref_dist), 1e-6)


def _near_ties(data: torch.Tensor, sigma: float) -> torch.Tensor:
    """Midpoints of two training points, and a point where two candidates are 1 nat apart."""
    mid = torch.stack([(data[0] + data[1]) / 2, (data[2] + data[3]) / 2])
    delta = (data[5] - data[4]).double()
    gap = ((data[4] + data[5]).double() / 2 + (sigma**2 / delta.norm()) * delta / delta.norm()).float()
    return torch.cat([mid, gap[None]])


def _check_exact_path(report: Report, device, *, smoke: bool) -> None:
    """Near ties exact to 1e-5 (issue 10) and J v / dD/dsigma to 1e-4 (|v| + |ref|), fp32 data."""
    n, d = (40, 768) if smoke else (200, 3072)
    g = torch.Generator().manual_seed(3)
    data = torch.rand(n, d, generator=g) * 2 - 1
    den = fastgauss.EmpiricalDenoiser(data.to(device))
    for sigma in (0.002, 0.005, 0.01, 0.05):
        x = _near_ties(data, sigma)
        expected = ref.empirical_denoiser(x, torch.full((3,), sigma, dtype=torch.float64), data)
        got = den(x.to(device), sigma)
        worst = max(_rel(got[b], expected[b]) for b in range(3))
        report.check("empirical near ties exact", f"N={n} d={d} sigma={sigma} ({den.last_precision})", worst, 1e-5)
    v = torch.randn(2, 2, d, generator=g)
    for sigma in (0.002, 0.01, 0.1, 1.0, 80.0):
        x = torch.stack([data[7], _near_ties(data, sigma)[2]])
        _, jv = den.jvp(x.to(device), sigma, v.to(device))
        worst = 0.0
        for b in range(2):
            want = v[:, b].double() @ ref.empirical_jacobian(x[b], sigma, data)
            err = (jv[:, b].double().cpu() - want).norm(dim=1) / (v[:, b].double().norm(dim=1) + want.norm(dim=1))
            worst = max(worst, float(err.max()))
        report.check("empirical J v (err / (|v| + |ref|))", f"N={n} d={d} sigma={sigma}", worst, 1e-4)


def _kernel_before(x, sigma, den):
    """The kernel's fp32 pass as it ran before the exact path (no windows): the same-run baseline."""
    from fastgauss.kernels.empirical import empirical_partial

    m, l, acc = empirical_partial(*_kernel_args(x, sigma, den), precision=("ieee", "ieee"))
    return acc / l[:, None] + den.data.center.to(x.device).float()


def _kernel_args(x, sigma, den):
    """(xc, inv_var, rows, center, norms) as fastgauss.ops.empirical.op passes them to a kernel launcher."""
    data = den.data
    center = data.center.to(x.device)
    xc = (x.double() - center).float().contiguous()
    inv_var = torch.full((x.shape[0],), 1 / sigma**2, device=x.device)
    return xc, inv_var, data.rows, center.float(), data.centred_norms(torch.float32, x.device)


def _legacy(x, sigma, den, mode, splits=None):
    """D from the kernel before the restructure (issue 14), ``splits`` splits of the data."""
    from empirical_legacy import empirical_partial as legacy

    m, l, acc = legacy(*_kernel_args(x, sigma, den), precision=(mode, mode), splits=splits)
    return acc / l[:, None]


def _after(x, sigma, den, mode):
    from fastgauss.kernels.empirical import empirical_partial

    m, l, acc = empirical_partial(*_kernel_args(x, sigma, den), precision=(mode, mode))
    return acc / l[:, None]


def check_bf16_rounding(report: Report, device) -> None:
    """The bf16 mode's pre-rounded operands (torch, fp32 -> bf16) equal the kernel's own rounding."""
    import triton
    import triton.language as tl

    @triton.jit
    def _round(src, dst, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(dst + offs, tl.load(src + offs, mask=offs < n).to(tl.bfloat16), mask=offs < n)

    g = torch.Generator().manual_seed(11)
    values = torch.cat([torch.randn(1 << 16, generator=g) * 3,
                        (torch.arange(1 << 12) + 0.5).float() * 2.0**-7 + 1])  # halfway cases
    src = values.to(device)
    dst = torch.empty(src.shape, dtype=torch.bfloat16, device=device)
    _round[(triton.cdiv(src.numel(), 1024),)](src, dst, src.numel(), BLOCK=1024)
    report.check("bf16 pre-rounding equals the kernel's rounding (values differing)", f"n={src.numel()}",
                 float((dst.view(torch.int16) != src.to(torch.bfloat16).view(torch.int16)).sum()), 0)


def time_kernel_ab(report: Report, device, n: int = 50_000, d: int = 3072, b: int = 1024) -> None:
    """A/B at issue 14's target shape: the kernel before (its 17 splits, and 16 = whole waves)
    against the chunked kernel, tf32 and bf16 (ieee, on FMA, takes seconds a call there)."""
    import triton
    from fastgauss.kernels.empirical import whole_wave_splits

    data = torch.rand(n, d, device=device) * 2 - 1
    den = fastgauss.EmpiricalDenoiser(data)
    x = data[torch.randint(0, n, (b,), device=device)] + 0.3 * torch.randn(b, d, device=device)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    blocks = triton.cdiv(b, 64)  # the old kernel's query blocks (BLOCK_M = 64)
    today, whole = triton.cdiv(2 * sms, blocks), whole_wave_splits(blocks, sms)
    for mode, tol in (("tf32", 1e-3), ("bf16", 2e-2)):
        case = f"N={n} d={d} B={b} sigma=1 {mode}"
        before = _legacy(x, 1.0, den, mode, today)
        report.check("empirical kernel after vs before", case, _rel(_after(x, 1.0, den, mode), before.double().cpu()),
                     tol)
        name = f"empirical kernel before ({today} splits)"
        report.time(name, case, bench_ms(lambda: _legacy(x, 1.0, den, mode, today)), flops=4 * b * n * d)
        report.time(f"empirical kernel before ({whole} splits, whole waves)", case,
                    bench_ms(lambda: _legacy(x, 1.0, den, mode, whole)), flops=4 * b * n * d, baseline=name)
        report.time("empirical kernel after (chunks, acc in registers)", case,
                    bench_ms(lambda: _after(x, 1.0, den, mode)), flops=4 * b * n * d, baseline=name)
    q = 16  # J v multiplies in exact fp32 (FMA): 0.3 s a call at B = 16
    v = torch.randn(1, q, d, device=device)
    report.time("empirical D + J v, one kernel pass", f"N={n} d={d} B={q} K=1 sigma=1 ieee",
                bench_ms(lambda: den.jvp(x[:q], 1.0, v), warmup_ms=1, rep_ms=1), flops=8 * q * n * d)
    del den, data
    torch.cuda.empty_cache()


def time_exact_path(report: Report, device) -> None:
    """What exactness costs on the GPU: N = 50 000, d = 3072, B = 64 and 1024, sigma 0.002 and 1."""
    n, d = 50_000, 3072
    data = torch.rand(n, d, device=device) * 2 - 1
    den = fastgauss.EmpiricalDenoiser(data)
    for b in (64, 1024):
        x = data[torch.randint(0, n, (b,), device=device)] + 0.3 * torch.randn(b, d, device=device)
        for sigma in (0.002, 1.0):
            case = f"N={n} d={d} B={b} sigma={sigma}"
            report.time("kernel fp32 pass (before)", case, bench_ms(lambda: _kernel_before(x, sigma, den)),
                        flops=4 * b * n * d)
            ms = bench_ms(lambda: den(x, sigma))
            report.time(f"fastgauss exact ({den.last_precision})", case, ms, flops=4 * b * n * d,
                        baseline="kernel fp32 pass (before)")


def _paper(x, sigma, data):
    return torch.softmax(-torch.cdist(x, data) ** 2 / (2 * sigma**2), dim=1) @ data


def _sdpa(x, sigma, data):
    bias = (-(data * data).sum(1) / (2 * sigma**2))[None, None, :]
    return F.scaled_dot_product_attention(x[None], data[None], data[None], attn_mask=bias, scale=1 / sigma**2)[0]


def time_empirical(report: Report, device) -> None:
    time_kernel_ab(report, device)
    n, d = 50_000, 3072
    data = (torch.rand(n, d, device=device) * 2 - 1)
    den = fastgauss.EmpiricalDenoiser(data)
    for b in (64, 1024, 8192):
        x = data[torch.randint(0, n, (b,), device=device)] + 0.3 * torch.randn(b, d, device=device)
        flops = 4 * b * n * d
        for sigma in SIGMAS:
            case = f"N={n} d={d} B={b} sigma={sigma}"
            report.time("paper materialized fp32", case, bench_ms(lambda: _paper(x, sigma, data)), flops=flops)
            report.time("sdpa (shared sigma)", case, bench_ms(lambda: _sdpa(x, sigma, data)), flops=flops,
                        baseline="paper materialized fp32")
            for mode in ("ieee", "auto"):
                ms = bench_ms(lambda: den(x, sigma, precision=mode))
                label = f"fastgauss {mode}" + (f" (chose {den.last_precision})" if mode == "auto" else "")
                report.time(label, case, ms, flops=flops, baseline="paper materialized fp32")
        dist_case = f"N={n} d={d} B={b} k=2"
        report.time("torch.cdist + topk", dist_case,
                    bench_ms(lambda: torch.cdist(x, data).topk(2, dim=1, largest=False)), flops=2 * b * n * d)
        report.time("fastgauss nearest_neighbors", dist_case,
                    bench_ms(lambda: fastgauss.nearest_neighbors(x, data, k=2)), flops=2 * b * n * d,
                    baseline="torch.cdist + topk")
    time_exact_path(report, device)
    _largest_batch(report, den, data)
    del den, data
    torch.cuda.empty_cache()
    _time_host_streamed(report, device)


def _largest_batch(report: Report, den, data, sigma: float = 1.0, limit: int = 1 << 18) -> None:
    """The largest B (doubling from 8192) each method runs at N x d before the device runs out."""
    largest = {}
    for name, fn in (("paper materialized fp32", lambda x: _paper(x, sigma, data)),
                     ("fastgauss ieee", lambda x: den(x, sigma))):
        b, ok = 8192, 0
        while b <= limit:
            try:
                x = data[torch.randint(0, data.shape[0], (b,), device=data.device)]
                fn(x)
                torch.cuda.synchronize()
                ok = b
            except torch.cuda.OutOfMemoryError:
                break
            finally:
                x = None
                torch.cuda.empty_cache()
            b *= 2
        largest[name] = {"B": ok, "B x N": ok * data.shape[0], "reached_limit": ok == limit}
        print(f"[size] {name}: largest B = {ok} at N={data.shape[0]} d={data.shape[1]}", flush=True)
    report.meta["largest_batch"] = largest


def _time_host_streamed(report: Report, device, n: int = 1_000_000, d: int = 3072, b: int = 1024) -> None:
    """A training set of a million rows in pinned host memory, streamed through the GPU."""
    host = torch.empty(n, d, pin_memory=True)
    for start in range(0, n, 65536):
        host[start:start + 65536].copy_(torch.rand(min(65536, n - start), d, device=device) * 2 - 1)
    den = fastgauss.EmpiricalDenoiser(host)
    x = torch.rand(b, d, device=device) * 2 - 1
    ms = bench_ms(lambda: den(x, 1.0), warmup_ms=1, rep_ms=1)
    report.time("fastgauss host-streamed", f"N={n} d={d} B={b} sigma=1 (host memory)", ms, flops=4 * b * n * d,
                nbytes=n * d * 4)
