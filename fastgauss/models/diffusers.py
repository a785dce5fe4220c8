"""``from_diffusers``: a diffusers UNet and its scheduler as a denoiser D(x; sigma) (EDM coordinates).

Conventions (DESIGN.md section 1, "Other parameterizations"):

* VP schedulers (anything exposing ``alphas_cumprod``: DDPM, DDIM, PNDM, Euler, DPM-Solver, ...):
  sigma_t = sqrt((1 - abar_t) / abar_t); the network is called on x / sqrt(1 + sigma^2) at the
  fractional timestep t(sigma) found by linear interpolation of log sigma_t between integer t
  (EulerDiscreteScheduler's ``_sigma_to_t``), passed as a float tensor. Then
  epsilon: D = x - sigma out;  v_prediction: D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) out;
  sample: D = out. ``timestep_type="continuous"`` (Euler, v_prediction) passes ln(sigma) / 4 instead.
* EDM-style schedulers (EDMEulerScheduler, EDMDPMSolverMultistepScheduler): D = c_skip x +
  c_out F(c_in x; ln(sigma) / 4) with the scheduler's sigma_data; c_out > 0 for epsilon, < 0 for
  v_prediction.
* ScoreSdeVeScheduler: the network takes (x, sigma) and returns the score: D = x + sigma^2 out.

The scheduler's clip_sample and thresholding are never applied: an adapter never clips.
"""

from __future__ import annotations

import contextlib
import inspect

import torch

from ._base import Adapter, broadcast

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
EDM_PREDICTION_TYPES = ("epsilon", "v_prediction")


def _config(scheduler) -> dict:
    config = getattr(scheduler, "config", None)
    if config is None:
        raise TypeError(f"scheduler: expected a diffusers scheduler (with .config), got {type(scheduler).__name__}")
    return dict(config)


def scheduler_kind(scheduler) -> str:
    """"edm", "score_ve" or "vp" for a diffusers scheduler; TypeError for one without a noise schedule."""
    config = _config(scheduler)
    name = type(scheduler).__name__
    if "sigma_data" in config and hasattr(scheduler, "precondition_noise"):
        return "edm"
    if name.startswith("ScoreSdeVe"):
        return "score_ve"
    if getattr(scheduler, "alphas_cumprod", None) is not None:
        return "vp"
    raise TypeError(f"scheduler: {name} exposes neither alphas_cumprod (a VP schedule) nor EDM preconditioning "
                    f"(sigma_data); fastgauss cannot tell which noise levels its model was trained on")


def _feature_shape(unet):
    config = getattr(unet, "config", None)
    if config is None:
        return None
    channels, size = config.get("in_channels"), config.get("sample_size")
    if channels is None or size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (int(channels), int(h), int(w))


def _label_dim(unet) -> int:
    if getattr(unet, "class_embedding", None) is None:
        return 0
    config = getattr(unet, "config", {}) or {}
    if config.get("class_embed_type") is None and config.get("num_class_embeds"):
        return int(config["num_class_embeds"])
    return -1  # "timestep" / "identity" embeddings: labels are passed through as given


class DiffusersDenoiser(Adapter):
    """A diffusers UNet (UNet2DModel or any module called as ``unet(sample, timestep,
    class_labels=...)`` returning ``.sample`` or a tensor) with its scheduler, as a denoiser.

    x: [B, C, H, W] in EDM coordinates (x = y + sigma eps, y in [-1, 1]); sigma: float, 0-d or [B];
    returns D(x; sigma) [B, C, H, W]. Build it with :func:`from_diffusers`.
    """

    def __init__(self, unet, scheduler, *, dtype=None, max_batch=None, class_labels=None, latent=False):
        if type(unet).__name__ == "UNet2DConditionModel" or "encoder_hidden_states" in _required_params(unet):
            raise ValueError(f"unet: {type(unet).__name__} needs text embeddings (encoder_hidden_states); "
                             f"from_diffusers adapts unconditional and class-conditional UNet2DModel networks")
        config = _config(scheduler)
        self.kind = scheduler_kind(scheduler)
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.timestep_type = config.get("timestep_type", "discrete") or "discrete"
        allowed = {"edm": EDM_PREDICTION_TYPES, "vp": PREDICTION_TYPES, "score_ve": None}[self.kind]
        if allowed is not None and self.prediction_type not in allowed:
            raise ValueError(f"scheduler: unknown prediction_type {self.prediction_type!r} for "
                             f"{type(scheduler).__name__} (expected {', '.join(allowed)})")
        if self.timestep_type not in ("discrete", "continuous"):
            raise ValueError(f"scheduler: unknown timestep_type {self.timestep_type!r} (expected discrete or continuous)")
        log_sigmas = None
        if self.kind == "edm":
            self.sigma_data = float(config["sigma_data"])
            lo, hi = float(config["sigma_min"]), float(config["sigma_max"])
        elif self.kind == "score_ve":
            lo, hi = float(config["sigma_min"]), float(config["sigma_max"])
        else:
            abar = torch.as_tensor(scheduler.alphas_cumprod).detach().to("cpu", torch.float64)
            sigmas = ((1 - abar) / abar).sqrt()
            if not (torch.isfinite(sigmas).all() and (sigmas > 0).all() and (sigmas[1:] >= sigmas[:-1]).all()):
                raise ValueError("scheduler: alphas_cumprod must decrease from below 1 to above 0")
            log_sigmas = sigmas.log()
            lo, hi = float(sigmas[0]), float(sigmas[-1])
            if self.timestep_type == "continuous":
                lo = float(config.get("sigma_min") or lo)
                hi = float(config.get("sigma_max") or hi)
        super().__init__(unet, sigma_min=lo, sigma_max=hi, feature_shape=_feature_shape(unet),
                         label_dim=_label_dim(unet), class_labels=class_labels, dtype=dtype, max_batch=max_batch,
                         latent=latent)
        self.scheduler_class = type(scheduler).__name__
        self.register_buffer("log_sigmas", log_sigmas, persistent=False)

    # -------------------------------------------------------------- timesteps
    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """The fractional timestep [B] (float64) of noise levels sigma [B] for a discrete VP schedule:
        linear interpolation of log sigma_t between integer t, clipped to [0, T - 1]
        (EulerDiscreteScheduler's ``_sigma_to_t``)."""
        log_sigmas = self.log_sigmas.to(device=sigma.device)
        log_sigma = sigma.to(torch.float64).clamp_min(1e-10).log()
        dists = log_sigma[None, :] - log_sigmas[:, None]  # [T, B]
        low = (dists >= 0).cumsum(0).argmax(0).clamp(max=log_sigmas.shape[0] - 2)
        lo_val, hi_val = log_sigmas[low], log_sigmas[low + 1]
        w = ((lo_val - log_sigma) / (lo_val - hi_val)).clamp(0, 1)
        return (1 - w) * low + w * (low + 1)

    # ----------------------------------------------------------------- D(x)
    def _call(self, x_in: torch.Tensor, t: torch.Tensor, labels) -> torch.Tensor:
        kwargs = {} if labels is None else {"class_labels": labels}
        x_in = self._net_input(x_in)
        # a float tensor (UNet2DModel truncates Python floats); float64 only for a float64 network
        t = t.to(torch.float64 if x_in.dtype == torch.float64 else torch.float32)
        out = self.network(x_in, t, **kwargs)
        out = getattr(out, "sample", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
        return out

    def _denoise(self, x, sigma, labels):
        s = broadcast(sigma, x)
        if self.kind == "edm":
            sd = self.sigma_data
            var = s**2 + sd**2
            c_skip, c_in = sd**2 / var, var.rsqrt()
            c_out = s * sd / var.sqrt() * (1 if self.prediction_type == "epsilon" else -1)
            out = self._call(c_in * x, sigma.log() / 4, labels)
            return c_skip * x + c_out * out.to(x.dtype)
        if self.kind == "score_ve":
            return x + s**2 * self._call(x, sigma, labels).to(x.dtype)
        scale = (1 + s**2).rsqrt()
        t = sigma.log() / 4 if self.timestep_type == "continuous" else self.timestep(sigma)
        out = self._call(x * scale, t, labels).to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            return x * scale**2 - s * scale * out
        return out

    def _forward_mode_context(self):
        return math_attention(self.network)


class _MathAttention:
    """A diffusers attention processor run on the math SDPA path with a contiguous output
    (torch's forward-mode group_norm rule fails on the strided output of the stock processors)."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        out = self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return out.contiguous() if isinstance(out, torch.Tensor) else out


@contextlib.contextmanager
def math_attention(network):
    """Within the block, every diffusers Attention module of ``network`` runs the math path:
    processors without a forward-mode rule (xformers, NPU, fused kernels) are replaced by
    AttnProcessor2_0, which the caller runs under ``sdpa_kernel(SDPBackend.MATH)``."""
    modules = [m for m in network.modules() if hasattr(m, "set_processor") and hasattr(m, "processor")] \
        if isinstance(network, torch.nn.Module) else []
    saved = [m.processor for m in modules]
    try:
        if modules:
            from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

            for m, p in zip(modules, saved):
                math_ok = type(p) in (AttnProcessor, AttnProcessor2_0)
                m.processor = _MathAttention(p if math_ok else AttnProcessor2_0())
        yield
    finally:
        for m, p in zip(modules, saved):
            m.processor = p


def _required_params(fn) -> set:
    try:
        params = inspect.signature(getattr(fn, "forward", fn)).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in params if p.default is inspect.Parameter.empty
            and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def from_diffusers(unet, scheduler, *, dtype: torch.dtype | None = None, max_batch: int | None = None,
                   class_labels=None, latent: bool = False) -> DiffusersDenoiser:
    """A diffusers ``UNet2DModel`` and its scheduler as a denoiser D(x; sigma) in EDM coordinates.

    unet: the network, called as ``unet(sample [B, C, H, W], timestep [B] float, class_labels=...)``.
    scheduler: any diffusers scheduler with ``alphas_cumprod`` (DDPM, DDIM, PNDM, Euler, DPM-Solver...),
        an EDM-style one (EDMEulerScheduler, EDMDPMSolverMultistepScheduler) or ScoreSdeVeScheduler;
        only its config is read (prediction_type epsilon / v_prediction / sample, timestep_type).
    dtype: torch.float16 / torch.bfloat16 runs a float32 network under autocast; a network already
        in half precision gets its inputs cast. Outputs are float32 either way.
    max_batch: the most samples per network call (bigger batches are split).
    class_labels: default labels for a class-conditional UNet (num_class_embeds); one for all or [B].
    latent: the model works in a VAE's latent space (``check_data`` then refuses pixel data).

    Returns a :class:`DiffusersDenoiser`: ``den(x [B, C, H, W], sigma) -> [B, C, H, W]`` with
    ``sigma_min`` / ``sigma_max`` (sigma_t of the first and last training timestep) and
    ``feature_shape`` (in_channels, sample_size, sample_size).

    Example:
        >>> import torch, fastgauss
        >>> from diffusers import DDPMScheduler, UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 16),
        ...                    norm_num_groups=8, down_block_types=("DownBlock2D",) * 2,
        ...                    up_block_types=("UpBlock2D",) * 2)
        >>> den = fastgauss.from_diffusers(unet, DDPMScheduler())
        >>> den(torch.randn(2, 1, 8, 8), 0.5).shape
        torch.Size([2, 1, 8, 8])
        >>> round(den.sigma_min, 4), round(den.sigma_max, 1)
        (0.01, 157.4)
    """
    return DiffusersDenoiser(unet, scheduler, dtype=dtype, max_batch=max_batch, class_labels=class_labels,
                             latent=latent)


def vp_sigmas(scheduler) -> torch.Tensor:
    """sigma_t = sqrt((1 - abar_t) / abar_t) [T] (float64) of a VP scheduler's training timesteps."""
    abar = torch.as_tensor(scheduler.alphas_cumprod).to(torch.float64)
    return ((1 - abar) / abar).sqrt()


__all__ = ["DiffusersDenoiser", "from_diffusers", "math_attention", "scheduler_kind", "vp_sigmas"]
