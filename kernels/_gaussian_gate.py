"""Compile-gate entries and target launches of the Gaussian kernels (``kernels/gaussian.py``).

``entries()``: every launch configuration in each precision it serves, with the operand dtypes
and centring its launches use. ``targets()``: the launches ``plan`` makes at the issue 14 target
shapes, for a gate that specialises like the JIT (the 128 x 128 entries are
launched only on aligned operands, see ``gaussian.CONFIGS``).
"""

from __future__ import annotations

from .gaussian import (CONFIGS, CONFIGS_BEFORE, GROUP_M, OUTPUTS, PRECISIONS, ROWS_FASTEST, _key, _project_kernel,
                       _reconstruct_kernel, basis_transposed, plan)


def _reconstruct_name(size: str, precision: str, read_x: bool = True) -> str:
    """Gate name of a reconstruction build; ",lam_rest=0" marks READ_X False (x not read)."""
    return f"gaussian_reconstruct[{size},{precision}{'' if read_x else ',lam_rest=0'}]"


def _differs(key) -> bool:
    """Whether the "before" variant builds differently: other tiles, or (FMA) the K-major basis."""
    return CONFIGS_BEFORE[key] != CONFIGS[key] or key[0] == "fma"


def configs():
    """(size label, config, family) of every configuration a launch can use, the former ones too."""
    for (family, size), cfg in CONFIGS.items():
        yield size, cfg, family
    for key, cfg in CONFIGS_BEFORE.items():
        if _differs(key):
            yield f"before-{key[1]}", cfg, key[0]


def _entry_size(precision: str, rows: int, cols: int, variant: str, project: bool) -> str:
    key = _key(precision, rows, cols, True, project)
    return f"before-{key[1]}" if variant == "before" and _differs(key) else key[1]


def entries():
    """(name, kernel, signature, constexprs, num_warps, num_stages, expect_mma) for the compile gate:
    every configuration in each precision it serves, with the operand dtypes and centring its
    launches use."""
    for size, cfg, family in configs():
        for precision in (("ieee",) if family == "fma" else ("tf32", "bf16")):
            u_type = "*bf16" if precision == "bf16" else "*fp32"
            centred = family == "mma" and "large" in size
            fma_tiles = family == "fma" and not size.startswith("before")
            common = {"PRECISION": precision, "EMULATE_BF16": False, "BLOCK_M": cfg.block_m,
                      "BLOCK_N": cfg.block_n, "BLOCK_K": cfg.block_k,
                      "GROUP_M": ROWS_FASTEST if size.startswith("before") else GROUP_M}
            project_sig = {"x_ptr": u_type if centred else "*fp32", "mean_ptr": "*fp32", "basis_ptr": u_type,
                           "eigvals_ptr": "*fp32", "sigma_ptr": "*fp32", "rest_ptr": "*fp32", "cs_ptr": u_type,
                           "n_rows": "i32", "n_levels": "i32", "dim": "i32", "rank": "i32", "stride_x": "i32",
                           "CENTRED": "constexpr", "BASIS_T": "constexpr", **{k: "constexpr" for k in common}}
            yield (f"gaussian_project[{size},{precision}]", _project_kernel, project_sig,
                   {"CENTRED": centred, "BASIS_T": basis_transposed(True, fma_tiles), **common}, cfg.num_warps,
                   cfg.num_stages, precision != "ieee")
            if "narrow" in size:  # a projection tile only
                continue
            recon_sig = {"cs_ptr": u_type, "x_ptr": "*fp32", "mean_ptr": "*fp32", "basis_ptr": u_type,
                         "sigma_ptr": "*fp32", "rest_ptr": "*fp32", "out_ptr": "*fp32",
                         "n_rows": "i32", "n_levels": "i32", "dim": "i32", "rank": "i32", "output_mode": "i32",
                         "stride_x": "i32", "BASIS_T": "constexpr", "READ_X": "constexpr",
                         **{k: "constexpr" for k in common}}
            recon = {"BASIS_T": basis_transposed(False, fma_tiles), **common}
            for read_x in (True, False) if not size.startswith("before") else (True,):
                # READ_X False: lam_rest = 0 and D wanted, x not read (the builders' default)
                yield (_reconstruct_name(size, precision, read_x), _reconstruct_kernel, recon_sig,
                       {**recon, "READ_X": read_x}, cfg.num_warps, cfg.num_stages, precision != "ieee")


def targets(batch: int = 8192):
    """(entry name, shape label, int args, grid) of both launches at the issue 14 target shapes
    (B = 8192, d = 3072 and 12 288, r = d, d / 8 (gpu_check's) and 256, T = 1, x contiguous), from ``plan``; and
    the former tiles at d = 3072 (the gpu_check A/B)."""
    shapes = [(d, r, p, "tuned") for d in (3072, 12288) for r in (d, d // 8, 256) for p in PRECISIONS]
    shapes += [(3072, r, p, "before") for r in (3072, 256) for p in PRECISIONS]
    for d, r, precision, variant in shapes:
        p = plan(precision, batch, 1, d, r, variant=variant)
        label = f"B={batch},d={d},r={r}" + ("" if variant == "tuned" else ",before")
        args = {"n_rows": batch, "n_levels": 1, "dim": d, "rank": r, "stride_x": d}
        size = _entry_size(precision, batch, r, variant, True)
        yield f"gaussian_project[{size},{precision}]", label, args, p.project.grid
        size = _entry_size(precision, batch, d, variant, False)
        recon = {**args, "output_mode": OUTPUTS["denoised"]}
        for read_x in (True, False) if variant == "tuned" else (True,):  # D with x read, and without
            yield _reconstruct_name(size, precision, read_x), label, recon, p.reconstruct.grid


def aligned():
    """(entry name, {int argument: value}) of the entries the launcher runs only on aligned
    operands (``operands_aligned``: d, r, x's row stride and B multiples of 16; the projection also
    only at T = 1, a constant for the JIT): the 128 x 128 tiles and the 64 x 256 projection. Built
    otherwise they spill, and they never run otherwise."""
    sizes = {"dim": 16, "rank": 16, "stride_x": 16, "n_rows": 16}
    for size, _cfg, family in configs():
        if size in ("large", "narrow"):
            for precision in (("ieee",) if family == "fma" else ("tf32", "bf16")):
                yield f"gaussian_project[{size},{precision}]", {**sizes, "n_levels": 1}
                if size == "large":
                    for read_x in (True, False):
                        yield _reconstruct_name(size, precision, read_x), sizes
