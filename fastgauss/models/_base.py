"""What every model adapter shares: the denoiser protocol's checks, class labels, dtype, chunking.

An adapter wraps a pretrained network as a denoiser D(x; sigma) in the library's convention
(EDM coordinates, pixels in [-1, 1], x = y + sigma * eps). A subclass implements only
``_denoise(x, sigma, labels)`` on one chunk; this base class turns the caller's sigma
(a float, a 0-d tensor or [B] values) into [B] values inside the model's range, the caller's
class labels into one per sample, splits the batch into ``max_batch`` chunks, casts inputs to
the network's dtype (or runs it under autocast) and returns float32 (float64 for float64 x).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from .._core.arrays import as_float, as_tensor, inspectable
from .._core.dtypes import compute_dtype
from .._core.sigma import per_sample

# A sigma this close to the range's ends (relative) is inside it: a float32 copy of
# sigma_min must not be refused because it rounded down.
RANGE_SLACK = 1e-5
LOW_PRECISION = (torch.float16, torch.bfloat16)


def forward_mode(x: torch.Tensor) -> bool:
    """True inside torch.func transforms (jvp, vmap) or when x carries a forward-mode tangent."""
    if not inspectable(x):
        return True
    from torch.autograd import forward_ad

    return forward_ad.unpack_dual(x).tangent is not None


def network_dtype(network) -> torch.dtype | None:
    """The dtype of the network's first floating parameter (else buffer); None when it has neither."""
    if isinstance(network, nn.Module):
        for tensors in (network.parameters(), network.buffers()):
            for p in tensors:
                if p.is_floating_point():
                    return p.dtype
    return None


class Adapter(nn.Module):
    """Base of the adapters: ``adapter(x, sigma, class_labels=None) -> D`` shaped like x.

    Attributes (read them, they describe the wrapped model):
        sigma_min, sigma_max   the noise levels the model was trained on; a sigma outside
                               raises ValueError naming the range
        feature_shape          (C, H, W) of one input where the model says so, else None
        label_dim              number of classes of a class-conditional model, 0 if unconditional
                               (-1: conditional, labels passed through as given)
        class_labels           default labels used when a call passes none (None: none)
        latent                 True for a model of a VAE's latent space: ``check_data`` refuses
                               pixel data for it
        network                the wrapped network (moves with ``.to()``)

    The adapter starts in eval mode (dropout off); ``.train()`` is the caller's choice.
    """

    def __init__(self, network, *, sigma_min: float, sigma_max: float, feature_shape=None, label_dim: int = 0,
                 class_labels=None, dtype: torch.dtype | None = None, max_batch: int | None = None,
                 latent: bool = False, data_range=(-1.0, 1.0)):
        super().__init__()
        if not callable(network):
            raise TypeError(f"network: expected an nn.Module or a callable, got {type(network).__name__}")
        if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min < sigma_max):
            raise ValueError(f"sigma range: expected 0 < sigma_min < sigma_max, both finite, "
                             f"got [{sigma_min!r}, {sigma_max!r}]")
        if dtype is not None and dtype not in (torch.float32, torch.float64, *LOW_PRECISION):
            raise ValueError(f"dtype: expected torch.float16, torch.bfloat16, torch.float32 or torch.float64, "
                             f"got {dtype!r}")
        if max_batch is not None and (not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1):
            raise ValueError(f"max_batch: expected a positive integer or None, got {max_batch!r}")
        lo, hi = _check_range(data_range)
        self.network = network
        # data_range (lo, hi): the model's data lives in [lo, hi]; x_model = offset + scale x,
        # sigma_model = scale sigma, D = (D_model - offset) / scale  (DESIGN.md section 1).
        self.data_scale, self.data_offset = (hi - lo) / 2, (hi + lo) / 2
        self.sigma_min = float(sigma_min) / self.data_scale
        self.sigma_max = float(sigma_max) / self.data_scale
        self.feature_shape = tuple(int(n) for n in feature_shape) if feature_shape is not None else None
        self.label_dim = int(label_dim)
        self.dtype = dtype
        self.max_batch = max_batch
        self.latent = bool(latent)
        self.class_labels = class_labels
        self.eval()

    # ------------------------------------------------------------------ protocol
    def forward(self, x, sigma, class_labels=None) -> torch.Tensor:
        """D(x; sigma). x: [B, *feature_shape]; sigma: float, 0-d tensor or [B] values inside
        [sigma_min, sigma_max]; class_labels: one label for all, or [B] labels (class indices;
        for EDM networks also one-hot / soft rows [B, label_dim]). Returns [B, *feature_shape],
        float32 (float64 when x is float64)."""
        x = as_float(as_tensor(x, "x"))
        if x.dim() < 2:
            raise ValueError(f"x: expected shape [B, *feature_shape], got {tuple(x.shape)}")
        if self.feature_shape is not None and tuple(x.shape[1:]) != self.feature_shape:
            raise ValueError(f"x: the model takes inputs [B, {', '.join(map(str, self.feature_shape))}], "
                             f"got {tuple(x.shape)}")
        out_dtype = compute_dtype(x.dtype)
        x = x.to(out_dtype)
        batch = x.shape[0]
        s = self._sigmas(sigma, batch, x.device)
        labels = self._labels(self.class_labels if class_labels is None else class_labels, batch, x.device)
        x_model = self.data_offset + self.data_scale * x if self.data_scale != 1 or self.data_offset else x
        s_model = s * self.data_scale
        step = batch if self.max_batch is None else self.max_batch
        parts = []
        with self._context(x):
            for start in range(0, batch, step):
                rows = slice(start, start + step)
                part = self._denoise(x_model[rows], s_model[rows], None if labels is None else labels[rows])
                parts.append(part.to(out_dtype))
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.data_scale != 1 or self.data_offset:
            out = (out - self.data_offset) / self.data_scale
        return out

    def _denoise(self, x: torch.Tensor, sigma: torch.Tensor, labels) -> torch.Tensor:
        """D on one chunk in the model's own units: x [b, ...], sigma [b] float64, labels [b] or None."""
        raise NotImplementedError

    def check_data(self, data, name: str = "data") -> None:
        """ValueError naming ``name`` when data ([N, *feature_shape]) cannot be fed to this model:
        a shape or channel count that differs from the model's (both are named), or pixel data
        for a latent model."""
        shape = tuple(data.shape[1:]) if hasattr(data, "shape") and len(data.shape) >= 2 else None
        if shape is None:
            raise ValueError(f"{name}: expected [N, *feature_shape], got {getattr(data, 'shape', type(data).__name__)}")
        if self.feature_shape is None or shape == self.feature_shape:
            return
        want = "[" + ", ".join(map(str, self.feature_shape)) + "]"
        got = "[" + ", ".join(map(str, shape)) + "]"
        if self.latent:
            raise ValueError(f"{name}: images {got} look like pixel data, but this model works in a VAE's latent "
                             f"space ({want}); encode the images with the model's VAE and pass the latents")
        what = "channel count" if len(shape) == len(self.feature_shape) and shape[1:] == self.feature_shape[1:] \
            else "shape"
        raise ValueError(f"{name}: {what} differs from the model's: data {got}, model {want}")

    # ------------------------------------------------------------------ helpers
    def _compute_dtype(self) -> torch.dtype | None:
        return network_dtype(self.network)

    def _context(self, x: torch.Tensor):
        """Autocast for a low-precision dtype= on a float32 network; the math attention path
        under forward-mode AD (fused kernels have no forward-mode rule)."""
        stack = contextlib.ExitStack()
        if self.dtype in LOW_PRECISION and self._compute_dtype() not in LOW_PRECISION:
            stack.enter_context(torch.autocast(x.device.type, dtype=self.dtype))
        if forward_mode(x):
            from torch.nn.attention import SDPBackend, sdpa_kernel

            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            stack.enter_context(self._forward_mode_context())
        return stack

    def _forward_mode_context(self):
        return contextlib.nullcontext()

    def _net_input(self, x: torch.Tensor) -> torch.Tensor:
        """x cast to the dtype the network computes in: dtype= when it is float32/float64, else the
        network's parameters' dtype; unchanged for a network without tensors of its own."""
        target = self._compute_dtype()
        if self.dtype is not None and self.dtype not in LOW_PRECISION:
            target = self.dtype
        return x if target is None else x.to(target)

    def _sigmas(self, sigma, batch: int, device) -> torch.Tensor:
        s = per_sample(sigma, batch, device=device, dtype=torch.float64, positive=True)
        if inspectable(s):
            lo, hi = self.sigma_min * (1 - RANGE_SLACK), self.sigma_max * (1 + RANGE_SLACK)
            bad = ~((s >= lo) & (s <= hi))
            if bad.any():
                worst = s[bad][0].item()
                raise ValueError(f"sigma: {worst:g} is outside the model's range "
                                 f"[{self.sigma_min:g}, {self.sigma_max:g}]")
        return s  # unclamped: the formulas use the caller's sigma (timesteps clip to the schedule's ends)

    def _labels(self, labels, batch: int, device):
        """None, LongTensor [B] of class indices, or float [B, label_dim] rows (EDM-style)."""
        if self.label_dim == 0:
            if labels is not None:
                raise ValueError("class_labels: this model is unconditional; pass no labels")
            return None
        if labels is None:
            raise ValueError("class_labels: this model is class-conditional; pass one label for all samples "
                             "or one per sample (class_labels=...)")
        t = labels if isinstance(labels, torch.Tensor) else torch.as_tensor(labels)
        t = t.to(device)
        if t.is_floating_point() and self.label_dim > 0 and t.dim() >= 1 and t.shape[-1] == self.label_dim:
            rows = t.reshape(-1, self.label_dim)
            if rows.shape[0] == 1:
                rows = rows.expand(batch, -1)
            if rows.shape[0] != batch:
                raise ValueError(f"class_labels: expected 1 or {batch} rows of {self.label_dim}, "
                                 f"got {tuple(t.shape)}")
            return rows
        if t.is_floating_point() and self.label_dim > 0:
            if not torch.equal(t, t.round()):
                raise ValueError(f"class_labels: expected class indices or rows of {self.label_dim} values, "
                                 f"got {tuple(t.shape)} {t.dtype}")
        if self.label_dim < 0:  # a conditioning the adapter does not interpret: passed through
            t = t.reshape(-1) if t.dim() <= 1 else t
            return t.expand(batch, *t.shape[1:]) if t.shape[0] == 1 else t
        idx = t.reshape(-1).long()
        if idx.numel() == 1:
            idx = idx.expand(batch)
        if idx.shape != (batch,):
            raise ValueError(f"class_labels: expected one label or {batch} labels, got shape {tuple(t.shape)}")
        if ((idx < 0) | (idx >= self.label_dim)).any():
            raise ValueError(f"class_labels: labels must lie in 0..{self.label_dim - 1}, got "
                             f"{idx.min().item()}..{idx.max().item()}")
        return idx

    def extra_repr(self) -> str:
        return (f"sigma=[{self.sigma_min:g}, {self.sigma_max:g}], feature_shape={self.feature_shape}, "
                f"label_dim={self.label_dim}, latent={self.latent}")


def _check_range(data_range):
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range: expected (lo, hi), e.g. (-1, 1) or (0, 1), got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range: expected finite lo < hi, got {data_range!r}")
    return lo, hi


def broadcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[b] values reshaped to [b, 1, ..., 1] to multiply a [b, ...] tensor, in its dtype."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
