"""The empirical (memorizing) denoiser: the optimal denoiser for the training set itself.

D(x; sigma) = sum_i w_i y_i with w = softmax_i(-|x - y_i|^2 / (2 sigma^2)), streamed over the
training set in chunks (never a B x N matrix), from device memory, host memory, or shards
spread over torch.distributed ranks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import _empirical_torch as et
from . import _rows
from ._arrays import as_float, as_tensor, check_finite, flatten_batch, inspectable
from ._backend import backend_for

PRECISIONS = ("ieee", "tf32", "bf16", "auto")


class TrainingSet:
    """A training set prepared for streaming: flat rows [N, d], their mean, and where they live.

    data: [N, *feature_shape]; kept where it is (host memory is streamed chunk by chunk to
    the queries' device). group: a torch.distributed group whose ranks each hold a shard;
    their partial results merge exactly.
    """

    def __init__(self, data, *, group=None, chunk_rows: int | None = None):
        data = as_float(as_tensor(data, "data"))
        if data.dim() < 2:
            raise ValueError(f"data: expected shape [N, *feature_shape], got {tuple(data.shape)}")
        self.feature_shape = tuple(data.shape[1:])
        self.rows = flatten_batch(data, "data")
        self.group = group
        self.chunk_rows = chunk_rows
        if self.rows.shape[0] == 0 and group is None:
            raise ValueError("data: the training set is empty")
        _rows.check_finite_rows(self.rows, "data")
        self.center = self._global_mean()
        self.last_precision: str | None = None
        self._norms: dict = {}
        self._max_norm: float | None = None
        self.centred_norms(torch.float64)  # once, up front: every call needs them

    @property
    def dim(self) -> int:
        return self.rows.shape[1]

    def _global_mean(self) -> torch.Tensor:
        total = _rows.mean(self.rows) * self.rows.shape[0]
        count = torch.tensor([float(self.rows.shape[0])], dtype=torch.float64, device=total.device)
        if self.group is not None:
            import torch.distributed as dist

            dist.all_reduce(total, group=self.group)
            dist.all_reduce(count, group=self.group)
            if count.item() == 0:
                raise ValueError("data: the training set is empty on every rank")
        return total / count

    def centred_norms(self, dtype) -> torch.Tensor:
        """|y_i - c|^2 for every row: [N], computed once in float64 (the kernel's row norms)."""
        if dtype not in self._norms:
            self._norms[dtype] = _rows.centred_square_norms(self.rows, self.center).to(dtype)
        return self._norms[dtype]

    def resolve_precision(self, precision: str, xc: torch.Tensor, sigma: torch.Tensor) -> tuple[str, str]:
        """(distance products, weighted-sum products) for the kernel.

        An explicit mode applies to both. "auto" lowers the distances to the mode
        ``choose_precision`` picks for this call and keeps the weighted sum at about fp32
        accuracy (tf32x3 on tensor cores; exact fp32 products when the distances are too).
        """
        if precision == "auto":
            if self._max_norm is None:
                self._max_norm = float(self.centred_norms(torch.float64).max().sqrt())
            qk = choose_precision(float(sigma.min()), float(xc.norm(dim=1).max()), self._max_norm, self.dim)
            modes = (qk, "ieee" if qk == "ieee" else "tf32x3")
        else:
            modes = (precision, precision)
        self.last_precision = modes[0] if modes[0] == modes[1] else f"{modes[0]} distances, {modes[1]} sums"
        return modes

    def chunks(self, device, dtype, rows: int):
        """(centred chunk [c, d], its squared norms [c]) on ``device`` in ``dtype``."""
        center = self.center.to(device=device, dtype=dtype)
        norms = self.centred_norms(dtype)
        for start in range(0, self.rows.shape[0], rows):
            chunk = self.rows[start:start + rows]
            yield (chunk.to(device=device, dtype=dtype, non_blocking=True) - center,
                   norms[start:start + rows].to(device=device, non_blocking=True))


@torch.no_grad()
def _stream(x: torch.Tensor, sigma: torch.Tensor, data: TrainingSet, *, probes=None, sigma_grad=False,
            precision="ieee") -> et.Partial:
    """The merged softmax partial of every row of the training set (all ranks) for queries x.

    Not differentiable itself (it updates its accumulators in place): _EmpiricalDenoise
    supplies the derivatives."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    xc = x.to(dtype) - data.center.to(device=x.device, dtype=dtype)
    inv_var = 1.0 / (sigma.to(dtype) ** 2)
    kernel = (probes is None and not sigma_grad and dtype == torch.float32 and data.rows.device == x.device
              and data.rows.shape[0] > 0 and inspectable(data.rows) and backend_for(x) == "triton")
    if kernel:
        from .kernels.empirical import empirical_partial

        mode = data.resolve_precision(precision, xc, sigma)
        rows = data.rows if data.rows.dtype == torch.float32 and data.rows.stride(1) == 1 else \
            data.rows.to(torch.float32).contiguous()
        m, l, acc = empirical_partial(xc.contiguous(), inv_var.contiguous(), rows, data.center.float(),
                                      data.centred_norms(torch.float32), precision=mode)
        part = et.Partial(m, l, acc)
    else:
        k = None if probes is None else probes.shape[0]
        part = et.Partial.empty(x.shape[0], x.shape[1], probes=k, sigma_grad=sigma_grad, dtype=dtype,
                                device=x.device)
        rows = data.chunk_rows or et.chunk_rows(x.shape[0], x.shape[1], xc.element_size(), k or 0)
        p = None if probes is None else probes.to(dtype)
        for yc, norms in data.chunks(x.device, dtype, rows):
            part = et.chunk_partial(part, xc, inv_var, yc, p, norms)
    if data.group is not None:
        part = _all_reduce_partial(part, data.group)
    return part


def _all_reduce_partial(part: et.Partial, group) -> et.Partial:
    import torch.distributed as dist

    m = part.m.clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    part = part.rescaled(m)
    for name in ("l", "acc", "acc_v", "acc_s", "l_s"):
        t = getattr(part, name)
        if t is not None:
            dist.all_reduce(t, group=group)
    return part


#: Unit roundoff of each product mode's operands (relative error of one product).
_UNIT_ROUNDOFF = {"bf16": 2.0**-8, "tf32": 2.0**-11, "ieee": 2.0**-24}
#: Fastest first.
_SPEED_ORDER = ("bf16", "tf32", "ieee")


def error_bound(mode: str, x_norm_max: float, y_norm_max: float, dim: int) -> float:
    """Bound on the error of a squared distance |x - y|^2 = |x'|^2 - 2 x'.y' + |y'|^2.

    The product x'.y' carries operand rounding (u for each of the two operands) plus fp32
    accumulation over d terms, relative to |x'| |y'| (Cauchy-Schwarz); it enters twice.
    """
    return 2 * (2 * _UNIT_ROUNDOFF[mode] + dim * 2.0**-24) * x_norm_max * y_norm_max


def choose_precision(sigma_min: float, x_norm_max: float, y_norm_max: float, dim: int,
                     tolerance: float = 1e-4) -> str:
    """The fastest mode whose bound keeps every weight within ``tolerance`` (relative).

    An error e in a squared distance moves a weight by a factor of at most exp(e / (2 sigma^2))
    in its numerator and as much in the normalizer: within exp(e / sigma^2) in all. When no
    mode meets the tolerance, exact fp32 products ("ieee") are the best there is.
    """
    for mode in _SPEED_ORDER:
        exponent = error_bound(mode, x_norm_max, y_norm_max, dim) / sigma_min**2
        if exponent < 1 and math.expm1(exponent) <= tolerance:
            return mode
    return "ieee"


class _EmpiricalDenoise(torch.autograd.Function):
    """x: [B, d], sigma: [B] -> D: [B, d]; backward and jvp stream the data once more."""

    @staticmethod
    def forward(x, sigma, data, precision):
        part = _stream(x, sigma, data, precision=precision)
        return (part.acc / part.l[:, None] + data.center.to(part.acc)).to(x.dtype)

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
        return et.finish(part, sigma.to(part.acc.dtype), vectors)

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


def _normalize_sigma(sigma, batch: int, device, dtype) -> torch.Tensor:
    s = torch.tensor(float(sigma), dtype=torch.float64) if isinstance(sigma, (int, float)) else as_float(as_tensor(sigma, "sigma"))
    s = s.to(device=device, dtype=dtype)
    if s.dim() == 0 or (s.dim() == 1 and s.shape[0] == 1):
        s = s.reshape(1).expand(batch)
    elif s.shape != (batch,):
        raise ValueError(f"sigma: expected a float, a 0-d tensor or {batch} values, got shape {tuple(s.shape)}")
    if inspectable(s) and s.numel():
        if not torch.isfinite(s).all():
            raise ValueError("sigma: must be finite")
        if (s <= 0).any():
            raise ValueError(f"sigma: must be > 0 (got {s.min().item():g}); the empirical denoiser at sigma = 0 "
                             "is a nearest-neighbour lookup: use fastgauss.nearest_neighbors")
    return s.contiguous()


def _queries(x, sigma, data: TrainingSet):
    """(x as a float tensor, its rows [B, d], sigma [B]) checked against the training set."""
    x = as_float(as_tensor(x, "x"))
    flat = flatten_batch(x, "x")
    if flat.shape[1] != data.dim:
        raise ValueError(f"x: has {flat.shape[1]} features (shape {tuple(x.shape)}) but the training set has "
                         f"{data.dim} (feature shape {data.feature_shape})")
    check_finite(flat, "x")
    s = _normalize_sigma(sigma, flat.shape[0], x.device, torch.float64 if x.dtype == torch.float64 else torch.float32)
    return x, flat, s


def _denoise(x, sigma, data: TrainingSet, precision: str) -> torch.Tensor:
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    x, flat, s = _queries(x, sigma, data)
    if flat.shape[0] == 0:
        return x.clone()
    return _EmpiricalDenoise.apply(flat, s, data, precision).reshape(x.shape)


def empirical_denoise(x, sigma, data, *, precision: str = "ieee") -> torch.Tensor:
    """Optimal denoiser for the training set ``data`` (the memorizing denoiser).

    x: [B, *feature_shape]; sigma: a float, 0-d tensor or [B] values, > 0; data: [N, *feature_shape].
    precision: "ieee" (exact fp32 products, default), "tf32", "bf16" (CUDA kernel modes) or
      "auto" (the fastest mode whose error bound keeps every weight within 1e-4 relative).
    Returns [B, *feature_shape]. Streams the data in chunks: memory O(B d + N d), never O(B N).

    Accuracy: the logits are formed as (x'.y' - |y'|^2 / 2) / sigma^2 from centred fp32 data, so
    a logit carries an error of about d * 2^-24 |x'| |y'| / sigma^2. When two training points
    are almost equally close at small sigma (a query near the midpoint of two images), their
    weights can then be off by percents at d = 3072 and sigma = 0.05; use float64 input where
    such near-ties matter.

    Example:
        >>> import torch, fastgauss
        >>> data = torch.randn(100, 3, 4, 4)
        >>> fastgauss.empirical_denoise(data[:2] + 1e-3, 0.002, data).sub(data[:2]).abs().max() < 1e-5
        tensor(True)
    """
    return _denoise(x, sigma, TrainingSet(data), precision)


class EmpiricalDenoiser(nn.Module):
    """The memorizing denoiser of a training set, by the denoiser protocol ``den(x, sigma)``.

    data: [N, *feature_shape], left where it is: on the GPU, or in host memory, in which case
    it streams to the queries' device chunk by chunk (pin it for faster copies). With
    ``group=`` each rank holds a shard and results merge exactly across ranks (an
    all-reduce per call; every rank must call with the same queries).

    Example:
        >>> import torch, fastgauss
        >>> den = fastgauss.EmpiricalDenoiser(torch.randn(500, 8))
        >>> den(torch.randn(4, 8), torch.full((4,), 0.5)).shape
        torch.Size([4, 8])
    """

    def __init__(self, data, *, precision: str = "ieee", group=None, chunk_rows: int | None = None):
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.data = TrainingSet(data, group=group, chunk_rows=chunk_rows)
        self.precision = precision

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return self.data.feature_shape

    def forward(self, x, sigma, *, precision: str | None = None) -> torch.Tensor:
        """D(x; sigma): [B, *feature_shape]; ``last_precision`` tells which mode "auto" chose."""
        return _denoise(x, sigma, self.data, precision or self.precision)

    @property
    def last_precision(self) -> str | None:
        """The product mode of the last kernel call (what precision="auto" picked)."""
        return self.data.last_precision

    def score(self, x, sigma) -> torch.Tensor:
        """(D(x; sigma) - x) / sigma^2."""
        x = as_float(as_tensor(x, "x"))
        s = _normalize_sigma(sigma, x.shape[0], x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (self.forward(x, sigma) - x) / s**2

    def jvp(self, x, sigma, v) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, J v) from one pass over the data; v: [B, *feature_shape] or [K, B, *feature_shape].

        J v = (sum_i w_i y_i (y_i . v) - D (D . v)) / sigma^2 (J = dD/dx, symmetric).
        """
        x, flat, s = _queries(x, sigma, self.data)
        v = as_float(as_tensor(v, "v")).to(x.device)
        probes = v.dim() == x.dim() + 1
        if v.shape[probes:] != x.shape:
            raise ValueError(f"v: expected shape {tuple(x.shape)} or [K, {', '.join(map(str, x.shape))}], "
                             f"got {tuple(v.shape)}")
        check_finite(v, "v")
        if flat.shape[0] == 0:
            return x.clone(), v.clone()
        vk = v.reshape(v.shape[0] if probes else 1, *flat.shape)
        part = _stream(flat, s, self.data, probes=vk)
        denoised, jv, _ = et.finish(part, s.to(part.acc.dtype), vk.to(part.acc.dtype))
        denoised = (denoised + self.data.center.to(denoised)).to(x.dtype).reshape(x.shape)
        return denoised, jv.to(x.dtype).reshape(v.shape)

    def extra_repr(self) -> str:
        return (f"N={self.data.rows.shape[0]}, feature_shape={self.feature_shape}, device={self.data.rows.device}, "
                f"precision={self.precision!r}, sharded={self.data.group is not None}")
