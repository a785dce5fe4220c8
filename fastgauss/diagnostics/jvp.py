"""Batched Jacobian-vector products of any denoiser that follows the protocol."""

from __future__ import annotations

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._core.arrays import as_float, as_tensor, probe_stack
from .protocol import check_output, sigma_text
from .tangent_rules import cheaper_tangents

# Tangents ([K, B, ...] elements) from which the cheaper rules for convolutions, SiLU,
# normalization and attention pay for their ~0.7 ms per call of bookkeeping on CPU:
# measured 2.4x faster on a width-64 UNet at 3x32x32 (K=16, B=8), slower on 16x16 images.
RULE_MIN_ELEMENTS = 1 << 22


def jvp(denoiser, x, sigma, v, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(D(x; sigma), J v) for any denoiser, J = dD/dx at x, by forward-mode AD.

    x: [B, *feature_shape]; sigma: as the denoiser takes it (float, 0-d or [B]);
    v: [B, *feature_shape] or [K, B, *feature_shape] (K probes per input).
    chunk: probes per forward-mode pass (bounds memory); None does all K at once.
    GaussianDenoiser and EmpiricalDenoiser use their analytic fused paths. For networks,
    torch.func.jvp under vmap over the probes (eval mode for normalization layers), with
    cheaper forward-mode rules for convolutions, SiLU, group/layer norm and attention once
    the tangents are large (fastgauss/diagnostics/tangent_rules.py).
    Returns D: [B, *feature_shape] and J v shaped like v.

    Example:
        >>> import torch, fastgauss
        >>> A, v = torch.randn(6, 6), torch.randn(3, 2, 6)
        >>> d, jv = fastgauss.jvp(lambda x, s: x @ A.T, torch.randn(2, 6), 0.5, v)
        >>> torch.allclose(jv, v @ A.T, atol=1e-5)  # a linear map's J v is A v
        True
    """
    from ..ops.empirical import EmpiricalDenoiser
    from ..ops.gaussian.module import GaussianDenoiser

    x = as_float(as_tensor(x, "x"))
    v, probes = probe_stack(v, x, owner="x")
    v = v.to(x.dtype)
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk: expected a number of probes >= 1, got {chunk}")
    if isinstance(denoiser, (GaussianDenoiser, EmpiricalDenoiser)):
        return denoiser.jvp(x, sigma, v)
    vk = v if probes else v[None]

    def f(inp):
        return check_output(denoiser(inp, sigma), inp, sigma)

    step = vk.shape[0] if chunk is None else chunk
    parts, denoised = [], None
    # Fused attention kernels have no forward-mode derivative; the math one does.
    # Not under no_grad: nn.MultiheadAttention then takes a fused path with no forward mode.
    with sdpa_kernel(SDPBackend.MATH), cheaper_tangents(step, RULE_MIN_ELEMENTS):
        for block in vk.split(step):
            # the primal is unbatched under vmap: computed once per block, kept from the first
            primal, tangents = torch.func.vmap(lambda t: torch.func.jvp(f, (x,), (t,)), out_dims=(None, 0))(block)
            denoised = primal if denoised is None else denoised
            parts.append(tangents)
    jv = torch.cat(parts)
    check_output(denoised, x, sigma)
    if not torch.isfinite(jv).all():
        raise ValueError(f"denoiser: its Jacobian-vector products are not finite at sigma={sigma_text(sigma)}")
    return denoised, (jv if probes else jv[0])
