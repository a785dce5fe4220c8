"""A small UNet whose width is a parameter, for sweeping model capacity on small images."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _groups(channels: int) -> int:
    return math.gcd(channels, 8) or 1


class NoiseEmbedding(nn.Module):
    """c_noise [B] -> [B, dim]: sinusoidal features, then an MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, c_noise: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(1e4) * torch.arange(half, device=c_noise.device, dtype=c_noise.dtype) / half)
        angles = c_noise[:, None] * freqs[None] * 100
        return self.mlp(torch.cat([angles.sin(), angles.cos()], 1))


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv, plus the noise embedding, twice, with a residual connection."""

    def __init__(self, cin: int, cout: int, emb: int):
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb, cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x))) + self.emb(emb)[:, :, None, None]
        return self.skip(x) + self.conv2(F.silu(self.norm2(h)))


class SmallUNet(nn.Module):
    """F(x_in, c_noise) for images [B, C, H, W] of any size: two resolutions, width channels.

    Inputs are padded to even H and W and the output cropped back, so 8 x 8 digits and
    25 x 25 faces both work. ``width`` sets the capacity (parameters grow as width^2).
    """

    def __init__(self, channels: int = 1, width: int = 32):
        super().__init__()
        if width < 8 or width % 8:
            raise ValueError(f"width: expected a multiple of 8, at least 8, got {width}")
        emb = 4 * width
        self.embed = NoiseEmbedding(emb)
        self.inp = nn.Conv2d(channels, width, 3, padding=1)
        self.down = ResBlock(width, width, emb)
        self.pool = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = ResBlock(2 * width, 2 * width, emb)
        self.up = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec = ResBlock(2 * width, width, emb)
        self.out = nn.Sequential(nn.GroupNorm(_groups(width), width), nn.SiLU(), nn.Conv2d(width, channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # start as the identity's residual: F = 0
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        h_in, w_in = x.shape[-2:]
        x = F.pad(x, (0, w_in % 2, 0, h_in % 2))
        emb = self.embed(c_noise)
        skip = self.down(self.inp(x), emb)
        h = self.up(self.mid(self.pool(skip), emb))
        h = self.dec(torch.cat([h, skip], 1), emb)
        return self.out(h)[..., :h_in, :w_in]
