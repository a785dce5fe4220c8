"""``EmpiricalDenoiser``: the memorizing denoiser of a training set as an nn.Module (the denoiser protocol)."""

from __future__ import annotations

import torch
from torch import nn

from . import _torch as et
from ..._core.arrays import as_float, as_tensor, check_finite, probe_stack
from ..._core.device import applied_device, require_device
from ..._core.precision import check_precision
from .op import PRECISIONS, _denoise, _queries, empirical_denoise, levels
from .stream import _stream
from .training_set import TrainingSet


class EmpiricalDenoiser(nn.Module):
    """The memorizing denoiser of a training set, by the denoiser protocol ``den(x, sigma)``.

    data: [N, *feature_shape], left where it is. device: where the work runs ("cuda", "cuda:1",
    "cpu"; default: the data's device). Queries must be on that device (``den.device``; a
    mismatch is a ValueError, nothing is moved implicitly) and results are there; data held
    elsewhere (host memory: pin it for faster copies) streams there chunk by chunk, because
    ``device=`` asked for it. ``.to(device)`` moves the data and the work there, as for a
    buffer. With ``group=`` each rank holds a shard and results merge exactly across ranks (an
    all-reduce per call; every rank must call with the same queries). A device this
    machine lacks is a ValueError. In-place changes to ``data`` are seen at the next call
    (caches follow the tensor's version); NaN written into it then is a ValueError.

    Example:
        >>> import torch, fastgauss
        >>> den = fastgauss.EmpiricalDenoiser(torch.randn(500, 8))
        >>> den(torch.randn(4, 8), torch.full((4,), 0.5)).shape
        torch.Size([4, 8])
    """

    def __init__(self, data, *, precision: str = "ieee", group=None, chunk_rows: int | None = None, device=None):
        super().__init__()
        check_precision(precision, PRECISIONS, "the empirical denoiser")
        self.data = TrainingSet(data, group=group, chunk_rows=chunk_rows, device=device)
        self.precision = precision

    @property
    def device(self) -> torch.device:
        """Where the work runs: queries must be there."""
        return self.data.device

    def _apply(self, fn, *args, **kwargs):
        # .to() / .cuda() / .double(): the data moves as a buffer would, and the work follows it
        target = applied_device(fn, self.data.device)
        self.data.source, self.data.device = fn(self.data.source), target  # caches follow the new tensor
        return super()._apply(fn, *args, **kwargs)

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
        denoised = self.forward(x, sigma)  # checks x's device first
        s = levels(sigma, x.shape[0], x.device, x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return (denoised - x) / s**2

    def jvp(self, x, sigma, v) -> tuple[torch.Tensor, torch.Tensor]:
        """(D, J v) from one pass over the data; v: [B, *feature_shape] or [K, B, *feature_shape].

        J v = sum_i w_i (y_i - D)((y_i - D) . v) / sigma^2 (J = dD/dx, symmetric), accumulated
        around the running weighted mean, with the near ties re-scored in float64 (see
        ``empirical_denoise``). x and v must be on ``device``.
        """
        x, flat, s = _queries(x, sigma, self.data)
        v, probes = probe_stack(v, x, owner="this EmpiricalDenoiser")
        check_finite(v, "v")
        if flat.shape[0] == 0:
            return x.clone(), v.clone()
        vk = v.reshape(v.shape[0] if probes else 1, *flat.shape)
        part = _stream(flat, s, self.data, probes=vk)
        denoised, jv, _ = et.finish(part, s.to(part.mu.dtype), vk.to(part.mu.dtype))
        denoised = (denoised + self.data.center.to(denoised)).to(x.dtype).reshape(x.shape)
        jv = jv.to(x.dtype).reshape(v.shape)
        return denoised, jv

    def extra_repr(self) -> str:
        return (f"N={self.data.n}, feature_shape={self.feature_shape}, device={self.device}, "
                f"precision={self.precision!r}, sharded={self.data.group is not None}")
