"""Cheaper forward-mode rules for the layers of a diffusion network, active inside fastgauss.jvp.

PyTorch's forward-mode formulas for ``native_group_norm`` / ``native_layer_norm`` also
propagate tangents to the saved mean and rstd and materialize the bias's zero tangent, and
softmax attention's materializes the softmax tangent and its safe-softmax masking; a
convolution's adds a zero bias tangent and SiLU's multiplies three times at the tangent's
size. With K probes every such pass runs over a [K, B, ...] tangent. The rules below give
the same derivatives in fewer passes:

    normalization  x^ = (x - m) r, y = w x^ + b:  dy = w r (dx - mean(dx) - x^ mean(x^ dx))
    attention      O = A V, A = softmax(s Q K^T):  P = A * dS, dS = s (dQ K^T + Q dK^T),
                   dO = P V - rowsum(P) O + A dV
    convolution    dy = conv(dx, w)          SiLU  dy = silu'(x) dx, silu' formed at x's size

Each rule is an autograd.Function whose forward is PyTorch's own op (the primal values are
PyTorch's, bit for bit), whose jvp recomputes what it needs from the saved inputs and output
with differentiable ops (so reverse mode through J v stays exact), and whose backward is
PyTorch's own derivative of the op.
"""

from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode


def _carries_tangent(t) -> bool:
    """Whether t may carry a tangent: wrapped by a torch.func transform, or a forward-AD dual.

    Parameters and other tensors that do not depend on the differentiated input are neither,
    and torch.func then hands their rules a materialized zero tangent; the rules skip those
    terms instead of spending a pass over a [K, B, ...] tensor on them.
    """
    return isinstance(t, torch.Tensor) and (torch._C._functorch.is_functorch_wrapped_tensor(t)
                                            or fwAD.unpack_dual(t).tangent is not None)


def _live(tangents, live):
    return [t if flag else None for t, flag in zip(tangents, live)]


def _op_gradients(op, inputs, grad_out):
    """d<op(*inputs), grad_out>/d inputs by PyTorch's own backward (None for non-tensors)."""
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() if isinstance(t, torch.Tensor) else t for t in inputs]
        wanted = [t for t in leaves if isinstance(t, torch.Tensor)]
        grads = iter(torch.autograd.grad(op(*leaves), wanted, grad_out, allow_unused=True))
    return tuple(next(grads) if isinstance(t, torch.Tensor) else None for t in leaves)


def _sum(parts, empty):
    out = parts[0] if parts else empty()
    for part in parts[1:]:
        out = out + part
    return out


def _normalization_tangent(x, weight, dx, dw, db, rows, eps, view):
    """Tangent of w x^ + b, x^ = (x - mean) rstd over rows, given the tangents of x, w and b (None: zero)."""
    xr = x.reshape(rows + (-1,))
    centred = xr - xr.mean(-1, keepdim=True)
    rstd = torch.rsqrt(centred.square().mean(-1, keepdim=True) + eps)
    xhat = centred * rstd
    parts = []
    if dx is not None:
        dxr = dx.reshape(rows + (-1,))
        dxhat = ((dxr - dxr.mean(-1, keepdim=True) - xhat * (xhat * dxr).mean(-1, keepdim=True)) * rstd).reshape(x.shape)
        parts.append(dxhat if weight is None else dxhat * weight.reshape(view))
    if dw is not None:
        parts.append(xhat.reshape(x.shape) * dw.reshape(view))
    if db is not None:
        parts.append(db.reshape(view).expand_as(x))
    return _sum(parts, lambda: torch.zeros_like(x))


def _normalize(kind, arg, x, weight, bias, eps):
    """F.group_norm (arg: the number of groups) or F.layer_norm (arg: the normalized shape)."""
    op = F.group_norm if kind == "group" else F.layer_norm
    return op(x, arg, weight, bias, eps)


def _normalization_layout(kind, arg, x):
    """(rows normalized together, the view that broadcasts w and b over x)."""
    if kind == "group":
        return (x.shape[0], arg), (1, -1) + (1,) * (x.dim() - 2)
    return tuple(x.shape[: x.dim() - len(arg)]), tuple(arg)


class _Normalization(torch.autograd.Function):
    """Group norm or layer norm: one tangent formula, no tangents for the saved statistics."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, kind, arg, weight, bias, eps, live):
        return _normalize(kind, arg, x, weight, bias, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, ctx.kind, ctx.arg, weight, bias, ctx.eps, ctx.live = inputs
        ctx.save_for_backward(x, weight, bias)
        ctx.save_for_forward(x, weight, bias)

    @staticmethod
    def jvp(ctx, dx, _kind, _arg, dw, db, _eps, _live_flags):
        x, weight, _ = ctx.saved_tensors
        dx, dw, db = _live((dx, dw, db), ctx.live)
        rows, view = _normalization_layout(ctx.kind, ctx.arg, x)
        return _normalization_tangent(x, weight, dx, dw, db, rows, ctx.eps, view)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        norm = lambda a, w, b: _normalize(ctx.kind, ctx.arg, a, w, b, ctx.eps)  # noqa: E731
        dx, dw, db = _op_gradients(norm, (x, weight, bias), grad_out)
        return dx, None, None, dw, db, None, None


class _Attention(torch.autograd.Function):
    """softmax(scale Q K^T) V without mask, dropout or causality (those keep PyTorch's rule)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(q, k, v, scale, live):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        q, k, v, ctx.scale, ctx.live = inputs
        ctx.save_for_backward(q, k, v, output)
        ctx.save_for_forward(q, k, v, output)

    @staticmethod
    def jvp(ctx, dq, dk, dv, _scale, _live_flags):
        q, k, v, out = ctx.saved_tensors
        dq, dk, dv = _live((dq, dk, dv), ctx.live)
        scale = ctx.scale if ctx.scale is not None else 1 / math.sqrt(q.shape[-1])
        q_scaled = q * scale
        probs = torch.softmax(q_scaled @ k.transpose(-2, -1), -1)
        score_parts = [] if dq is None else [(dq * scale) @ k.transpose(-2, -1)]
        if dk is not None:
            score_parts.append(q_scaled @ dk.transpose(-2, -1))
        parts = []
        if score_parts:
            p = probs * _sum(score_parts, None)
            parts.append(p @ v - p.sum(-1, keepdim=True) * out)
        if dv is not None:
            parts.append(probs @ dv)
        return _sum(parts, lambda: torch.zeros_like(out))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        q, k, v, _ = ctx.saved_tensors
        sdpa = lambda a, b, c: F.scaled_dot_product_attention(a, b, c, scale=ctx.scale)  # noqa: E731
        return (*_op_gradients(sdpa, (q, k, v), grad_out), None, None)


class _Convolution(torch.autograd.Function):
    """Any torch.conv*d / conv_transpose*d: the tangent is one convolution of dx, with no bias pass."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, op, settings, live):
        return op(x, weight, bias, *settings)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, ctx.op, ctx.settings, ctx.live = inputs
        ctx.save_for_backward(x, weight, bias)
        ctx.save_for_forward(x, weight, bias)

    @staticmethod
    def jvp(ctx, dx, dw, db, _op, _settings, _live_flags):
        x, weight, _ = ctx.saved_tensors
        dx, dw, db = _live((dx, dw, db), ctx.live)
        parts = [] if dx is None else [ctx.op(dx, weight, None, *ctx.settings)]
        if dw is not None:
            parts.append(ctx.op(x, dw, None, *ctx.settings))
        out = _sum(parts, lambda: ctx.op(torch.zeros_like(x), weight, None, *ctx.settings))
        if db is not None:
            out = out + db.reshape((1, -1) + (1,) * (x.dim() - 2))
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, bias = ctx.saved_tensors
        conv = lambda a, w, b: ctx.op(a, w, b, *ctx.settings)  # noqa: E731
        return (*_op_gradients(conv, (x, weight, bias), grad_out), None, None, None)


class _SiLU(torch.autograd.Function):
    """x sigmoid(x): the derivative is formed at the primal's size, then one multiply per tangent."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x):
        return F.silu(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])

    @staticmethod
    def jvp(ctx, dx):
        (x,) = ctx.saved_tensors
        sig = torch.sigmoid(x)
        return dx * (sig * (1 + x * (1 - sig)))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return _op_gradients(F.silu, ctx.saved_tensors, grad_out)


_CONVOLUTIONS = {
    op: names for names, ops in (
        (("stride", "padding", "dilation", "groups"), (torch.conv1d, torch.conv2d, torch.conv3d)),
        (("stride", "padding", "output_padding", "groups", "dilation"),
         (torch.conv_transpose1d, torch.conv_transpose2d, torch.conv_transpose3d)),
    ) for op in ops
}
_CONVOLUTION_DEFAULTS = {"stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}


def _arguments(names, defaults, args, kwargs):
    values = dict(zip(names, args))
    values.update(kwargs)
    return [values.get(n, d) for n, d in zip(names, defaults)]


def _flags(*tensors):
    return tuple(_carries_tangent(t) for t in tensors)


class CheaperTangents(TorchFunctionMode):
    """Routes convolutions, F.silu, F.group_norm, F.layer_norm and plain attention to the rules above.

    probes: tangents per primal (K under vmap). A rule costs about 0.7 ms of Python and
    functorch bookkeeping per call on CPU, so only calls whose K x input elements reach
    min_elements take it. A call whose tensors carry no tangent, or that uses options a rule
    does not cover (in-place SiLU, attention masks, dropout, causality, grouped-query
    attention), runs PyTorch's own op.
    """

    def __init__(self, probes: int = 1, min_elements: int = 0):
        super().__init__()
        self.min_primal_elements = min_elements / max(probes, 1)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = _RULES.get(func)
        large = rule is not None and args and isinstance(args[0], torch.Tensor) and \
            args[0].numel() >= self.min_primal_elements
        out = rule(args, kwargs) if large else None
        return func(*args, **kwargs) if out is None else out


def _convolution_rule(func):
    names = ("input", "weight", "bias") + _CONVOLUTIONS[func]
    defaults = (None, None, None) + tuple(_CONVOLUTION_DEFAULTS[n] for n in _CONVOLUTIONS[func])

    def rule(args, kwargs):
        x, weight, bias, *settings = _arguments(names, defaults, args, kwargs)
        live = _flags(x, weight, bias)
        return _Convolution.apply(x, weight, bias, func, tuple(settings), live) if any(live) else None
    return rule


def _silu_rule(args, kwargs):
    x, inplace = _arguments(("input", "inplace"), (None, False), args, kwargs)
    return None if inplace or not _carries_tangent(x) else _SiLU.apply(x)


def _group_norm_rule(args, kwargs):
    x, groups, weight, bias, eps = _arguments(("input", "num_groups", "weight", "bias", "eps"),
                                              (None, None, None, None, 1e-5), args, kwargs)
    live = _flags(x, weight, bias)
    return _Normalization.apply(x, "group", groups, weight, bias, eps, live) if any(live) else None


def _layer_norm_rule(args, kwargs):
    x, shape, weight, bias, eps = _arguments(("input", "normalized_shape", "weight", "bias", "eps"),
                                             (None, None, None, None, 1e-5), args, kwargs)
    live = _flags(x, weight, bias)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return _Normalization.apply(x, "layer", shape, weight, bias, eps, live) if any(live) else None


def _attention_rule(args, kwargs):
    q, k, v, mask, dropout, causal, scale, gqa = _arguments(
        ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa"),
        (None, None, None, None, 0.0, False, None, False), args, kwargs)
    if mask is not None or dropout != 0 or causal or gqa:
        return None
    if not (q.dim() == k.dim() == v.dim() >= 2 and q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        return None
    live = _flags(q, k, v)
    return _Attention.apply(q, k, v, scale, live) if any(live) else None


_RULES = {**{op: _convolution_rule(op) for op in _CONVOLUTIONS}, F.silu: _silu_rule,
          F.group_norm: _group_norm_rule, F.layer_norm: _layer_norm_rule,
          F.scaled_dot_product_attention: _attention_rule}


def cheaper_tangents(probes: int = 1, min_elements: int = 0) -> CheaperTangents:
    """A context within which convolutions, SiLU, group/layer norm and attention use the cheaper rules."""
    return CheaperTangents(probes, min_elements)
