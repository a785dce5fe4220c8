"""gpu_check entries for the Gaussian denoiser: correctness in every mode, then speed."""

from __future__ import annotations

import functools

import torch

import fastgauss
from fastgauss import reference as ref
from fastgauss.kernels import gaussian as kernel
from gpu_check_lib import COMPILE_S, Part, Report, bench_ms, bench_seconds, call_seconds

#: Relative Frobenius error allowed against float64, by product mode.
TOLERANCE = {"ieee": 2e-5, "tf32": 5e-3, "bf16": 2e-2}


def _rel(actual, expected) -> float:
    actual = actual.detach().double().cpu()
    if not torch.isfinite(actual).all():
        return float("nan")
    return ((actual - expected).norm() / expected.norm()).item()


def _gaussian(d: int, r: int, seed: int, device):
    """(mean [d], eigvals [r], eigvecs [d, r]) float64 on ``device``: the random draws on the host
    (the same on any machine), the QR on ``device`` (seconds on a GPU at d = 12288, not a minute)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    mean = torch.randn(d, generator=g, dtype=torch.float64) * 0.3
    u = torch.linalg.qr(a.to(device))[0][:, :r].contiguous()
    lam = torch.logspace(1, -4, r, dtype=torch.float64, device=device)
    return mean.to(device), lam, u


def check_gaussian(report: Report, device, *, smoke: bool) -> None:
    cases = [(7, 7, 5), (70, 33, 19)] if smoke else [(7, 7, 5), (129, 129, 257), (129, 40, 1000), (3072, 384, 513)]
    for precision in kernel.PRECISIONS:
        for i, (d, r, b) in enumerate(cases):
            mean, lam, u = _gaussian(d, r, i, "cpu")
            den = fastgauss.GaussianDenoiser(mean, lam, u, lam_rest=1e-3 if i % 2 else 0.0).to(device)
            g = torch.Generator().manual_seed(100 + i)
            x = torch.randn(b, d, generator=g, dtype=torch.float64)
            s = torch.exp(torch.empty(b, dtype=torch.float64).uniform_(-6, 4.4, generator=g))
            s[0], s[-1] = 0.0, 80.0
            expected = ref.gaussian_denoiser(x, s, mean, lam, u, float(den.lam_rest))
            got = den(x.float().to(device), s.float().to(device), precision=precision)
            report.check(f"gaussian denoise {precision}", f"d={d} r={r} B={b}", _rel(got, expected), TOLERANCE[precision])
            grid = torch.rand(b, 4, generator=g, dtype=torch.float64) * 3 + 0.01
            multi = den(x.float().to(device), grid.float().to(device), precision=precision, output="score")
            levels = torch.stack([ref.gaussian_denoiser(x, grid[:, t], mean, lam, u, float(den.lam_rest)) for t in range(4)])
            report.check(f"gaussian score 4 levels {precision}", f"d={d} r={r} B={b}",
                         _rel(multi, (levels - x) / grid.T[..., None] ** 2), TOLERANCE[precision])
    if not smoke:
        _check_autograd_and_compile(report, device)


def _check_autograd_and_compile(report: Report, device) -> None:
    mean, lam, u = _gaussian(129, 100, 7, "cpu")
    den = fastgauss.GaussianDenoiser(mean, lam, u).to(device)
    x = torch.randn(64, 129, device=device)
    v = torch.randn(64, 129, device=device)
    _, tangent = torch.func.jvp(lambda t: den(t, 0.5), (x,), (v,))
    jac = ref.gaussian_jacobian(0.5, lam, u)
    report.check("gaussian torch.func.jvp (kernel forward)", "d=129 r=100 B=64", _rel(tangent, v.double().cpu() @ jac),
                 TOLERANCE["ieee"])
    compiled = torch.compile(lambda t, s: den(t, s) * 2.0)
    s = torch.rand(64, device=device) + 0.1
    report.check("gaussian inside torch.compile", "d=129 r=100 B=64", _rel(compiled(x, s), (den(x, s) * 2.0).double().cpu()),
                 1e-6)


def _paper(x, level, mean, lam, u):
    s = torch.diag(lam / (lam + level**2))
    return mean + (u @ s @ u.T @ (x - mean).T).T


def _eager(x, sigma, mean, lam, u):
    c = (x - mean) @ u
    return mean + (c * (lam / (lam + sigma[:, None] ** 2))) @ u.T


#: Timed grid: d, then r for each d, then (B, levels).
DIMS = (3072, 12288)


def _grid(d: int):
    for r in (d, d // 8):
        for b in ((64, 1024, 8192) if d <= 3072 else (1024, 8192)):  # keeps the run within minutes
            for levels in ((1, 10) if b == 1024 else (1,)):
                yield r, b, levels


def timing_parts() -> list[Part]:
    """The timed parts, each with its estimated duration (from the grid above) and priority."""
    parts = [Part("gaussian", f"gaussian d={d}", 1 if d <= 3072 else 3, _estimate_dim(d),
                  functools.partial(_time_dim, d=d)) for d in DIMS]
    parts.append(Part("gaussian", "gaussian sampling d=3072", 2, _estimate_sampling(), _time_sampling))
    return parts


def time_gaussian(report: Report, device) -> None:
    for part in sorted(timing_parts(), key=lambda p: p.priority):
        part.run(report, device)


def _time_dim(report: Report, device, d: int) -> None:
    compiled = torch.compile(_eager, dynamic=True)
    mean, lam, u = _gaussian(d, d, 0, device)
    for r in (d, d // 8):
        u_r, lam_r = u[:, :r].contiguous(), lam[:r].contiguous()
        den = fastgauss.GaussianDenoiser(mean, lam_r, u_r)
        den_bf16 = fastgauss.GaussianDenoiser(mean, lam_r, u_r, eigvec_dtype=torch.bfloat16)
        for rr, b, levels in _grid(d):
            if rr == r:
                _time_case(report, device, d, r, b, levels, mean, lam_r, u_r, den, den_bf16, compiled)
        del den, den_bf16
    del mean, lam, u
    torch.cuda.empty_cache()


def _estimate_dim(d: int) -> float:
    """Seconds for _time_dim(d): the float64 QR on the host, one torch.compile, then per case
    the benches of _time_case, each from its FLOP count at the assumed rates."""
    total = d * d / 5e7 + call_seconds(4 / 3 * d**3, kind="fp64") + COMPILE_S  # draws, QR, compile
    for r, b, levels in _grid(d):
        per_level = 2 * b * d * r * 2
        paper = call_seconds(2 * (d * r * r + d * d * r + d * d * b) * levels, kind="fp64", launches=3 * levels)
        fused = call_seconds(2 * b * d * r * (1 + levels), launches=2)
        calls = [paper,
                 call_seconds(per_level * levels, launches=4 * levels),           # eager fp32
                 call_seconds(per_level * levels, kind="tf32", launches=4 * levels),
                 call_seconds(per_level * levels, launches=4 * levels),           # compiled fp32
                 call_seconds(per_level * levels, kind="bf16", launches=4 * levels),
                 fused, call_seconds(2 * b * d * r * (1 + levels), kind="tf32", launches=2),
                 call_seconds(2 * b * d * r * (1 + levels), kind="bf16", launches=2)]
        if levels == 1:
            calls.append(fused)  # shared sigma
        total += sum(bench_seconds(c) for c in calls)
    return total


def _estimate_sampling(d: int = 3072, b: int = 1024) -> float:
    heun = call_seconds(35 * 2 * b * d * d * 2, launches=35 * 4)
    return 2 * bench_seconds(heun) + bench_seconds(call_seconds(4 * b * d * d)) + d * d / 5e7


def _time_case(report, device, d, r, b, levels, mean, lam, u, den, den_bf16, compiled) -> None:
    case = f"d={d} r={r} B={b} T={levels}"
    x = torch.randn(b, d, device=device)
    grid = torch.rand(b, levels, device=device) * 5 + 0.01
    flops = 2 * b * d * r * (1 + levels)  # one projection, T reconstructions; 4 B d r at T = 1
    f32 = dict(mean=mean.float(), lam=lam.float(), u=u.float())
    x64, f64 = x.double(), dict(mean=mean, lam=lam, u=u)
    shared = grid[0].tolist()
    report.time("paper float64 dense diag", case, bench_ms(lambda: [_paper(x64, s, **f64) for s in shared]),
                flops=flops)
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        for label, tf32 in (("fp32", False), ("tf32", True)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            report.time(f"torch eager {label}", case,
                        bench_ms(lambda: [_eager(x, grid[:, t], **f32) for t in range(levels)]), flops=flops)
        torch.backends.cuda.matmul.allow_tf32 = False
        report.time("torch.compile eager fp32", case,
                    bench_ms(lambda: [compiled(x, grid[:, t], **f32) for t in range(levels)]), flops=flops)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    bf = dict(mean=mean.bfloat16(), lam=lam.bfloat16(), u=u.bfloat16())
    xb = x.bfloat16()
    report.time("torch eager bf16", case, bench_ms(lambda: [_eager(xb, grid[:, t].bfloat16(), **bf)
                                                            for t in range(levels)]), flops=flops)
    sigma = grid if levels > 1 else grid[:, 0]
    for precision, baseline in (("ieee", "torch eager fp32"), ("tf32", "torch eager tf32")):
        report.time(f"fastgauss per-sample {precision}", case, bench_ms(lambda: den(x, sigma, precision=precision)),
                    flops=flops, baseline=baseline)
    report.time("fastgauss per-sample bf16", case, bench_ms(lambda: den_bf16(x, sigma)), flops=flops,
                baseline="torch eager bf16")
    if levels == 1:
        den(x, shared[0])  # builds and caches the operator when the route pays
        report.time("fastgauss shared sigma ieee", case, bench_ms(lambda: den(x, shared[0])), flops=4 * b * d * r,
                    baseline="torch eager fp32")


def _time_sampling(report: Report, device) -> None:
    d, r, b = 3072, 3072, 1024
    mean, lam, u = _gaussian(d, r, 3, device)
    den = fastgauss.GaussianDenoiser(mean, lam, u)
    latents = torch.randn(b, d, device=device)
    sig = fastgauss.edm_sigmas(18, device=device)
    case = f"d={d} r={r} B={b} 18 levels"
    exact = den.sample(latents, sig).double().cpu()
    report.time("heun 18 steps (35 Gaussian calls)", case, bench_ms(lambda: fastgauss.sample_heun(den, latents, sig)))
    report.time("fastgauss closed-form sample", case, bench_ms(lambda: den.sample(latents, sig)),
                baseline="heun 18 steps (35 Gaussian calls)")
    heun = fastgauss.sample_heun(den, latents, sig).double().cpu()
    report.meta["heun18_vs_exact_rel_error"] = ((heun - exact).norm() / exact.norm()).item()
