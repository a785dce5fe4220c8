"""gpu_check entries for the Gaussian denoiser: correctness in every mode (the large tiles, aligned
and not, and the bit-identity claims of issue 14), then speed, with the A/B of the issue 14
tiles, tile order and pre-centring against the former ones."""

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
    # (1040, 1040, 1100) reaches the 128 x 128 tiles (aligned), (1037, 1031, 1029) their unaligned
    # fallback: both with partial tiles in every dimension.
    cases = [(7, 7, 5), (70, 33, 19)] if smoke else [(7, 7, 5), (129, 129, 257), (129, 40, 1000), (3072, 384, 513),
                                                     (1040, 1040, 1100), (1037, 1031, 1029)]
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
    _check_operand_bits(report, device, smoke=smoke)
    if not smoke:
        _check_autograd_and_compile(report, device)


def _rne_bf16_bits(v: torch.Tensor) -> torch.Tensor:
    """bf16 bit patterns of finite fp32 values, rounded to nearest even by integer arithmetic."""
    bits = v.contiguous().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) & 0xFFFF


def _bf16_bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int16).to(torch.int64) & 0xFFFF


def _mismatch(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of elements whose bits differ (the checks below allow none)."""
    return (a.cpu() != b.cpu()).double().mean().item()


def _check_operand_bits(report: Report, device, *, smoke: bool) -> None:
    """Issue 14's bit-identity claims on this device: x - mu pre-centred in bf16 is the rounding
    to nearest even of the fp32 difference; C stored in bf16 is the bf16 rounding of the fp32 C
    the same launch writes; the denoiser with and without pre-centring, same tiles and order; and
    at lam_rest = 0 with and without the reconstruction's read of x."""
    b, d, r = (70, 67, 41) if smoke else (1100, 1040, 1040)
    mean, lam, u = _gaussian(d, r, 11, "cpu")
    g = torch.Generator().manual_seed(12)
    x = (torch.randn(b, d, generator=g, dtype=torch.float64) * 3).float().to(device)
    mean32, lam32 = mean.float().to(device), lam.float().to(device)
    xc = kernel.centred_rows(x, mean32, torch.bfloat16)
    report.check("gaussian pre-centred x bf16 RNE bits", f"B={b} d={d}",
                 _mismatch(_bf16_bits(xc), _rne_bf16_bits((x - mean32).cpu())), 0.0)
    sigma = (torch.rand(b, 2, generator=g) + 0.05).to(device)
    rest = torch.full((1,), 0.01, device=device)
    basis = kernel.kernel_basis(u.to(device), "bf16")
    launch = kernel.plan("bf16", b, 2, d, r).project
    shrunk = {t: torch.full((2, b, r), float("nan"), dtype=t, device=device) for t in (torch.float32, torch.bfloat16)}
    for buffer in shrunk.values():
        kernel.project(x, mean32, basis[1], lam32, sigma, rest, buffer, launch, centred=True, precision="bf16")
    report.check("gaussian bf16 C = RNE(fp32 C) bits", f"B={b} d={d} r={r}",
                 _mismatch(_bf16_bits(shrunk[torch.bfloat16]), _rne_bf16_bits(shrunk[torch.float32].cpu())), 0.0)
    for precision in ("tf32", "bf16"):
        basis = kernel.kernel_basis(u.to(device), precision)
        outs = [kernel.denoise(x, sigma, mean32, lam32, basis[0], rest, output="denoised", precision=precision,
                               eigvecs_t=basis[1], centre=centre) for centre in (False, True)]
        report.check(f"gaussian pre-centred = in-kernel {precision}", f"B={b} d={d} r={r}",
                     _mismatch(outs[0], outs[1]), 0.0)
    zero = torch.zeros(1, device=device)
    for precision in ("ieee", "tf32", "bf16"):  # lam_rest = 0: D without the second read of x, same values
        basis = kernel.kernel_basis(u.to(device), precision)
        outs = [kernel.denoise(x, sigma, mean32, lam32, basis[0], zero, output="denoised", precision=precision,
                               eigvecs_t=basis[1], rest_zero=once) for once in (False, True)]
        report.check(f"gaussian x read once = twice (lam_rest 0) {precision}", f"B={b} d={d} r={r}",
                     _mismatch(outs[0], outs[1]), 0.0)


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
    parts.append(Part("gaussian", "gaussian kernels A/B (issue 14) d=3072 B=8192", 1, _estimate_ab(), _time_ab))
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


#: The issue 14 A/B per precision: (label, launcher keywords); "before" is the former tiles (128 x
#: 64 tensor-core, 128 x 32 exact-fp32 reading the basis K-major, 4-warp small tiles) in the former
#: order (row blocks fastest), pre-centred as now, so the rows isolate tiles and order; "in-kernel
#: centring" is today's tensor-core tiles with x - mu formed in the projection (ieee always forms
#: it there); "x read once" the reconstruction that skips x when lam_rest = 0 (the rows above read
#: it again, as a lam_rest > 0 does; the rest here is 0, so both give the same D), tensor cores
#: only: the FMA path is bound by its products even at r = 256.
_ONCE = ("tuned, x read once (lam_rest = 0)", dict(variant="tuned", rest_zero=True))
_AB_MMA = (("before (128x64, rows fastest)", dict(variant="before")),
           ("tuned (128x128x32, GROUP_M=8)", dict(variant="tuned")),
           ("tuned, in-kernel centring", dict(variant="tuned", centre=False)), _ONCE)
AB_VARIANTS = {"ieee": (("before (128x32, rows fastest)", dict(variant="before")),
                        ("tuned (128x128x16, GROUP_M=8)", dict(variant="tuned"))),
               "tf32": _AB_MMA, "bf16": _AB_MMA}
AB_SHAPE = (8192, 3072)


def _variants(variants, d: int, r: int):
    """The A/B rows timed at (d, r): "x read once" only at r < d / 4, where reading x again is a
    large share of the call (at r = d the products dwarf it)."""
    return [v for v in variants if r < d / 4 or not v[1].get("rest_zero")]


def _estimate_ab() -> float:
    b, d = AB_SHAPE
    total = d * d / 5e7 + call_seconds(4 / 3 * d**3, kind="fp64")  # draws, QR
    for r in (d, 256):
        for precision, variants in AB_VARIANTS.items():
            kind = "fp32" if precision == "ieee" else precision
            call = call_seconds(4 * b * d * r, kind=kind, nbytes=2 * b * d * 4, launches=3)
            total += len(_variants(variants, d, r)) * (bench_seconds(call) + 4.0)  # + a JIT compile each
    return total


def _time_ab(report: Report, device) -> None:
    """The Gaussian launcher alone (no op overhead) at B = 8192, d = 3072, r = d and 256, T = 1:
    TFLOP/s of the 4 B d r product flops and GB/s of the HBM floor (read x, write D)."""
    b, d = AB_SHAPE
    mean, lam, u = _gaussian(d, d, 5, device)
    x = torch.randn(b, d, device=device)
    sigma = torch.rand(b, 1, device=device) * 5 + 0.01
    rest = torch.zeros(1, device=device)
    for r in (d, 256):
        lam_r = lam[:r].float().contiguous()
        for precision, variants in AB_VARIANTS.items():
            u_r, u_t = kernel.kernel_basis(u[:, :r], precision)
            case = f"d={d} r={r} B={b} T=1"
            baseline = None
            for label, options in _variants(variants, d, r):
                name = f"gaussian kernels {precision} {label}"
                call = functools.partial(kernel.denoise, x, sigma, mean.float(), lam_r, u_r, rest, output="denoised",
                                         precision=precision, eigvecs_t=u_t, **options)
                report.time(name, case, bench_ms(call), flops=4 * b * d * r, nbytes=2 * b * d * 4, baseline=baseline)
                baseline = baseline or name
            del u_r, u_t
    del mean, lam, u, x
    torch.cuda.empty_cache()
