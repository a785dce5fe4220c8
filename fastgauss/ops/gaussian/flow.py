"""The exact probability flow of a Gaussian (DESIGN.md section 1, "Exact Gaussian sampling"): the one
implementation behind ``GaussianDenoiser.flow`` / ``.sample`` and teleportation's jump.

With c = U^T (x - mu) at the start level s_0, for every level s:
    x_s = mu + U (sqrt((lambda + s^2) / (lambda + s_0^2)) c) + sqrt((lam_rest + s^2) / (lam_rest + s_0^2)) r,
r the part of x - mu outside span(U). One projection serves every level.

Dtype rule: the products run in the promotion of x's dtype and the eigenvectors' dtype, at least
float32 (float64 when either is float64; bf16 eigenvectors compute in float32); the scale factors
are formed in float64 and rounded once to that dtype; results come back in x's dtype.
"""

from __future__ import annotations

import torch

from . import _torch as gt
from ..._core.dtypes import compute_dtype


def exact_flow(flat: torch.Tensor, levels: list[float], mean, eigvals, eigvecs, lam_rest, *,
               every: bool):
    """x [B, d] at levels[0] carried to the other levels: ([L, B, d] states, [L - 1, B, d] D or None).

    every: all L levels (x[0] is flat itself) and D(x_i; s_i) at every level but the last, else
    only the last state ([1, B, d]) and no D. Shapes and devices are the caller's (validated)
    business: everything is on the Gaussian's device.
    """
    dtype = compute_dtype(flat.dtype, eigvecs.dtype)
    u, mu = eigvecs.to(dtype), mean.to(dtype)
    lam, rest = eigvals.to(torch.float64), lam_rest.to(torch.float64)
    x0 = flat.to(dtype)
    centred = x0 - mu
    coeffs = centred @ u  # [B, r]: the one projection
    outside = centred - coeffs @ u.T
    start = levels[0]
    wanted = levels[1:] if every else levels[-1:]
    sig = torch.tensor(wanted, dtype=torch.float64, device=lam.device)
    scale = torch.sqrt((lam + sig[:, None] ** 2) / (lam + start**2))  # [L', r] float64
    scale_rest = torch.sqrt((rest + sig**2) / (rest + start**2))  # [L']
    factors, factors_rest = scale, scale_rest
    if every:  # D at levels[:-1]: x's own factors times the shrinkage there (level 0: x itself)
        at = torch.tensor(levels[:-1], dtype=torch.float64, device=lam.device)
        x_scale = torch.cat([torch.ones_like(lam)[None], scale])[:len(levels) - 1]
        x_rest = torch.cat([torch.ones_like(rest)[None], scale_rest])[:len(levels) - 1]
        factors = torch.cat([scale, x_scale * gt.shrink(lam, at[:, None])])
        factors_rest = torch.cat([scale_rest, x_rest * gt.shrink(rest, at)])
    out = mu + (coeffs[None] * factors.to(dtype)[:, None]) @ u.T + factors_rest.to(dtype)[:, None, None] * outside
    states, ds = out[:len(wanted)], (out[len(wanted):] if every else None)
    if every:
        states = torch.cat([x0[None], states])  # the start is given, not reconstructed
    return states.to(flat.dtype), None if ds is None else ds.to(flat.dtype)
