"""EDM (Karras et al. 2022): preconditioning, the training loss and noise levels, and an EMA.

D(x; sigma) = c_skip x + c_out F(c_in x; c_noise), with sigma_data = 0.5:
    c_skip = sd^2 / (sigma^2 + sd^2),  c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2),   c_noise = ln(sigma) / 4.
Training: ln sigma ~ N(-1.2, 1.2^2); loss weight (sigma^2 + sd^2) / (sigma sd)^2 on |D(y + sigma eps) - y|^2.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from .._core.sigma import per_sample

SIGMA_DATA = 0.5


def edm_coefficients(sigma: torch.Tensor, sigma_data: float = SIGMA_DATA):
    """(c_skip, c_out, c_in, c_noise), each shaped like sigma (> 0)."""
    var = sigma**2 + sigma_data**2
    return sigma_data**2 / var, sigma * sigma_data / var.sqrt(), 1 / var.sqrt(), sigma.log() / 4


class EDMDenoiser(nn.Module):
    """A network F(x_in, c_noise) -> [B, *feature_shape] wrapped as an EDM denoiser.

    Follows the denoiser protocol: ``den(x, sigma)`` with x: [B, *feature_shape] and sigma a
    float, a 0-d tensor or [B] values (> 0).
    """

    def __init__(self, network: nn.Module, sigma_data: float = SIGMA_DATA):
        super().__init__()
        self.network = network
        self.sigma_data = sigma_data

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        s = per_sample(sigma, x.shape[0], device=x.device, dtype=x.dtype, positive=True,
                       hint=" (EDM's preconditioning takes c_noise = ln(sigma) / 4)")
        c_skip, c_out, c_in, c_noise = (c.reshape(-1, *([1] * (x.dim() - 1))) if i < 3 else c
                                        for i, c in enumerate(edm_coefficients(s, self.sigma_data)))
        return c_skip * x + c_out * self.network(c_in * x, c_noise)


def training_sigmas(batch: int, *, p_mean: float = -1.2, p_std: float = 1.2, generator=None,
                    device=None, dtype=torch.float32) -> torch.Tensor:
    """[batch] noise levels with ln sigma ~ N(p_mean, p_std^2), EDM's training distribution."""
    return torch.exp(p_mean + p_std * torch.randn(batch, generator=generator, dtype=dtype).to(device))


def edm_loss(denoiser, y: torch.Tensor, *, generator=None, sigma_data: float | None = None,
             shard: tuple[int, int] | None = None) -> torch.Tensor:
    """EDM's weighted denoising loss on a clean batch y: [B, *feature_shape] (a scalar).

    The mean over the batch and the features of (sigma^2 + sd^2) / (sigma sd)^2 |D(y + sigma eps; sigma) - y|^2.
    shard=(rank, world): the noise levels and noise are drawn for the whole batch, then only
    rank's contiguous B / world rows are used, so averaging the world's gradients (DDP)
    equals one process on the whole batch. sigma_data defaults to ``denoiser.sigma_data``.
    """
    sigma = training_sigmas(y.shape[0], generator=generator, device=y.device, dtype=y.dtype)
    noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
    if shard is not None:
        rank, world = shard
        if y.shape[0] % world:
            raise ValueError(f"batch size {y.shape[0]} is not divisible by the {world} processes")
        rows = slice(rank * y.shape[0] // world, (rank + 1) * y.shape[0] // world)
        y, sigma, noise = y[rows], sigma[rows], noise[rows]
    sd = denoiser.sigma_data if sigma_data is None else sigma_data
    weight = ((sigma**2 + sd**2) / (sigma * sd) ** 2).reshape(-1, *([1] * (y.dim() - 1)))
    denoised = denoiser(y + sigma.reshape(weight.shape) * noise, sigma)
    return (weight * (denoised - y) ** 2).mean()


class EMA(nn.Module):
    """Exponential moving average of a model's weights: ema <- decay ema + (1 - decay) model.

    ``ema.model`` is a frozen copy of the model (a denoiser by the same protocol).
    """

    def __init__(self, model: nn.Module, decay: float = 0.999):
        super().__init__()
        if not (0 <= decay < 1):
            raise ValueError(f"decay: expected a value in [0, 1), got {decay!r}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for ema_p, p in zip(self.model.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), 1 - self.decay)
        for ema_b, b in zip(self.model.buffers(), model.buffers()):
            ema_b.copy_(b)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)
