"""The empirical (memorizing) denoiser: the optimal denoiser for the training set itself.

D(x; sigma) = sum_i w_i y_i with w = softmax_i(-|x - y_i|^2 / (2 sigma^2)), streamed over the
training set in chunks (never a B x N matrix), from device memory, host memory, or shards
spread over torch.distributed ranks."""

from __future__ import annotations

import torch

from . import _torch as et
from ..._core import precision as precisions
from ..._core.arrays import as_float, as_tensor, check_finite, flatten_batch, inspectable
from ..._core.device import require_device, same_device
from ..._core.dtypes import compute_dtype
from ..._core.sigma import per_sample
from .precision import error_bound
from .stream import _stream
from .training_set import TrainingSet


PRECISIONS = precisions.EMPIRICAL


class _EmpiricalDenoise(torch.autograd.Function):
    """x: [B, d], sigma: [B] -> D: [B, d]; backward and jvp stream the data once more."""

    @staticmethod
    def forward(x, sigma, data, precision):
        part = _stream(x, sigma, data, precision=precision)
        return (part.mu + data.center.to(part.mu)).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, sigma, data, precision = inputs
        ctx.data = data
        ctx.save_for_backward(x, sigma)
        ctx.save_for_forward(x, sigma)

    @staticmethod
    def _derivatives(ctx, vectors, sigma_grad):
        x, sigma = ctx.saved_tensors
        part = _stream(x, sigma, ctx.data, probes=vectors, sigma_grad=sigma_grad)
        return et.finish(part, sigma.to(part.mu.dtype), vectors)

    @staticmethod
    def backward(ctx, grad):
        # J is symmetric: J^T g = J g, one more pass over the data (with dD/dsigma in it).
        _, jg, ds = _EmpiricalDenoise._derivatives(ctx, grad[None], ctx.needs_input_grad[1])
        grad_x = jg[0].to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_sigma = (ds * grad).sum(1).to(grad.dtype) if ctx.needs_input_grad[1] else None
        return grad_x, grad_sigma, None, None

    @staticmethod
    def jvp(ctx, x_t, sigma_t, *_):
        x, _ = ctx.saved_tensors
        vectors = (x_t if x_t is not None else torch.zeros_like(x))[None]
        _, jv, ds = _EmpiricalDenoise._derivatives(ctx, vectors, sigma_t is not None)
        tangent = jv[0]
        if sigma_t is not None:
            tangent = tangent + ds * sigma_t[:, None]
        return tangent.to(x.dtype)

    @staticmethod
    def vmap(info, in_dims, x, sigma, data, precision):
        size = info.batch_size
        x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x.expand(size, *x.shape)
        sigma = sigma.movedim(in_dims[1], 0) if in_dims[1] is not None else sigma.expand(size, *sigma.shape)
        n, d = x.shape[1:]
        out = _EmpiricalDenoise.apply(x.reshape(size * n, d), sigma.reshape(size * n), data, precision)
        return out.reshape(size, n, d), 0


#: Why the empirical denoiser takes no sigma = 0 (the tail of its error).
ZERO_HINT = ("; the empirical denoiser at sigma = 0 is a nearest-neighbour lookup: use "
             "fastgauss.nearest_neighbors")


def levels(sigma, batch: int, device, dtype) -> torch.Tensor:
    """sigma as [B] levels > 0 (``fastgauss._core.sigma.per_sample``)."""
    return per_sample(sigma, batch, device=device, dtype=dtype, positive=True, hint=ZERO_HINT)


def _queries(x, sigma, data: TrainingSet):
    """(x as a float tensor, its rows [B, d], sigma [B]) checked against the training set; x must be
    on the compute device (never moved there)."""
    x = require_device(as_float(as_tensor(x, "x")), "x", data.device, "this EmpiricalDenoiser")
    flat = flatten_batch(x, "x")
    if flat.shape[1] != data.dim:
        raise ValueError(f"x: has {flat.shape[1]} features (shape {tuple(x.shape)}) but the training set has "
                         f"{data.dim} (feature shape {data.feature_shape})")
    check_finite(flat, "x")
    s = levels(sigma, flat.shape[0], x.device, compute_dtype(x.dtype))
    return x, flat, s


def _denoise(x, sigma, data: TrainingSet, precision: str) -> torch.Tensor:
    precisions.check_precision(precision, PRECISIONS, "the empirical denoiser")
    x, flat, s = _queries(x, sigma, data)
    if flat.shape[0] == 0:
        return x.clone()
    return _EmpiricalDenoise.apply(flat, s, data, precision).reshape(x.shape)


def empirical_denoise(x, sigma, data, *, precision: str = "ieee") -> torch.Tensor:
    """Optimal denoiser for the training set ``data`` (the memorizing denoiser).

    x: [B, *feature_shape]; sigma: a float, 0-d tensor or [B] values, > 0; data: [N, *feature_shape]
    on x's device (a mismatch is a ValueError: nothing is moved; to stream host data to a GPU, ask
    for it with ``EmpiricalDenoiser(data, device=...)``).
    precision: "ieee" (exact fp32 products, default), "tf32", "bf16" (CUDA kernel modes) or
      "auto" (the fastest mode whose error bound keeps every weight within 1e-4 relative).
    Returns [B, *feature_shape]. Streams the data in chunks: memory O(B d + N d), never O(B N).

    Accuracy (exact path, "ieee" and "auto"): the logits are first formed in fp32 as
    (x'.y' - |y'|^2 / 2) / sigma^2 from centred data, with an error bound E per logit
    (``error_bound``). Where E could move a weight by more than 1e-6, every row whose fp32 logit
    lies within 2E + ln(N / 1e-7) of the maximum (the near ties, usually one or two rows) is
    re-scored in float64 from direct differences |x - y_i|^2 and its softmax is exact; the
    rows outside carry less than 1e-7 of the weight together. So near ties (a query at the
    midpoint of two images, two candidates 1 nat apart) are exact at every sigma: tested within
    1e-5 relative of float64 at d = 3072, sigma = 0.002 to 0.05. A query whose window holds more
    than 256 rows is recomputed in float64. "tf32" and "bf16" are the plain kernel modes
    (documented error, no re-scoring). ``EmpiricalDenoiser.last_precision`` tells what ran.

    Example:
        >>> import torch, fastgauss
        >>> data = torch.randn(100, 3, 4, 4)
        >>> fastgauss.empirical_denoise(data[:2] + 1e-3, 0.002, data).sub(data[:2]).abs().max() < 1e-5
        tensor(True)
    """
    x, data = as_float(as_tensor(x, "x")), as_float(as_tensor(data, "data"))
    same_device(("x", x), ("data", data))  # never moved
    return _denoise(x, sigma, TrainingSet(data), precision)
