"""Per-noise-level diagnostics of a denoiser: its linearity, and its distance to another denoiser."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._core.arrays import flatten_batch
from .._core.sigma import level_list
from .protocol import apply_batched, data_rows


@dataclass
class SigmaTable:
    """One value per noise level: sigmas [S], value [S] (mean over samples), spread [S] (std)."""

    name: str
    sigmas: torch.Tensor
    value: torch.Tensor
    spread: torch.Tensor

    def as_dict(self) -> dict:
        return {"sigma": self.sigmas.tolist(), self.name: self.value.tolist(), "spread": self.spread.tolist()}

    def __str__(self) -> str:
        lines = [f"{'sigma':>10} {self.name:>14} {'spread':>10}"]
        lines += [f"{s:>10.4g} {v:>14.6f} {e:>10.2e}" for s, v, e in zip(self.sigmas.tolist(), self.value.tolist(),
                                                                       self.spread.tolist())]
        return "\n".join(lines)




def linearity_score(denoiser, data, sigmas, alpha: float = 2**-0.5, n: int = 100, metric: str = "cosine",
                    generator: torch.Generator | None = None, batch_size: int = 256) -> SigmaTable:
    """How linear a denoiser is at each noise level (the paper's definition).

    Pairs y_1, y_2 of distinct training images, x_j = y_j + sigma eps_j with the noise drawn
    once and reused at every sigma, beta = sqrt(1 - alpha^2):
      "cosine":      LS = mean |cos(D(alpha x_1 + beta x_2), alpha D(x_1) + beta D(x_2))|
      "relative_l2": mean |D(alpha x_1 + beta x_2) - (alpha D(x_1) + beta D(x_2))| / |D(alpha x_1 + beta x_2)|
    n: the number of pairs (the name ``denoiser_rmse`` gives its count of inputs too).
    data: [N, *feature_shape] with N >= 2 n; sigmas: [S] > 0. Returns a SigmaTable
    (sigmas, score = the mean over pairs, spread = their standard deviation).

    Example (the Gaussian denoiser is linear up to its offset mu, which is near 0 here):
        >>> import torch, fastgauss
        >>> data = torch.randn(400, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
        >>> table = fastgauss.linearity_score(g, data, [0.1, 1.0], n=50)
        >>> table.sigmas.tolist(), bool((table.value > 0.99).all())
        ([0.1, 1.0], True)
    """
    data = data_rows(data, "data")
    grid = level_list(sigmas)
    if not (0 < alpha < 1):
        raise ValueError(f"alpha: expected a value in (0, 1), got {alpha!r}")
    if metric not in ("cosine", "relative_l2"):
        raise ValueError(f"metric: expected 'cosine' or 'relative_l2', got {metric!r}")
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1 and 2 * n <= data.shape[0]):
        raise ValueError(f"n: {n!r} pairs need {2 * n if isinstance(n, int) else 'n'} distinct samples, "
                         f"data has {data.shape[0]}")
    beta = math.sqrt(1 - alpha**2)
    pick = torch.randperm(data.shape[0], generator=generator)[: 2 * n].to(data.device)
    y1, y2 = data[pick[:n]], data[pick[n:]]
    eps = torch.randn((2, *y1.shape), generator=generator, dtype=data.dtype).to(data.device)
    values, spreads = [], []
    for sigma in grid.tolist():
        x1, x2 = y1 + sigma * eps[0], y2 + sigma * eps[1]
        out = apply_batched(denoiser, torch.cat([x1, x2, alpha * x1 + beta * x2]), sigma, batch_size)
        d1, d2, d_mix = (flatten_batch(t, "D").double() for t in out.split(n))
        combo = alpha * d1 + beta * d2
        if metric == "cosine":
            per_pair = torch.nn.functional.cosine_similarity(d_mix, combo, dim=1, eps=1e-30).abs()
        else:
            per_pair = (d_mix - combo).norm(dim=1) / d_mix.norm(dim=1).clamp_min(1e-300)
        values.append(per_pair.mean())
        spreads.append(per_pair.std(correction=0))
    return SigmaTable("linearity" if metric == "cosine" else "relative_l2", grid, torch.stack(values).cpu(),
                      torch.stack(spreads).cpu())


def denoiser_rmse(d1, d2, data, sigmas, n: int = 256, metric: str = "rmse",
                  generator: torch.Generator | None = None, batch_size: int = 256) -> SigmaTable:
    """Distance between two denoisers at each noise level, on the same noisy inputs.

    x = y + sigma eps for n training images y (noise drawn once, reused at every sigma);
      "rmse": mean over x of sqrt(|D_1(x) - D_2(x)|^2 / d)      (the paper's score difference)
      "nmse": mean over x of |D_1(x) - D_2(x)| / |D_1(x)|
    Each denoiser is called once per batch. Returns a SigmaTable; with d2 a dict of named
    denoisers, a dict of SigmaTables, d1 still called once (one network, several references).

    Example (the memorizing and the Gaussian denoiser of one training set, at two noise levels):
        >>> import torch, fastgauss
        >>> data = torch.randn(400, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
        >>> tables = fastgauss.denoiser_rmse(fastgauss.EmpiricalDenoiser(data), {"gaussian": g, "itself": g},
        ...                                  data, [0.5, 2.0], n=64)
        >>> tuple(tables["gaussian"].value.shape), bool((tables["gaussian"].value > 0).all())
        ((2,), True)
    """
    data = data_rows(data, "data")
    grid = level_list(sigmas)
    if metric not in ("rmse", "nmse"):
        raise ValueError(f"metric: expected 'rmse' or 'nmse', got {metric!r}")
    if not (isinstance(n, int) and 1 <= n <= data.shape[0]):
        raise ValueError(f"n: expected from 1 to the {data.shape[0]} samples of data, got {n!r}")
    y = data[torch.randperm(data.shape[0], generator=generator)[:n].to(data.device)]
    eps = torch.randn(y.shape, generator=generator, dtype=data.dtype).to(data.device)
    d = math.prod(y.shape[1:])
    others = d2 if isinstance(d2, dict) else {"": d2}
    values = {name: [] for name in others}
    spreads = {name: [] for name in others}
    for sigma in grid.tolist():
        x = y + sigma * eps
        a = flatten_batch(apply_batched(d1, x, sigma, batch_size), "D").double()
        for name, other in others.items():
            gap = (a - flatten_batch(apply_batched(other, x, sigma, batch_size), "D").double()).norm(dim=1)
            per_x = gap / math.sqrt(d) if metric == "rmse" else gap / a.norm(dim=1).clamp_min(1e-300)
            values[name].append(per_x.mean())
            spreads[name].append(per_x.std(correction=0))
    tables = {name: SigmaTable(metric, grid, torch.stack(values[name]).cpu(), torch.stack(spreads[name]).cpu())
              for name in others}
    return tables if isinstance(d2, dict) else tables[""]
