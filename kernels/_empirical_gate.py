"""Compile-gate entries and target launches of the empirical kernels (``kernels/empirical.py``).

``entries()``: every launch configuration of the three kernels in the modes that use it.
``targets()``: the launches ``plan`` makes at issue 14's target shape on an H200.
"""

from __future__ import annotations

import triton

from ._empirical_jit import _dots_kernel, _softmax_kernel, _weighted_sum_kernel
from .empirical import DOTS_CONFIGS, MODES, SOFTMAX, SUMS_CONFIGS, plan, y_transposed

_DTYPE = {"bf16": "*bf16"}
TARGET = dict(n_queries=1024, n_data=50_000, dim=3072)  # issue 14's target shape
_H200_SMS = 132


def _entry_names(qk: str, pv: str) -> dict:
    return {"dots": f"empirical_dots[{qk}]", "probe_dots": f"empirical_dots[{pv},probes]",
            "softmax": f"empirical_softmax[p={'bf16' if pv == 'bf16' else 'fp32'}]",
            "sums": f"empirical_sums[{pv}]"}


def entries():
    """(name, kernel, signature, constexprs, num_warps, num_stages, expect_mma) for the compile gate."""
    ints = lambda *names: {n: "i32" for n in names}  # noqa: E731
    seen = set()
    for qk, pv in MODES:
        names = _entry_names(qk, pv)
        s_cfg = SUMS_CONFIGS[pv]
        for name, logits, prec in ((names["dots"], True, qk), (names["probe_dots"], False, pv)):
            d_cfg = DOTS_CONFIGS[prec]
            if name in seen or (not logits and pv not in ("ieee", "tf32x3")):  # J v runs in these
                continue
            seen.add(name)
            op = _DTYPE.get(prec, "*fp32")
            sig = {"a_ptr": op, "y_ptr": op, "norms_ptr": "*fp32", "inv_var_ptr": "*fp32", "s_ptr": "*fp32",
                   **ints("n_rows_a", "n_rows_y", "dim", "stride_y", "stride_s")}
            yield (name, _dots_kernel, sig, {"LOGITS": logits, "Y_TRANSPOSED": y_transposed(prec, "dots"),
                                            "PRECISION": prec, "EMULATE_BF16": False,
                                            "BLOCK_M": d_cfg.block_m, "BLOCK_N": d_cfg.block_n,
                                            "BLOCK_K": d_cfg.block_k},
                   d_cfg.num_warps, d_cfg.num_stages, prec != "ieee")
        if names["sums"] not in seen:
            seen.add(names["sums"])
            op = _DTYPE.get(pv, "*fp32")
            sig = {"p_ptr": op, "y_ptr": op, "acc_ptr": "*fp32",
                   **ints("n_rows_p", "n_cols", "dim", "rows_per_split", "stride_p", "stride_y")}
            yield (names["sums"], _weighted_sum_kernel, sig,
                   {"Y_TRANSPOSED": y_transposed(pv, "sums"), "PRECISION": pv, "EMULATE_BF16": False,
                    "BLOCK_M": s_cfg.block_m, "BLOCK_D": s_cfg.block_n, "BLOCK_K": s_cfg.block_k},
                   s_cfg.num_warps, s_cfg.num_stages, pv != "ieee")
    sig = {"s_ptr": "*fp32", "p_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32",
           "best_ptr": "*i32", "spt_ptr": "*fp32", "thr_ptr": "*fp32", "cnt_ptr": "*i32", "cidx_ptr": "*i32",
           "cs_ptr": "*fp32",
           **ints("n_queries", "n_cols", "stride_s", "stride_p", "n_probes", "first_row", "store_p")}
    for tag, p_type, window in (("p=fp32", "*fp32", False), ("p=bf16", "*bf16", False),
                                ("p=fp32,window", "*fp32", True)):
        yield (f"empirical_softmax[{tag}]", _softmax_kernel, dict(sig, p_ptr=p_type),
               {"WINDOW": window, "CAP": 256 if window else 1,
                "BLOCK_C": SOFTMAX[0]}, SOFTMAX[1], 1, False)


def targets(sms: int = _H200_SMS):
    """(entry name, shape label, int args, grid) of every launch at the target shape on an H200
    (first chunk; the launcher's own arithmetic, ``plan``)."""
    b, n, d = TARGET["n_queries"], TARGET["n_data"], TARGET["dim"]
    label = f"B={b},N={n},d={d}"
    done = set()
    for qk, pv in MODES:
        geo = plan(b, 0, n, d, (qk, pv), sms)
        names = _entry_names(qk, pv)
        c = geo.chunk
        stride = lambda mode, product: c if y_transposed(mode, product) else d  # noqa: E731
        launches = (
            (names["dots"], dict(n_rows_a=b, n_rows_y=c, dim=d, stride_y=stride(qk, "dots"), stride_s=c),
             geo.dots_grid),
            (names["softmax"], dict(n_queries=b, n_cols=c, stride_s=c, stride_p=c, n_probes=0, first_row=0,
                                    store_p=1),
             geo.softmax_grid),
            (names["sums"], dict(n_rows_p=b, n_cols=c, dim=d, rows_per_split=geo.rows_per_split, stride_p=c,
                                 stride_y=stride(pv, "sums")), geo.sums_grid))
        for name, args, grid in launches:
            if name not in done:
                done.add(name)
                yield name, f"{label},chunk={c},splits={geo.splits}", args, grid
    # D and one probe's J v (exact products, as J v runs), with the window of the exact path
    geo = plan(b, 1, n, d, ("ieee", "ieee"), sms)
    c, cfg = geo.chunk, DOTS_CONFIGS["ieee"]
    label = f"{label},K=1,chunk={c},splits={geo.splits}"
    yield ("empirical_dots[ieee,probes]", label, dict(n_rows_a=b, n_rows_y=c, dim=d, stride_y=c, stride_s=c),
           (triton.cdiv(b, cfg.block_m), triton.cdiv(c, cfg.block_n)))
    yield ("empirical_softmax[p=fp32,window]", label,
           dict(n_queries=b, n_cols=c, stride_s=c, stride_p=c, n_probes=1, first_row=c, store_p=1), geo.softmax_grid)
