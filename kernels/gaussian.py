"""Gaussian denoiser in the covariance eigenbasis: project, shrink per row and level, reconstruct.

    C = (X - mu) U                                        [B, r]   (_project_kernel)
    out[t, b] = mu + a_bt (x_b - mu) + sum_k C[b, k] (w_k(sigma_bt) - a_bt) U[:, k]^T
                                                           [T, B, d] (_reconstruct_kernel)
with w_k(s) = lambda_k / (lambda_k + s^2) (0 where lambda_k + s^2 = 0) and a(s) the same for
lambda_rest (0 when discarded directions map to mu). The second launch forms the shrunk
operand in its prologue and writes D, the score (D - x) / s^2 or eps (x - D) / s in its
epilogue, for T noise levels from one projection. Two launches because the reconstruction
needs every column of C: fusing them would need a grid-wide barrier.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import TileConfig, mma

PRECISIONS = ("ieee", "tf32", "bf16")
OUTPUTS = {"denoised": 0, "score": 1, "eps": 2}


@triton.jit
def _shrink(lam, sigma):
    """lambda / (lambda + sigma^2), with 0 where both vanish (a flat direction at sigma = 0)."""
    denom = lam + sigma * sigma
    return tl.where(denom > 0, lam / tl.where(denom > 0, denom, 1.0), 0.0)


@triton.jit
def _project_kernel(
    x_ptr, mean_ptr, u_ptr, eigvals_ptr, sigma_ptr, rest_ptr, cs_ptr,
    n_rows, n_levels, dim, rank,
    stride_x, stride_u,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """cs[t, b, k] = ((x_b - mu) . u_k) (w_k(sigma_bt) - a(sigma_bt)) for every level t."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = rows < n_rows
    mask_n = cols < rank
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < dim
        x = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + ks[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        mu = tl.load(mean_ptr + ks, mask=mask_k, other=0.0)
        centred = tl.where(mask_m[:, None] & mask_k[None, :], x - mu[None, :], 0.0)
        u = tl.load(u_ptr + ks[:, None].to(tl.int64) * stride_u + cols[None, :],
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = mma(centred, u, acc, PRECISION, EMULATE_BF16)
    lam = tl.load(eigvals_ptr + cols, mask=mask_n, other=0.0)
    lam_rest = tl.load(rest_ptr)
    mask = mask_m[:, None] & mask_n[None, :]
    # The launcher keeps T * B * r under 2^31: int32 offsets.
    offs = rows[:, None] * rank + cols[None, :]
    for level in range(0, n_levels):
        sigma = tl.load(sigma_ptr + rows * n_levels + level, mask=mask_m, other=1.0)
        weight = _shrink(lam[None, :], sigma[:, None]) - _shrink(lam_rest, sigma)[:, None]
        tl.store(cs_ptr + level * n_rows * rank + offs, acc * weight, mask=mask)


@triton.jit
def _reconstruct_kernel(
    cs_ptr, x_ptr, mean_ptr, u_ptr, sigma_ptr, rest_ptr, out_ptr,
    n_rows, n_levels, dim, rank, output_mode,
    stride_u,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """out[t, b] = x_b + (a_bt - 1)(x_b - mu) + cs[t, b] @ U^T, or the score or eps from it."""
    # x and out rows are contiguous ([B, d] and [T, B, d]) and the launcher keeps T * B * d
    # under 2^31, so in-tile offsets are int32 (int64 tiles cost the epilogue registers).
    pid_m = tl.program_id(0)  # over T * B rows, level-major: m = t * B + b
    pid_n = tl.program_id(1)  # over the d output columns
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = m < n_rows * n_levels
    mask_n = cols < dim
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < rank
        cs = tl.load(cs_ptr + m[:, None] * rank + ks[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        u_t = tl.load(u_ptr + cols[None, :].to(tl.int64) * stride_u + ks[:, None],
                      mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = mma(cs, u_t, acc, PRECISION, EMULATE_BF16)
    row = m % n_rows
    sigma = tl.load(sigma_ptr + row * n_levels + m // n_rows, mask=mask_m, other=1.0)
    base = _shrink(tl.load(rest_ptr), sigma)  # a(sigma): weight of the directions outside span(U)
    mask = mask_m[:, None] & mask_n[None, :]
    x = tl.load(x_ptr + row[:, None] * dim + cols[None, :], mask=mask, other=0.0)
    mu = tl.load(mean_ptr + cols, mask=mask_n, other=0.0)
    # D - x = (a - 1)(x - mu) + acc: the score and eps need no second pass.
    moved = (base[:, None] - 1.0) * (x - mu[None, :]) + acc
    if output_mode == 0:
        result = x + moved
    elif output_mode == 1:
        result = moved / (sigma * sigma)[:, None]
    else:
        result = -moved / sigma[:, None]
    tl.store(out_ptr + m[:, None] * dim + cols[None, :], result, mask=mask)


#: Launch configurations by (precision family, size); the compile gate builds each of them.
#: 128 x 128 tiles spill: the epilogues hold the accumulator, x and the shrink weights.
#: The exact-fp32 "large" tile is 128 x 32 (16 accumulators a thread at 8 warps). Registers the
#: gate read for [large,ieee] (project sm_80/sm_90, reconstruct sm_80/sm_90), Triton 3.6 | 3.9:
#:   128x64 8 warps   255+64 B spill / 226 / 218 / 222  |  213 / 199 / 218 / 210
#:   128x64 16 warps  121 / 114 / 128 (at the 512-thread cap) / 112  |  reconstruct sm_80 spills 8 B
#:   64x128 8 warps   255+64 B spill on sm_80 (3.6);  128x32 4 warps  255 (project, 3.6)
#:   128x32 8 warps   133 / 134 / 145 / 150  |  121 / 143 / 126 / 154   <- chosen, no spill anywhere
#: (BLOCK_K 8 does not compile: tl.dot needs K >= 16.)
CONFIGS = {
    ("fma", "small"): TileConfig(64, 64, 16, 8, 3),
    ("fma", "large"): TileConfig(128, 32, 16, 8, 3),
    ("mma", "small"): TileConfig(64, 64, 32, 4, 3),
    ("mma", "large"): TileConfig(128, 64, 32, 8, 3),
}


def choose_config(precision: str, rows: int, cols: int) -> TileConfig:
    family = "fma" if precision == "ieee" else "mma"
    return CONFIGS[(family, "large" if min(rows, cols) >= 1024 else "small")]


def _interpreting(t: torch.Tensor) -> bool:
    return t.device.type != "cuda"


#: Largest element offset the kernels compute in int32.
_INT32_LIMIT = 2**31 - 1


def denoise(x, mean, eigvecs, eigvals, sigma, lam_rest, *, output: str, precision: str) -> torch.Tensor:
    """Gaussian denoiser for T levels in two launches: returns [T, B, d] float32.

    x: [B, d] float32 contiguous; mean: [d] float32; eigvecs: [d, r] float32 or bfloat16 with
    unit column stride; eigvals: [r] float32; sigma: [B, T] float32 contiguous; lam_rest: [1]
    float32 (0: discarded directions map to mu); output: "denoised", "score" or "eps";
    precision: "ieee", "tf32" or "bf16".
    """
    n, d = x.shape
    r = eigvecs.shape[1]
    levels = sigma.shape[1]
    out = torch.empty((levels, n, d), dtype=torch.float32, device=x.device)
    # Row chunks keep every in-kernel offset within int32.
    chunk = max(1, _INT32_LIMIT // (levels * max(d, r)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        _denoise_rows(x[start:stop], mean, eigvecs, eigvals, sigma[start:stop], lam_rest,
                      out[:, start:stop], output=output, precision=precision)
    return out


def _denoise_rows(x, mean, eigvecs, eigvals, sigma, lam_rest, out, *, output, precision):
    n, d = x.shape
    r = eigvecs.shape[1]
    levels = sigma.shape[1]
    staged = out if out.is_contiguous() else torch.empty_like(out)
    shrunk = torch.empty((levels, n, r), dtype=torch.float32, device=x.device)
    emulate = x.device.type != "cuda"
    cfg = choose_config(precision, n, r)
    _project_kernel[(triton.cdiv(n, cfg.block_m), triton.cdiv(r, cfg.block_n))](
        x, mean, eigvecs, eigvals, sigma, lam_rest, shrunk, n, levels, d, r, x.stride(0), eigvecs.stride(0),
        PRECISION=precision, EMULATE_BF16=emulate, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    cfg = choose_config(precision, n * levels, d)
    _reconstruct_kernel[(triton.cdiv(n * levels, cfg.block_m), triton.cdiv(d, cfg.block_n))](
        shrunk, x, mean, eigvecs, sigma, lam_rest, staged, n, levels, d, r, OUTPUTS[output], eigvecs.stride(0),
        PRECISION=precision, EMULATE_BF16=emulate, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if staged is not out:
        out.copy_(staged)


def gate_entries():
    """(name, kernel, signature, constexprs, num_warps, num_stages, expect_mma) for the compile gate."""
    for (family, size), cfg in CONFIGS.items():
        for precision in (("ieee",) if family == "fma" else ("tf32", "bf16")):
            u_type = "*bf16" if precision == "bf16" else "*fp32"
            common = {"PRECISION": precision, "EMULATE_BF16": False, "BLOCK_M": cfg.block_m,
                      "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k}
            project_sig = {"x_ptr": "*fp32", "mean_ptr": "*fp32", "u_ptr": u_type, "eigvals_ptr": "*fp32",
                           "sigma_ptr": "*fp32", "rest_ptr": "*fp32", "cs_ptr": "*fp32",
                           "n_rows": "i32", "n_levels": "i32", "dim": "i32", "rank": "i32",
                           "stride_x": "i32", "stride_u": "i32", **{k: "constexpr" for k in common}}
            yield (f"gaussian_project[{size},{precision}]", _project_kernel, project_sig, common,
                   cfg.num_warps, cfg.num_stages, precision != "ieee")
            recon_sig = {"cs_ptr": "*fp32", "x_ptr": "*fp32", "mean_ptr": "*fp32", "u_ptr": u_type,
                         "sigma_ptr": "*fp32", "rest_ptr": "*fp32", "out_ptr": "*fp32",
                         "n_rows": "i32", "n_levels": "i32", "dim": "i32", "rank": "i32", "output_mode": "i32",
                         "stride_u": "i32", **{k: "constexpr" for k in common}}
            yield (f"gaussian_reconstruct[{size},{precision}]", _reconstruct_kernel, recon_sig, common,
                   cfg.num_warps, cfg.num_stages, precision != "ieee")


def gate_targets(sms: int = 132):
    """(entry name, shape label, int args, grid) of each launch at the target shapes B = 8192,
    d = 3072 and 12 288, r = d, d / 8 (gpu_check's) and 256, T = 1 level, output "denoised", on a
    GPU with ``sms`` SMs, for the compile gate. Repeats the launcher's arithmetic (choose_config,
    the grids of _denoise_rows)."""
    n, levels = 8192, 1
    for d in (3072, 12288):
        for r in (d, d // 8, 256):
            for precision in PRECISIONS:
                family = "fma" if precision == "ieee" else "mma"
                label = f"B={n},d={d},r={r}"
                cfg = choose_config(precision, n, r)
                size = "large" if cfg is CONFIGS[(family, "large")] else "small"
                yield (f"gaussian_project[{size},{precision}]", label,
                       {"n_rows": n, "n_levels": levels, "dim": d, "rank": r, "stride_x": d, "stride_u": r},
                       (triton.cdiv(n, cfg.block_m), triton.cdiv(r, cfg.block_n)))
                cfg = choose_config(precision, n * levels, d)
                size = "large" if cfg is CONFIGS[(family, "large")] else "small"
                yield (f"gaussian_reconstruct[{size},{precision}]", label,
                       {"n_rows": n, "n_levels": levels, "dim": d, "rank": r, "output_mode": OUTPUTS["denoised"],
                        "stride_u": r},
                       (triton.cdiv(n * levels, cfg.block_m), triton.cdiv(d, cfg.block_n)))
