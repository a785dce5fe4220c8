"""Gaussian denoiser in the covariance eigenbasis: project, shrink per row and level, reconstruct.

    C = (X - mu) U                                        [B, r]   (_project_kernel)
    out[t, b] = mu + a_bt (x_b - mu) + sum_k C[b, k] (w_k(sigma_bt) - a_bt) U[:, k]^T
                                                           [T, B, d] (_reconstruct_kernel)
with w_k(s) = lambda_k / (lambda_k + s^2) (0 where lambda_k + s^2 = 0) and a(s) the same for
lambda_rest (0 when discarded directions map to mu). The second launch forms the shrunk
operand in its prologue and writes D, the score (D - x) / s^2 or eps (x - D) / s in its
epilogue, for T noise levels from one projection. Two launches because the reconstruction
needs every column of C: fusing them would need a grid-wide barrier. When lam_rest = 0 (the
builders' default) and D is wanted, a = 0 and the reconstruction does not read x at all
(READ_X): x is read once per call, the HBM floor's count.

The basis tiles follow the product path (``basis_transposed``): K-major for wgmma (U^T for the
projection, U for the reconstruction), N-contiguous for the FMA dot of the ieee mode (U, U^T).

Operands (issue 14): both tl.dot operands are loaded straight from memory, so they stay in
shared memory and feed wgmma. The projection reads U^T ([r, d], contiguous, cached with the
eigenbasis by GaussianDenoiser) so its B tile is K-major with 16-byte loads. At the large
tensor-core tiles x - mu is formed once per call (centred_rows; bf16 in bf16 mode: the same
round-to-nearest-even of the same fp32 difference the projection formed in registers before,
so the same bits); elsewhere the projection still subtracts mu in registers, where reading x
bounds it. In bf16 mode C is stored in bf16, the rounding the reconstruction's dot applied anyway.

Tile order (GROUP_M): a 1-D grid walks GROUP_M row blocks across every column block before the
next rows. At B = 8192, d = r = 3072 (128 x 128 tiles: 64 x 24, 132 resident CTAs) rows fastest
would span all 64 row blocks of ~2 column blocks, re-reading x (100 MB fp32) ~12 times; GROUP_M
= 8 spans 8 row blocks x ~16 column blocks, so a group's x rows (12.6 MB) stay in L2: x ~1x and
U (38 MB) 8 times, largely from L2. At d = r = 12 288: 7.2 GB of traffic against 19.7 GB.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import TileConfig, bf16_value, grouped_tile, mma, rounded_to

PRECISIONS = ("ieee", "tf32", "bf16")
OUTPUTS = {"denoised": 0, "score": 1, "eps": 2}
#: Row blocks per group of the tile order (see the module docstring).
GROUP_M = 8
#: GROUP_M of the former order (row blocks fastest over the whole grid): benchmarks only.
ROWS_FASTEST = 1 << 16


@triton.jit
def _shrink(lam, sigma):
    """lambda / (lambda + sigma^2), with 0 where both vanish (a flat direction at sigma = 0)."""
    denom = lam + sigma * sigma
    return tl.where(denom > 0, lam / tl.where(denom > 0, denom, 1.0), 0.0)


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr):
    """acc + a @ b in the product mode; interpreted bf16 rounds both operands to nearest even
    as the GPU does, then multiplies exactly in fp32."""
    if PRECISION == "bf16" and EMULATE_BF16:
        result = tl.dot(bf16_value(a), bf16_value(b), acc, input_precision="ieee")
    else:
        result = mma(a, b, acc, PRECISION, False)
    return result


@triton.jit
def _centre_kernel(x_ptr, mean_ptr, xc_ptr, n_rows, dim, stride_x,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """xc[b] = x_b - mu ([B, d] contiguous), rounded to xc's dtype (bf16: to nearest even)."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < n_rows)[:, None] & (cols < dim)[None, :]
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    mu = tl.load(mean_ptr + cols, mask=cols < dim, other=0.0)
    xc = (x - mu[None, :]).to(xc_ptr.dtype.element_ty)
    tl.store(xc_ptr + rows.to(tl.int64)[:, None] * dim + cols[None, :], xc, mask=mask)


@triton.jit
def _project_kernel(
    x_ptr, mean_ptr, basis_ptr, eigvals_ptr, sigma_ptr, rest_ptr, cs_ptr,
    n_rows, n_levels, dim, rank, stride_x,
    CENTRED: tl.constexpr, BASIS_T: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """cs[t, b, k] = ((x_b - mu) . u_k) (w_k(sigma_bt) - a(sigma_bt)) for every level t.

    x: [B, d] (row stride stride_x), already x - mu when CENTRED (mean_ptr unused); basis: U^T
    [r, d] contiguous when BASIS_T (K-major tiles, the tensor-core operand), else U [d, r]
    contiguous (N-contiguous tiles, the FMA operand: see ``basis_transposed``); cs: [T, B, r]
    contiguous, fp32 or bf16 (rounded to nearest even)."""
    pid_m, pid_n = grouped_tile(n_rows, rank, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = rows < n_rows
    mask_n = cols < rank
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    u_rows = basis_ptr + cols.to(tl.int64)[:, None] * dim  # BASIS_T: row k of U^T
    u_cols = basis_ptr + offs_k.to(tl.int64)[:, None] * rank + cols[None, :]  # else: U[k0 + i, cols], moved on
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, dim, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < dim
        x = tl.load(x_rows + ks[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if not CENTRED:  # the mean subtracted in registers: the small tiles and the FFMA path
            mu = tl.load(mean_ptr + ks, mask=mask_k, other=0.0)
            x = tl.where(mask_m[:, None] & mask_k[None, :], x - mu[None, :], 0.0)
        if BASIS_T:
            u = tl.trans(tl.load(u_rows + ks[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0))
        else:
            u = tl.load(u_cols, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            u_cols += BLOCK_K * rank
        acc = _dot(x, u, acc, PRECISION, EMULATE_BF16)
    lam = tl.load(eigvals_ptr + cols, mask=mask_n, other=0.0)
    lam_rest = tl.load(rest_ptr)
    # The launcher keeps T * B * r under 2^31: int32 offsets, formed per level (a [BLOCK_M,
    # BLOCK_N] offset tile held across the level loop spilled at 128 x 128).
    for level in range(0, n_levels):
        sigma = tl.load(sigma_ptr + rows * n_levels + level, mask=mask_m, other=1.0)
        weight = _shrink(lam[None, :], sigma[:, None]) - _shrink(lam_rest, sigma)[:, None]
        shrunk = rounded_to(acc * weight, cs_ptr.dtype.element_ty, EMULATE_BF16)
        tl.store(cs_ptr + (level * n_rows + rows)[:, None] * rank + cols[None, :], shrunk,
                 mask=mask_m[:, None] & mask_n[None, :])


@triton.jit
def _reconstruct_kernel(
    cs_ptr, x_ptr, mean_ptr, basis_ptr, sigma_ptr, rest_ptr, out_ptr,
    n_rows, n_levels, dim, rank, output_mode, stride_x,
    BASIS_T: tl.constexpr, READ_X: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """out[t, b] = x_b + (a_bt - 1)(x_b - mu) + cs[t, b] @ U^T, or the score or eps from it.

    READ_X False (lam_rest = 0 and output D only, so a = 0): out = mu + cs @ U^T, x not read.

    cs: [T, B, r] contiguous; x: [B, d] (row stride stride_x); basis: U [d, r] contiguous (its
    tile [BLOCK_K, BLOCK_N] of U^T is K-major, the tensor-core operand), or U^T [r, d] contiguous
    when BASIS_T (N-contiguous, the FMA operand); out: [T, B, d] contiguous."""
    # The launcher keeps T * B * max(d, r) and B * stride_x under 2^31, so in-tile offsets
    # are int32 (int64 tiles cost the epilogue registers).
    pid_m, pid_n = grouped_tile(n_rows * n_levels, dim, BLOCK_M, BLOCK_N, GROUP_M)  # m = t * B + b
    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = m < n_rows * n_levels
    mask_n = cols < dim
    cs_rows = cs_ptr + m[:, None] * rank
    u_cols = basis_ptr + cols.to(tl.int64)[None, :] * rank  # U[cols, k]
    ut_rows = basis_ptr + offs_k.to(tl.int64)[:, None] * dim + cols[None, :]  # BASIS_T: U^T[k0 + i, cols], moved on
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, rank, BLOCK_K):
        ks = k0 + offs_k
        mask_k = ks < rank
        cs = tl.load(cs_rows + ks[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if BASIS_T:
            u_t = tl.load(ut_rows, mask=mask_k[:, None] & mask_n[None, :], other=0.0)
            ut_rows += BLOCK_K * dim
        else:
            u_t = tl.load(u_cols + ks[:, None], mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        acc = _dot(cs, u_t, acc, PRECISION, EMULATE_BF16)
    mask = mask_m[:, None] & mask_n[None, :]
    mu = tl.load(mean_ptr + cols, mask=mask_n, other=0.0)
    if READ_X:
        row = m % n_rows
        sigma = tl.load(sigma_ptr + row * n_levels + m // n_rows, mask=mask_m, other=1.0)
        base = _shrink(tl.load(rest_ptr), sigma)  # a(sigma): weight of the directions outside span(U)
        x = tl.load(x_ptr + row[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
        centred = x - mu[None, :]
        if output_mode == 0:  # D = mu + a (x - mu) + acc, x read once (x + (D - x) spilled on sm_80, Triton 3.6)
            result = mu[None, :] + base[:, None] * centred + acc
        else:  # D - x = (a - 1)(x - mu) + acc: the score and eps need no second pass
            moved = (base[:, None] - 1.0) * centred + acc
            if output_mode == 1:
                result = moved / (sigma * sigma)[:, None]
            else:
                result = -moved / sigma[:, None]
    else:  # a = 0: the same sum as mu + 0 (x - mu) + acc for a finite x (up to the sign of a zero)
        result = mu[None, :] + acc
    tl.store(out_ptr + m[:, None] * dim + cols[None, :], result, mask=mask)


#: Launch configurations by (precision family, size); the compile gate builds each of them. As
#: the JIT builds them at the target shapes (aligned pointers, sizes divisible by 16), the 128 x
#: 128 tiles (HGMMA 64x128; 64 fp32 accumulators a thread on the FFMA path) and the 64 x 256
#: "narrow" projection build without spills (150-255 registers, 16-byte cp.async; Triton 3.9 and
#: 3.6); unaligned they spill (4-byte loads), so they are launched only on aligned operands and
#: "large-unaligned" / "small" serve the rest. The exact-fp32 tiles take 2 stages (3 spilled the
#: 128 x 32 reconstruction) and BLOCK_K 16 (tl.dot needs K >= 16); the small tensor-core tile 8
#: warps (with 4 the unaligned projection spilled on sm_80).
CONFIGS = {
    ("fma", "small"): TileConfig(64, 64, 16, 8, 3),
    ("fma", "large"): TileConfig(128, 128, 16, 8, 2),
    ("fma", "large-unaligned"): TileConfig(128, 32, 16, 8, 2),
    ("mma", "small"): TileConfig(64, 64, 32, 8, 3),
    ("mma", "narrow"): TileConfig(64, 256, 32, 8, 2),
    ("mma", "large"): TileConfig(128, 128, 32, 8, 3),
    ("mma", "large-unaligned"): TileConfig(128, 64, 32, 8, 3),
}
#: The tiles before issue 14, launched with ROWS_FASTEST: the A/B baseline of gpu_check only.
CONFIGS_BEFORE = {**CONFIGS, ("fma", "large"): CONFIGS["fma", "large-unaligned"],
                  ("mma", "large"): CONFIGS["mma", "large-unaligned"], ("mma", "narrow"): CONFIGS["mma", "small"]}


def choose_config(precision: str, rows: int, cols: int, variant: str = "tuned", aligned: bool = True,
                  project: bool = False) -> TileConfig:
    return (CONFIGS if variant == "tuned" else CONFIGS_BEFORE)[_key(precision, rows, cols, aligned, project)]


def _key(precision: str, rows: int, cols: int, aligned: bool, project: bool = False) -> tuple[str, str]:
    """(family, size); "narrow": an aligned tensor-core projection of >= 1024 rows onto 128 < r <=
    256 columns, one 64 x 256 tile spanning r reads x once (64 x 64 tiles: r / 64 times)."""
    size, family = _size(rows, cols), "fma" if precision == "ieee" else "mma"
    if size == "small":
        narrow = project and aligned and family == "mma" and rows >= 1024 and 128 < cols <= 256
        return family, "narrow" if narrow else "small"
    return family, size if aligned else "large-unaligned"


def _size(rows: int, cols: int) -> str:
    return "large" if min(rows, cols) >= 1024 else "small"


@dataclass(frozen=True)
class Launch:
    """One launch: its tiles, its 1-D grid, the GROUP_M of its tile order, and whether it reads the
    basis as U^T [r, d] (``basis_t``) or as U [d, r] (see ``basis_transposed``)."""

    config: TileConfig
    grid: tuple
    group_m: int
    basis_t: bool


@dataclass(frozen=True)
class Plan:
    """Both launches of one call, and whether x - mu is formed once before the projection."""

    project: Launch
    reconstruct: Launch
    centred: bool


def plan(precision: str, n_rows: int, n_levels: int, dim: int, rank: int, *, variant: str = "tuned",
         centre: bool | None = None, aligned: bool = True) -> Plan:
    """The launches for x: [n_rows, dim], U: [dim, rank], n_levels levels: a pure function of the
    shapes (``aligned``: every operand 16-byte aligned, d, r, x's row stride and B multiples of 16;
    the 128 x 128 tiles need it, and the projection's also needs T = 1).
    ``centre`` None: pre-centre exactly for the large tensor-core projection tiles, the
    compute-bound case where an operand built in registers costs the wgmma pipeline (at small r
    the projection is bound by reading x, and the extra pass over x would cost more)."""
    group_m = GROUP_M if variant == "tuned" else ROWS_FASTEST
    fma_tiles = precision == "ieee" and variant == "tuned"
    launches = []
    # The 128 x 128 projection spills when its level loop is not unrolled (T > 1: the JIT
    # makes n_levels = 1 a constant): 128 x 64 then.
    for rows, cols, wide in ((n_rows, rank, aligned and n_levels == 1), (n_rows * n_levels, dim, aligned)):
        cfg = choose_config(precision, rows, cols, variant, wide, not launches)
        grid = (triton.cdiv(rows, cfg.block_m) * triton.cdiv(cols, cfg.block_n),)
        launches.append(Launch(cfg, grid, group_m, basis_transposed(not launches, fma_tiles)))
    if centre is None:
        centre = precision != "ieee" and _size(n_rows, rank) == "large"
    return Plan(launches[0], launches[1], centre)


def basis_transposed(project: bool, fma_tiles: bool) -> bool:
    """Whether a launch reads the basis as U^T [r, d] (else as U [d, r]).

    The tensor-core dots want K-major B tiles: U^T for the projection (k runs over d), U for the
    reconstruction (k over r). The FMA dot wants the opposite, N-contiguous tiles: the lanes of a
    warp share k and own consecutive columns, so each 16-byte shared load of a K-major tile puts
    all 32 lanes in the same four banks (256-byte lane stride, 32 wavefronts instead of 4; sm_90
    SASS of the 128 x 128 FFMA tiles). ``fma_tiles``: the ieee launches of the tuned variant
    (the "before" variant keeps the former K-major tiles for gpu_check's A/B)."""
    return project != fma_tiles


def kernel_basis(eigvecs: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(U [d, r], U^T [r, d]), both contiguous in the kernels' dtype (bf16 in bf16 mode, else
    fp32): computed once per eigenbasis by GaussianDenoiser, per call by gaussian_denoise."""
    u = eigvecs.to(torch.bfloat16 if precision == "bf16" else torch.float32).contiguous()
    return u, u.T.contiguous()


def centred_rows(x: torch.Tensor, mean: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x - mean ([B, d] contiguous) computed in fp32 and rounded once to ``dtype`` (bf16: to
    nearest even, what the projection's dot applied to the difference it formed in registers)."""
    out = torch.empty(x.shape, dtype=dtype, device=x.device)
    return torch.sub(x, mean, out=out)


#: Largest element offset the kernels compute in int32.
_INT32_LIMIT = 2**31 - 1


def denoise(x, sigma, mean, eigvals, eigvecs, lam_rest, *, output: str, precision: str, eigvecs_t=None,
            variant: str = "tuned", centre: bool | None = None, rest_zero: bool = False) -> torch.Tensor:
    """Gaussian denoiser for T levels in two launches (three with pre-centring): returns [T, B, d] float32.

    Data first, then the Gaussian as (mean, eigvals, eigvecs, lam_rest), the library's one order.
    x: [B, d] float32 (any row stride; copied if its columns are strided); sigma: [B, T] float32
    contiguous; mean: [d] float32; eigvals: [r] float32; eigvecs: [d, r] contiguous, float32 or
    bfloat16 (bf16 mode); eigvecs_t: its transpose [r, d] contiguous (``kernel_basis``; formed
    here when None); lam_rest: [1] float32 (0: discarded directions map to mu); rest_zero: the
    caller knows lam_rest is 0, so D = mu + U C needs no second read of x (output "denoised"; x
    must be finite, as the op checks; False is always correct);
    output: "denoised", "score" or "eps"; precision: "ieee", "tf32" or "bf16". ``variant``
    "before" launches the tiles and order before issue 14 and ``centre`` forces pre-centring
    on or off: both for benchmarks and tests, the results are the same to rounding.
    """
    if x.stride(1) != 1:
        x = x.contiguous()
    if eigvecs_t is None:
        eigvecs_t = eigvecs.T.contiguous()
    n, d = x.shape
    r = eigvecs.shape[1]
    levels = sigma.shape[1]
    out = torch.empty((levels, n, d), dtype=torch.float32, device=x.device)
    # Row chunks keep every in-kernel offset within int32.
    chunk = max(1, _INT32_LIMIT // max(levels * max(d, r), x.stride(0)))
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        _denoise_rows(x[start:stop], mean, eigvecs, eigvecs_t, eigvals, sigma[start:stop], lam_rest,
                      out[:, start:stop], output=output, precision=precision, variant=variant, centre=centre,
                      read_x=not (rest_zero and output == "denoised" and variant == "tuned"))
    return out


def _denoise_rows(x, mean, u, u_t, eigvals, sigma, lam_rest, out, *, output, precision, variant="tuned",
                  centre=None, read_x=True):
    n, d = x.shape
    r = u.shape[1]
    levels = sigma.shape[1]
    staged = out if out.is_contiguous() else torch.empty_like(out)
    aligned = operands_aligned((x, mean, u, u_t, eigvals, sigma, lam_rest, staged), (d, r, x.stride(0), n))
    p = plan(precision, n, levels, d, r, variant=variant, centre=centre, aligned=aligned)
    shrunk = torch.empty((levels, n, r), dtype=torch.bfloat16 if precision == "bf16" else torch.float32,
                         device=x.device)
    project(x, mean, u_t if p.project.basis_t else u, eigvals, sigma, lam_rest, shrunk, p.project,
            centred=p.centred, precision=precision)
    cfg = p.reconstruct.config
    _reconstruct_kernel[p.reconstruct.grid](
        shrunk, x, mean, u_t if p.reconstruct.basis_t else u, sigma, lam_rest, staged, n, levels, d, r,
        OUTPUTS[output], x.stride(0), BASIS_T=p.reconstruct.basis_t, READ_X=read_x, PRECISION=precision,
        EMULATE_BF16=_interpreting(x), BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        GROUP_M=p.reconstruct.group_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    if staged is not out:
        out.copy_(staged)


def operands_aligned(tensors, sizes) -> bool:
    """Whether the JIT will specialise a launch as aligned: every tensor 16-byte aligned and every
    size a multiple of 16 (what the 128 x 128 tiles need to build without spills)."""
    return all(t.data_ptr() % 16 == 0 for t in tensors) and all(n % 16 == 0 for n in sizes)


def project(x, mean, basis, eigvals, sigma, lam_rest, shrunk, launch: Launch, *, centred: bool, precision: str):
    """Fill shrunk ([T, B, r] contiguous, fp32 or bf16) with the projection's shrunk coefficients;
    basis: U^T [r, d] when ``launch.basis_t``, else U [d, r], contiguous in the kernels' dtype."""
    n, d = x.shape
    if centred:
        x = centred_rows(x, mean, torch.bfloat16 if precision == "bf16" else torch.float32)
    cfg = launch.config
    _project_kernel[launch.grid](
        x, mean, basis, eigvals, sigma, lam_rest, shrunk, n, sigma.shape[1], d, shrunk.shape[2], x.stride(0),
        CENTRED=centred, BASIS_T=launch.basis_t, PRECISION=precision, EMULATE_BF16=_interpreting(x),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, GROUP_M=launch.group_m,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def _interpreting(t: torch.Tensor) -> bool:
    return t.device.type != "cuda"


def gate_entries():
    """The compile gate's entries: every configuration, see ``_gaussian_gate.entries``."""
    from ._gaussian_gate import entries
    return entries()


def gate_targets(batch: int = 8192):
    """The compile gate's target launches (issue 14 shapes), see ``_gaussian_gate.targets``."""
    from ._gaussian_gate import targets
    return targets(batch)


def gate_aligned():
    """Entries launched only on aligned operands, see ``_gaussian_gate.aligned``."""
    from ._gaussian_gate import aligned
    return aligned()
