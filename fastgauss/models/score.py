"""``from_score``: a score-SDE style model (VE or continuous VP) as a denoiser D(x; sigma).

VE: the network takes (x, sigma) and returns the score s(x; sigma): D = x + sigma^2 s.
VP (score_sde's VPSDE, beta(t) = beta_min + t (beta_max - beta_min), t in [0, 1]):
    alpha(t) = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2), sigma_vp(t) = sqrt(1 - alpha^2),
    and in EDM coordinates sigma(t) = sigma_vp / alpha = sqrt(exp(t^2 (beta_max - beta_min) / 2 + t beta_min) - 1),
    so t(sigma) = (-beta_min + sqrt(beta_min^2 + 2 (beta_max - beta_min) ln(1 + sigma^2))) / (beta_max - beta_min).
    The network takes (x / sqrt(1 + sigma^2), t) and returns the score of the VP variable
    (output="score"), or eps with score = -eps / sigma_vp (output="eps"); in EDM coordinates the
    score is alpha times it, so D = x + sigma^2 alpha s_vp (= x - sigma eps for eps).
data_range=(0, 1): D(x; sigma) = 2 D01((x + 1) / 2; sigma / 2) - 1.
"""

from __future__ import annotations

import math

import torch

from ._base import Adapter, broadcast

KINDS = ("ve", "vp")
OUTPUTS = ("score", "eps")
VE_SIGMA_MIN, VE_SIGMA_MAX = 0.01, 50.0  # score_sde's VESDE defaults (CIFAR-10)
VP_T_MIN = 1e-5  # score_sde trains VP models on t in [1e-5, 1]


def vp_sigma(t, beta_min: float, beta_max: float):
    """EDM sigma of the VP SDE at time t (float or tensor)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return torch.expm1(0.5 * (beta_max - beta_min) * t**2 + beta_min * t).sqrt()


def vp_time(sigma: torch.Tensor, beta_min: float, beta_max: float) -> torch.Tensor:
    """The VP SDE's time t of EDM noise levels sigma (the closed-form inverse of vp_sigma)."""
    delta = beta_max - beta_min
    log1p = torch.log1p(sigma.to(torch.float64) ** 2)
    if delta == 0:
        return log1p / beta_min
    return (-beta_min + (beta_min**2 + 2 * delta * log1p).sqrt()) / delta


class ScoreDenoiser(Adapter):
    """A score network as a protocol denoiser; build it with :func:`from_score`.

    x: [B, *feature_shape]; sigma: float, 0-d or [B]; returns D(x; sigma) shaped like x.
    """

    def __init__(self, model, *, kind="ve", output="score", beta_min=0.1, beta_max=20.0, data_range=(-1.0, 1.0),
                 sigma_min=None, sigma_max=None, time_scale: float = 1.0, feature_shape=None, label_dim: int = 0,
                 class_labels=None, dtype=None, max_batch=None, latent=False):
        if kind not in KINDS:
            raise ValueError(f"kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output: expected one of {', '.join(OUTPUTS)}, got {output!r}")
        if kind == "vp":
            for name, value in (("beta_min", beta_min), ("beta_max", beta_max)):
                if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                    raise ValueError(f"{name}: expected a finite value >= 0, got {value!r}")
            if not (beta_max >= beta_min and beta_max > 0):
                raise ValueError(f"beta_max: expected beta_max >= beta_min and > 0, got {beta_min!r}, {beta_max!r}")
            lo = float(vp_sigma(VP_T_MIN, beta_min, beta_max)) if sigma_min is None else sigma_min
            hi = float(vp_sigma(1.0, beta_min, beta_max)) if sigma_max is None else sigma_max
        else:
            lo = VE_SIGMA_MIN if sigma_min is None else sigma_min
            hi = VE_SIGMA_MAX if sigma_max is None else sigma_max
        self.kind, self.output = kind, output
        self.beta_min, self.beta_max, self.time_scale = float(beta_min), float(beta_max), float(time_scale)
        super().__init__(model, sigma_min=float(lo), sigma_max=float(hi), feature_shape=feature_shape,
                         label_dim=label_dim, class_labels=class_labels, dtype=dtype, max_batch=max_batch,
                         latent=latent, data_range=data_range)

    def _call(self, x_in, t, labels):
        x_in = self._net_input(x_in)
        t = (self.time_scale * t).to(torch.float32 if x_in.dtype in (torch.float16, torch.bfloat16) else x_in.dtype)
        out = self.network(x_in, t) if labels is None else self.network(x_in, t, labels)
        return out

    def _denoise(self, x, sigma, labels):
        s = broadcast(sigma, x)
        if self.kind == "ve":
            out = self._call(x, sigma, labels).to(x.dtype)
            return x - s * out if self.output == "eps" else x + s**2 * out
        alpha = (1 + s**2).rsqrt()
        t = vp_time(sigma, self.beta_min, self.beta_max)
        out = self._call(x * alpha, t, labels).to(x.dtype)
        if self.output == "eps":
            return x - s * out
        return x + s**2 * alpha * out


def from_score(model, kind: str = "ve", output: str = "score", beta_min: float = 0.1, beta_max: float = 20.0,
               data_range=(-1, 1), *, sigma_min: float | None = None, sigma_max: float | None = None,
               time_scale: float = 1.0, feature_shape=None, label_dim: int = 0, class_labels=None,
               dtype: torch.dtype | None = None, max_batch: int | None = None,
               latent: bool = False) -> ScoreDenoiser:
    """A score-SDE model as a denoiser D(x; sigma) in EDM coordinates, data in [-1, 1].

    model: ``model(x [B, ...], c [B])`` (``model(x, c, labels)`` for a conditional one) returning the
        score, or eps with ``output="eps"``. kind="ve": c = sigma, D = x + sigma^2 score.
        kind="vp": the continuous VP SDE with beta_min, beta_max (score_sde's defaults 0.1, 20);
        c = time_scale * t(sigma) from the SDE's closed form, input x / sqrt(1 + sigma^2), and
        score = -eps / sigma_vp for output="eps" (score_sde's DDPM models: time_scale=999).
    data_range: (0, 1) for a model trained on [0, 1] data: D(x; s) = 2 D01((x + 1) / 2; s / 2) - 1.
    sigma_min, sigma_max: the model's range in its own units (default VE 0.01 .. 50; VP the
        sigma of t = 1e-5 .. 1); the adapter's range is in [-1, 1] units (doubled for (0, 1)).
    feature_shape, label_dim, class_labels, dtype, max_batch, latent: as for :func:`from_diffusers`.

    Example:
        >>> import torch, fastgauss
        >>> score = lambda x, sigma: -x / (1 + sigma[:, None] ** 2)  # N(0, I) data: D = x / (1 + sigma^2)
        >>> den = fastgauss.from_score(score, kind="ve")
        >>> x = torch.randn(3, 4)
        >>> torch.allclose(den(x, 2.0), x / 5)
        True
    """
    return ScoreDenoiser(model, kind=kind, output=output, beta_min=beta_min, beta_max=beta_max,
                         data_range=data_range, sigma_min=sigma_min, sigma_max=sigma_max, time_scale=time_scale,
                         feature_shape=feature_shape, label_dim=label_dim, class_labels=class_labels, dtype=dtype,
                         max_batch=max_batch, latent=latent)
