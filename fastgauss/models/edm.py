"""``from_edm``: an NVlabs EDM / EDM2 preconditioned network as a denoiser D(x; sigma).

Those networks already compute D in EDM coordinates: ``net(x, sigma, class_labels)`` with
sigma [B] and class labels one-hot [B, label_dim] (None for an unconditional net). The
adapter adds the protocol's checks: the sigma range, labels given as indices or rows, dtype,
chunking. fastgauss's own ``EDMDenoiser`` (``net(x, sigma)``) is wrapped the same way.
"""

from __future__ import annotations

import math

import torch

from ._base import Adapter

# EDM's training and sampling range, used when the network states none (EDMPrecond: 0 and inf).
EDM_SIGMA_MIN, EDM_SIGMA_MAX = 0.002, 80.0


def _attr(net, name):
    value = getattr(net, name, None)
    if value is None:
        inner = getattr(net, "model", None)  # EDM's Precond keeps its UNet as .model
        value = getattr(inner, name, None) if inner is not None else None
    return value


def _positive_finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False


class EDMNetDenoiser(Adapter):
    """An EDM-preconditioned network D(x, sigma[, class_labels]) as a protocol denoiser.

    x: [B, C, H, W] in [-1, 1] + noise; sigma: float, 0-d or [B]; returns [B, C, H, W].
    Build it with :func:`from_edm`.
    """

    def __init__(self, net, *, sigma_min=None, sigma_max=None, feature_shape=None, class_labels=None, dtype=None,
                 max_batch=None, latent=False, data_range=(-1.0, 1.0)):
        lo = sigma_min if sigma_min is not None else _attr(net, "sigma_min")
        hi = sigma_max if sigma_max is not None else _attr(net, "sigma_max")
        lo = float(lo) if _positive_finite(lo) else EDM_SIGMA_MIN
        hi = float(hi) if _positive_finite(hi) else EDM_SIGMA_MAX
        if feature_shape is None:
            channels, res = _attr(net, "img_channels"), _attr(net, "img_resolution")
            if channels is not None and res is not None:
                feature_shape = (int(channels), int(res), int(res))
            else:
                feature_shape = getattr(net, "feature_shape", None)
        label_dim = int(_attr(net, "label_dim") or 0)
        super().__init__(net, sigma_min=lo, sigma_max=hi, feature_shape=feature_shape, label_dim=label_dim,
                         class_labels=class_labels, dtype=dtype, max_batch=max_batch, latent=latent,
                         data_range=data_range)

    def _denoise(self, x, sigma, labels):
        x_in = self._net_input(x)
        s = sigma.to(torch.float32 if x_in.dtype in (torch.float16, torch.bfloat16) else x_in.dtype)
        if labels is None:
            return self.network(x_in, s)
        if labels.dim() == 1:  # class indices -> one-hot rows
            labels = torch.nn.functional.one_hot(labels, self.label_dim)
        return self.network(x_in, s, labels.to(torch.float32))


def from_edm(net, *, sigma_min: float | None = None, sigma_max: float | None = None, feature_shape=None,
             class_labels=None, dtype: torch.dtype | None = None, max_batch: int | None = None,
             latent: bool = False, data_range=(-1.0, 1.0)) -> EDMNetDenoiser:
    """An NVlabs EDM / EDM2 network (EDMPrecond, VPPrecond, VEPrecond, EDM2's Precond) as a denoiser.

    net: called as ``net(x [B, C, H, W], sigma [B], class_labels [B, label_dim])`` (the labels only
        for a class-conditional net, ``net.label_dim > 0``) and returning D(x; sigma).
    sigma_min, sigma_max: the range; default the net's own (VP/VE Precond) or EDM's 0.002 .. 80.
    feature_shape: default (img_channels, img_resolution, img_resolution).
    class_labels: default labels, one for all or [B]; indices or one-hot rows.
    dtype, max_batch, latent, data_range: as for :func:`from_diffusers` / :func:`from_score`.
    For an EDM2 latent model (img512) pass ``latent=True`` (``load_denoiser`` does so itself).

    Example:
        >>> import torch, fastgauss
        >>> from fastgauss.edm import EDMDenoiser
        >>> from fastgauss.edm.unet import SmallUNet
        >>> den = fastgauss.from_edm(EDMDenoiser(SmallUNet(channels=1, width=8)), feature_shape=(1, 8, 8))
        >>> den(torch.randn(2, 1, 8, 8), torch.tensor([0.1, 2.0])).shape
        torch.Size([2, 1, 8, 8])
    """
    return EDMNetDenoiser(net, sigma_min=sigma_min, sigma_max=sigma_max, feature_shape=feature_shape,
                          class_labels=class_labels, dtype=dtype, max_batch=max_batch, latent=latent,
                          data_range=data_range)
