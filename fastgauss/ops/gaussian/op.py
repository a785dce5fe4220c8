"""``gaussian_denoise``: the Gaussian (Wiener) denoiser in the eigenbasis, differentiable."""

from __future__ import annotations

import math

import torch
from torch.autograd.forward_ad import unpack_dual

from . import _torch as gt
from ..._core.arrays import as_float, as_tensor, check_finite, flatten_batch, inspectable
from ..._core import precision as precisions
from ..._core.backend import backend_for
from ..._core.dtypes import compute_dtype
from ..._core.sigma import check_levels, levels_tensor, shape_error
from ..._core.device import same_device
from .validation import reaches_every_coordinate, validated_once

PRECISIONS = precisions.GAUSSIAN
OUTPUTS = gt.OUTPUTS


def _kernel_denoise(x, sigma, mean, lam, eigvecs, lam_rest, output, precision, basis, rest_zero=False):
    from ...kernels.gaussian import denoise, kernel_basis

    f32 = lambda t: t.to(torch.float32).contiguous()  # noqa: E731
    u, u_t = basis(precision) if basis is not None else kernel_basis(eigvecs, precision)
    # x keeps its row stride: the launcher reads it strided (and copies it only if its columns are).
    return denoise(x.to(torch.float32), f32(sigma), f32(mean), f32(lam), u, f32(lam_rest.reshape(1)),
                   output=output, precision=precision, eigvecs_t=u_t, rest_zero=rest_zero)


def _compute(x, sigma, mean, lam, eigvecs, lam_rest, output, precision, basis=None, check_x=False,
             rest_zero=False) -> torch.Tensor:
    """[T, B, d] in x's dtype, on the backend that suits the inputs. ``basis``: precision ->
    (U, U^T) in the kernels' dtype, cached by the caller (None: formed per call). ``rest_zero``:
    the caller knows on the host that lam_rest is 0 (the kernels then form D without reading x
    a second time; False is always correct). ``check_x``:
    x's finiteness is still to be checked (ValueError naming x): before the kernels, or on the
    PyTorch path through the coefficients (x - mu) U it forms anyway, which hold a NaN or an
    infinity in every row where x does when each row of U has a nonzero (else x itself is read).
    """
    kernel_ok = x.dtype in (torch.float32, torch.float16, torch.bfloat16) and eigvecs.dtype != torch.float64
    if kernel_ok and backend_for(x) == "triton":
        if check_x:
            check_finite(x, "x")
        return _kernel_denoise(x, sigma, mean, lam, eigvecs, lam_rest, output, precision, basis,
                               rest_zero).to(x.dtype)
    on_coeffs = None
    if check_x:
        if reaches_every_coordinate(eigvecs):
            on_coeffs = lambda coeffs: _check_through(coeffs, x)  # noqa: E731
        else:
            check_finite(x, "x")
    dtype = compute_dtype(x.dtype, eigvecs.dtype)
    cast = lambda t: t if t.dtype == dtype else t.to(dtype)  # noqa: E731
    out = gt.denoise(cast(x), cast(sigma), cast(mean), cast(lam), cast(eigvecs), cast(lam_rest), output,
                     on_coeffs=on_coeffs)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def _check_through(coeffs: torch.Tensor, x: torch.Tensor) -> None:
    """check_finite(x) at the cost of a [B, r] sum: x is read only when the coefficients are not finite
    (a non-finite x, or finite values so large that they overflow, which check_finite tells apart)."""
    if not math.isfinite(coeffs.sum().item()):
        check_finite(x, "x")


class _GaussianDenoise(torch.autograd.Function):
    """x: [B, d], sigma: [B, T] -> [T, B, d]. Differentiable in x and sigma (not in the Gaussian)."""

    @staticmethod
    def forward(x, sigma, mean, lam, eigvecs, lam_rest, output, precision, basis=None, check_x=False,
                rest_zero=False):
        return _compute(x, sigma, mean, lam, eigvecs, lam_rest, output, precision, basis, check_x, rest_zero)

    @staticmethod
    def setup_context(ctx, inputs, result):
        x, sigma, mean, lam, eigvecs, lam_rest, output, precision, *_ = inputs
        ctx.output = output
        ctx.save_for_backward(x, sigma, mean, lam, eigvecs, lam_rest, result)
        ctx.save_for_forward(x, sigma, mean, lam, eigvecs, lam_rest, result)

    @staticmethod
    def backward(ctx, grad):
        x, sigma, mean, lam, eigvecs, lam_rest, result = ctx.saved_tensors
        p = _promoted(x, eigvecs)
        grad_x = grad_sigma = None
        if ctx.needs_input_grad[0]:
            # Every Jacobian here is symmetric in x: J^T g = J g, summed over the levels.
            jg = gt.jacobian_product(p(grad), p(x), p(sigma), p(lam), p(eigvecs), p(lam_rest), ctx.output)
            grad_x = jg.sum(0).to(x.dtype)
        if ctx.needs_input_grad[1]:
            ds = gt.sigma_derivative(p(x), p(sigma), p(mean), p(lam), p(eigvecs), p(lam_rest), ctx.output,
                                     p(_moved(result, x, ctx.output, sigma)))
            grad_sigma = (p(grad) * ds).sum(-1).T.to(sigma.dtype)
        return grad_x, grad_sigma, None, None, None, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, x_t, sigma_t, *_):
        x, sigma, mean, lam, eigvecs, lam_rest, result = ctx.saved_tensors
        p = _promoted(x, eigvecs)
        tangent = torch.zeros_like(p(result))
        if x_t is not None:
            tangent = tangent + gt.jacobian_product(p(x_t), p(x), p(sigma), p(lam), p(eigvecs), p(lam_rest),
                                                    ctx.output)
        if sigma_t is not None:
            ds = gt.sigma_derivative(p(x), p(sigma), p(mean), p(lam), p(eigvecs), p(lam_rest), ctx.output,
                                     p(_moved(result, x, ctx.output, sigma)))
            tangent = tangent + ds * p(sigma_t).T[..., None]
        return tangent.to(result.dtype)

    @staticmethod
    def vmap(info, in_dims, x, sigma, mean, lam, eigvecs, lam_rest, output, precision, basis=None, check_x=False,
             rest_zero=False):
        if any(dim is not None for dim in in_dims[2:6]):
            raise NotImplementedError("gaussian_denoise: vmap over the Gaussian's mean, eigenvalues, "
                                      "eigenvectors or lam_rest is not supported; vmap over x and sigma is")
        size = info.batch_size
        x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x.expand(size, *x.shape)
        sigma = sigma.movedim(in_dims[1], 0) if in_dims[1] is not None else sigma.expand(size, *sigma.shape)
        n, d = x.shape[1:]
        out = _GaussianDenoise.apply(x.reshape(size * n, d), sigma.reshape(size * n, -1), mean, lam, eigvecs,
                                     lam_rest, output, precision, basis, check_x, rest_zero)
        return out.reshape(out.shape[0], size, n, d), 1


def _promoted(x, eigvecs):
    dtype = compute_dtype(x.dtype, eigvecs.dtype)
    return lambda t: t.to(dtype)


def _moved(result, x, output, sigma):
    """Recover D - x ([T, B, d]) from the forward result."""
    if output == "denoised":
        return result - x
    s_tb = sigma.T[..., None]
    return result * s_tb**2 if output == "score" else -result * s_tb


def _needs_autograd(x: torch.Tensor, sigma: torch.Tensor) -> bool:
    """Whether a gradient, a forward-mode tangent or a torch.func transform can reach the op."""
    if not (inspectable(x) and inspectable(sigma)):
        return True
    if torch.is_grad_enabled() and (x.requires_grad or sigma.requires_grad):
        return True
    return unpack_dual(x).tangent is not None or unpack_dual(sigma).tangent is not None


def normalize_sigma(sigma, batch: int, device, dtype=torch.float32) -> tuple[torch.Tensor, bool]:
    """sigma as [B, T] and whether the caller asked for several levels (a 2-D sigma).

    Accepts what ``fastgauss._core.sigma.per_sample`` accepts (a float, a 0-d tensor, [1] or B
    values), or a 2-D [B, T] / [1, T] grid; every level finite and >= 0 (the one rule of
    ``_core.sigma``). ValueError naming sigma otherwise.
    """
    s = levels_tensor(sigma).to(device=device, dtype=dtype)
    if s.dim() == 0:
        grid, multi = s.expand(batch, 1), False
    elif s.dim() == 1 and s.shape[0] in (batch, 1):
        grid, multi = s[:, None].expand(batch, 1), False
    elif s.dim() == 2 and s.shape[0] in (batch, 1):
        grid, multi = s.expand(batch, s.shape[1]), True
    else:
        raise shape_error("sigma", batch, s.shape, f" or a [{batch}, T] / [1, T] grid of levels")
    return check_levels(grid).contiguous(), multi


def check_lam_rest(lam_rest) -> float:
    """The remainder eigenvalue as a float; ValueError naming ``lam_rest`` unless it is a finite number >= 0."""
    try:
        value = float(lam_rest) if not isinstance(lam_rest, (str, bytes, bool)) else math.nan
    except (TypeError, ValueError, RuntimeError):
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"lam_rest: expected an eigenvalue >= 0 (a float), got {lam_rest!r}")
    return value


def gaussian_denoise(x, sigma, mean, eigvals, eigvecs, *, lam_rest: float = 0.0, output: str = "denoised",
                     precision: str | None = None) -> torch.Tensor:
    """Optimal denoiser of N(mean, U diag(eigvals) U^T): mean + U diag(w) U^T (x - mean).

    x: [B, *feature_shape] (d features); the Gaussian, in this order: mean: [d] (or
    feature_shape); eigvals: [r] >= 0; eigvecs U: [d, r] orthonormal columns;
    w_k = eigvals_k / (eigvals_k + sigma_b^2). All on one device (a mismatch is a ValueError:
    nothing is moved implicitly).
    sigma: a float, a 0-d tensor, [B] (per sample), or [B, T] / [1, T] for T levels at once
      (one projection for all of them). >= 0; at 0 a direction with eigenvalue 0 maps to mean.
    lam_rest: eigenvalue given to the d - r directions outside span(U) (0: they map to mean).
    output: "denoised" (D), "score" ((D - x) / sigma^2) or "eps" ((x - D) / sigma); the last
      two need sigma > 0.
    precision: CUDA kernel product mode, "ieee" (exact fp32; default), "tf32" or "bf16"
      (eigenvectors and operands in bf16, fp32 accumulation; default when eigvecs is bf16).
    Returns [B, *feature_shape], or [T, B, *feature_shape] for a 2-D sigma. Differentiable in
    x and sigma (backward, torch.func.jvp, vmap, jacrev).

    Example:
        >>> import torch, fastgauss
        >>> U = torch.linalg.qr(torch.randn(16, 4))[0]
        >>> x = torch.randn(8, 16)
        >>> fastgauss.gaussian_denoise(x, 0.5, torch.zeros(16), torch.ones(4), U).shape
        torch.Size([8, 16])
    """
    x = as_float(as_tensor(x, "x"))
    d = math.prod(x.shape[1:]) if x.dim() >= 2 else flatten_batch(x, "x")  # the latter raises
    mean, eigvals, eigvecs = (as_float(as_tensor(t, name)) for t, name in
                              ((mean, "mean"), (eigvals, "eigvals"), (eigvecs, "eigvecs")))
    same_device(("x", x), ("mean", mean), ("eigvals", eigvals), ("eigvecs", eigvecs))  # never moved
    if not validated_once(mean, eigvals, eigvecs, d):  # True: no sign bit set, clamping would copy it as is
        eigvals = eigvals.clamp_min(0)  # negative only by rounding (validated): a flat direction
    rest_value = check_lam_rest(lam_rest)
    rest = torch.full((), rest_value, dtype=eigvals.dtype, device=x.device)
    return denoise_validated(x, sigma, mean.reshape(d), eigvals, eigvecs, rest, output=output,
                             precision=precision, rest_zero=rest_value == 0)


def denoise_validated(x: torch.Tensor, sigma, mean, eigvals, eigvecs, lam_rest, *, output: str = "denoised",
                      precision: str | None = None, basis=None, rest_zero: bool = False) -> torch.Tensor:
    """``gaussian_denoise`` for callers that validated the Gaussian already (GaussianDenoiser).

    x: float tensor [B, *feature_shape] on the Gaussian's device; mean: [d]; eigvals: [r];
    eigvecs: [d, r]; lam_rest: 0-d tensor; basis: None or precision -> (U [d, r], U^T [r, d])
    contiguous in the kernels' dtype (a cache of ``kernels.gaussian.kernel_basis``); rest_zero:
    lam_rest is known to be 0 (False is always correct). Checks x, sigma, output and precision.
    """
    flat = flatten_batch(x, "x")
    if output not in OUTPUTS:
        raise ValueError(f"output: expected one of {', '.join(OUTPUTS)}, got {output!r}")
    if precision is None:
        precision = "bf16" if eigvecs.dtype == torch.bfloat16 else "ieee"
    precisions.check_precision(precision, PRECISIONS, "the Gaussian denoiser")
    check_x = inspectable(flat)  # x's finiteness: checked where the op reads x (see _compute)
    grid, multi = normalize_sigma(sigma, flat.shape[0], x.device,
                                  torch.float64 if x.dtype == torch.float64 else torch.float32)
    if output != "denoised" and grid.numel() and inspectable(grid) and (grid == 0).any():
        raise ValueError(f"sigma: output={output!r} divides by sigma, which must be > 0")
    if _needs_autograd(flat, grid):
        out = _GaussianDenoise.apply(flat, grid, mean, eigvals, eigvecs, lam_rest, output, precision, basis,
                                     check_x, rest_zero)
    else:  # nothing to differentiate: skip the autograd.Function's bookkeeping
        out = _compute(flat, grid, mean, eigvals, eigvecs, lam_rest, output, precision, basis, check_x,
                       rest_zero)
    out = out.reshape(out.shape[0], *x.shape)
    return out if multi else out[0]
