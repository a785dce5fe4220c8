"""PyTorch formulas of the Gaussian denoiser: the CPU product path and every derivative.

Shapes: x [B, d], sigma [B, T], mean [d], eigvals lam [r], eigvecs U [d, r], lam_rest a
0-d tensor (0: directions outside span(U) map to mu). Per level t and row b, with
s = sigma[b, t], w_k = lam_k / (lam_k + s^2) and a = lam_rest / (lam_rest + s^2):

    D = mu + a (x - mu) + U ((w - a) * (U^T (x - mu)))
    J = dD/dx = a I + U diag(w - a) U^T
"""

from __future__ import annotations

import torch

OUTPUTS = ("denoised", "score", "eps")
#: Rows per chunk: bounds the [chunk, T, r] and [T, chunk, d] temporaries.
_MEMORY_BUDGET_BYTES = 256 << 20


def shrink(lam: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """lam / (lam + sigma^2), 0 where both vanish (a flat direction at sigma = 0). Broadcasts."""
    denom = lam + sigma * sigma
    positive = denom > 0
    return torch.where(positive, lam / torch.where(positive, denom, torch.ones_like(denom)), torch.zeros_like(denom))


def shrink_dsigma(lam: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """d/dsigma of lam / (lam + sigma^2) = -2 sigma lam / (lam + sigma^2)^2 (0 where undefined)."""
    denom = lam + sigma * sigma
    positive = denom > 0
    safe = torch.where(positive, denom, torch.ones_like(denom))
    return torch.where(positive, -2 * sigma * lam / (safe * safe), torch.zeros_like(denom))


def level_weights(sigma: torch.Tensor, lam: torch.Tensor, lam_rest: torch.Tensor):
    """(w - a: [B, T, r], a: [B, T, 1]) for every row and level."""
    s = sigma[..., None]
    base = shrink(lam_rest, s)
    return shrink(lam, s) - base, base


def apply_operator(v: torch.Tensor, sigma: torch.Tensor, lam: torch.Tensor, eigvecs: torch.Tensor,
                   lam_rest: torch.Tensor) -> torch.Tensor:
    """J_t v_t for v: [T, B, d] (or [B, d], applied at every level) -> [T, B, d]."""
    weight, base = level_weights(sigma, lam, lam_rest)  # [B, T, r], [B, T, 1]
    weight, base = weight.transpose(0, 1), base.transpose(0, 1)  # [T, B, r], [T, B, 1]
    return base * v + ((v @ eigvecs) * weight) @ eigvecs.T


def moved_to_output(moved: torch.Tensor, x: torch.Tensor, sigma_tb: torch.Tensor, output: str) -> torch.Tensor:
    """From D - x ([T, B, d]) to the requested output; sigma_tb: [T, B, 1]."""
    if output == "denoised":
        return x + moved
    if output == "score":
        return moved / (sigma_tb * sigma_tb)
    return -moved / sigma_tb


def _shrink_values(lam: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``shrink`` in two fewer passes, for the forward only (not differentiable: 0/0 is a NaN
    replaced in place; lam <= lam + sigma^2 keeps every other ratio finite). Bit-identical."""
    return (lam / (lam + sigma * sigma)).nan_to_num_(nan=0.0)


def denoise(x, sigma, mean, lam, eigvecs, lam_rest, output: str, *, on_coeffs=None) -> torch.Tensor:
    """Chunked over rows; returns [T, B, d] in the dtype of the computation.

    Per level one fused product: out_t = bias_t + (C * (w_t - a_t)) @ U^T (torch.addmm), where
    C = (x - mu) U is computed once for all levels and bias_t is mu + a_t (x - mu) for D, or
    (a_t - 1)(x - mu) for the score and eps, which are then scaled in place. ``on_coeffs``: called
    with each chunk's C before it is used (the op's finiteness check of x).
    """
    n, d = x.shape
    levels = sigma.shape[1]
    r = eigvecs.shape[1]
    per_row = x.element_size() * (levels * r + 2 * d + 2 * r)
    rows = max(1, _MEMORY_BUDGET_BYTES // per_row)
    out = torch.empty((levels, n, d), dtype=x.dtype, device=x.device)
    has_rest = float(lam_rest) != 0
    u_t = eigvecs.T
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        centred = (x[start:stop] if rows < n else x) - mean
        coeffs = centred @ eigvecs
        if on_coeffs is not None:
            on_coeffs(coeffs)
        s = (sigma[start:stop] if rows < n else sigma)[..., None]  # [b, T, 1]
        weight = _shrink_values(lam, s)  # [b, T, r]
        if has_rest:
            base = _shrink_values(lam_rest, s)  # [b, T, 1]
            weight -= base
        for t in range(levels):
            if output == "denoised":
                bias = mean + base[:, t] * centred if has_rest else mean
            else:
                bias = (base[:, t] - 1) * centred if has_rest else -centred
            # One level: scale C in place (it is not needed again).
            scaled = coeffs.mul_(weight[:, 0]) if levels == 1 else coeffs * weight[:, t]
            target = out[t, start:stop] if rows < n else out[t]
            torch.addmm(bias, scaled, u_t, out=target)
            if output != "denoised":
                s_t = sigma[start:stop, t:t + 1]
                target.div_(s_t * s_t) if output == "score" else target.div_(-s_t)
    return out


def sigma_derivative(x, sigma, mean, lam, eigvecs, lam_rest, output: str, moved: torch.Tensor) -> torch.Tensor:
    """d output / d sigma_bt: [T, B, d]. ``moved`` is D - x from the forward pass, [T, B, d]."""
    centred = x - mean
    s = sigma[..., None]  # [B, T, 1]
    dbase = shrink_dsigma(lam_rest, s)
    dweight = shrink_dsigma(lam, s) - dbase  # [B, T, r]
    coeffs = (centred @ eigvecs)[:, None, :] * dweight
    d_denoised = dbase.transpose(0, 1) * centred + coeffs.transpose(0, 1) @ eigvecs.T
    if output == "denoised":
        return d_denoised
    s_tb = sigma.T[..., None]
    if output == "score":  # score = (D - x) / s^2
        return d_denoised / s_tb**2 - 2 * moved / s_tb**3
    return -d_denoised / s_tb + moved / s_tb**2  # eps = (x - D) / s


def jacobian_product(v, x, sigma, lam, eigvecs, lam_rest, output: str) -> torch.Tensor:
    """d output / dx applied to v ([B, d] or [T, B, d]); returns [T, B, d]."""
    jv = apply_operator(v, sigma, lam, eigvecs, lam_rest)
    if output == "denoised":
        return jv
    s_tb = sigma.T[..., None]
    moved = jv - v
    return moved / s_tb**2 if output == "score" else -moved / s_tb
