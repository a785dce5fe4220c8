"""Linear distillation: the best affine fit W x + b of any denoiser at each noise level."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .._core.arrays import flatten_batch
from .._core.device import require_device
from .._core.sigma import check_levels, level_list, per_sample
from ..ops.gaussian.module import GaussianDenoiser
from .protocol import apply_batched, data_rows
from ..ops.moments.op import Moments


@dataclass
class DistillReport:
    """Per noise level: how far W_sigma is from the Gaussian denoiser's U diag(w) U^T (relative
    Frobenius), the fit's residual (fraction of the variance of D(x) the affine map leaves
    unexplained), and |cos| between the leading singular vectors of W_sigma and of the Gaussian's."""

    sigmas: torch.Tensor
    gaussian_distance: torch.Tensor
    residual: torch.Tensor
    leading_vector_correlation: torch.Tensor

    def __str__(self) -> str:
        lines = [f"{'sigma':>10} {'|W - W_G|/|W_G|':>16} {'residual':>10} {'|cos u1|':>9}"]
        for row in zip(*(t.tolist() for t in (self.sigmas, self.gaussian_distance, self.residual,
                                               self.leading_vector_correlation))):
            lines.append(f"{row[0]:>10.4g} {row[1]:>16.3e} {row[2]:>10.3e} {row[3]:>9.4f}")
        return "\n".join(lines)


class LinearDistillation(nn.Module):
    """Affine denoisers D(x; sigma) = W_sigma x + b_sigma on a grid of levels, by the protocol.

    A sigma between grid levels uses the nearest level in log(sigma). weight: [S, d, d],
    bias: [S, d], sigmas: [S]; ``report`` holds the DistillReport.
    """

    def __init__(self, sigmas, weight, bias, feature_shape, report: DistillReport | None = None):
        super().__init__()
        self.register_buffer("sigmas", sigmas)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)
        self.feature_shape = tuple(feature_shape)
        self.report = report

    def _grid_hint(self) -> str:
        return f" (a linear distillation is defined on its grid: {', '.join(f'{v:g}' for v in self.sigmas.tolist())})"

    def level_index(self, sigma: torch.Tensor) -> torch.Tensor:
        """Index of the grid level nearest each sigma [B] in log(sigma); sigma must be finite and > 0."""
        check_levels(sigma, positive=True, hint=self._grid_hint())
        return self._nearest(sigma)

    def _nearest(self, sigma: torch.Tensor) -> torch.Tensor:
        """level_index for levels already checked."""
        return (torch.log(sigma.double()[:, None]) - torch.log(self.sigmas.double())[None, :]).abs().argmin(1)

    def forward(self, x, sigma):
        flat = flatten_batch(x, "x")
        s = per_sample(sigma, flat.shape[0], device=flat.device, dtype=torch.float64, positive=True,
                       hint=self._grid_hint())
        levels = self._nearest(s)  # per_sample checked s as level_index would
        out = torch.empty_like(flat)
        for level in levels.unique().tolist():
            rows = levels == level
            out[rows] = (flat[rows].to(self.weight.dtype) @ self.weight[level].T + self.bias[level]).to(out.dtype)
        return out.reshape(x.shape)


def _leading_left_vector(matrix: torch.Tensor, iters: int = 200) -> torch.Tensor:
    """Top left singular vector by power iteration on M M^T (no d x d decomposition)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    u = torch.randn(matrix.shape[0], generator=g, dtype=matrix.dtype).to(matrix.device)
    for _ in range(iters):
        u = matrix @ (matrix.T @ u)
        u = u / u.norm().clamp_min(1e-300)
    return u


def _gaussian_operator(gaussian: GaussianDenoiser, sigma: float) -> torch.Tensor:
    """The Gaussian denoiser's Jacobian U diag(w - a) U^T + a I as a dense [d, d] float64 matrix."""
    u = gaussian.eigvecs.double()
    lam, rest = gaussian.eigvals.double(), float(gaussian.lam_rest)
    base = rest / (rest + sigma**2) if rest + sigma**2 > 0 else 0.0
    w = lam / (lam + sigma**2) - base
    return (u * w) @ u.T + base * torch.eye(u.shape[0], dtype=torch.float64, device=u.device)


def _noisy_batches(data: torch.Tensor, sigma: float, draws: int, batch_size: int, generator):
    for _ in range(draws):
        for y in data.split(batch_size):
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
            yield y + sigma * noise


def _closed_form(denoiser, data, sigma, ridge, draws, batch_size, generator):
    pairs, outputs = Moments(), Moments()
    for x in _noisy_batches(data, sigma, draws, batch_size, generator):
        z = apply_batched(denoiser, x, sigma, batch_size)
        pairs.update(x, z)
        outputs.update(z)
    c_xx, c_zx = pairs.covariance(), pairs.cross_covariance()
    d = c_xx.shape[0]
    lam = ridge * float(torch.trace(c_xx)) / d
    weight = torch.linalg.solve(c_xx + lam * torch.eye(d, dtype=c_xx.dtype, device=c_xx.device), c_zx.T).T
    bias = pairs.cross_mean - weight @ pairs.mean
    c_zz = outputs.covariance()
    explained = 2 * torch.trace(weight @ c_zx.T) - torch.trace(weight @ c_xx @ weight.T)
    residual = (torch.trace(c_zz) - explained) / torch.trace(c_zz).clamp_min(1e-300)
    return weight, bias, residual


def _adam(denoiser, data, sigma, epochs, lr, batch_size, generator):
    """The paper's procedure: zero-initialised W and b, Adam on the denoising fit, fixed epochs."""
    d = flatten_batch(data[:1], "data").shape[1]
    weight = torch.zeros(d, d, dtype=torch.float64, device=data.device, requires_grad=True)
    bias = torch.zeros(d, dtype=torch.float64, device=data.device, requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=lr)
    for _ in range(epochs):
        for x in _noisy_batches(data, sigma, 1, batch_size, generator):
            z = flatten_batch(apply_batched(denoiser, x, sigma, batch_size), "D").double()
            xf = flatten_batch(x, "x").double()
            loss = ((xf @ weight.T + bias - z) ** 2).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return weight.detach(), bias.detach()


def distill_linear(denoiser, data, sigmas, *, method: str = "closed", ridge: float = 1e-6, draws: int = 1,
                   gaussian: GaussianDenoiser | None = None, epochs: int = 20, lr: float = 1e-2,
                   batch_size: int = 256, generator: torch.Generator | None = None) -> LinearDistillation:
    """Best affine fit (W_sigma, b_sigma) of a denoiser at each sigma, over x = y + sigma eps.

    method="closed" (default): W = C_zx (C_xx + ridge tr(C_xx)/d I)^-1, b = E z - W E x from the
      moments of (x, z = D(x)) streamed through fastgauss.Moments (``draws`` noise draws per
      image; the ridge matters only when N draws < d).
    method="adam": the paper's procedure (zero init, Adam at ``lr``, ``epochs`` epochs), for comparison.
    data: [N, *feature_shape]; sigmas: [S] > 0. The report compares W_sigma with the Gaussian
    denoiser of the data's moments (or ``gaussian``). Returns a LinearDistillation (a denoiser).

    Example (the best affine fit of the Gaussian denoiser is the Gaussian denoiser itself):
        >>> import torch, fastgauss
        >>> data = torch.randn(400, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(data))
        >>> fit = fastgauss.distill_linear(g, data, [0.5, 2.0])
        >>> bool((fit.report.gaussian_distance < 1e-4).all()), tuple(fit(data[:3], 0.5).shape)
        (True, (3, 1, 4, 4))
    """
    data = data_rows(data, "data")
    grid = level_list(sigmas)
    if method not in ("closed", "adam"):
        raise ValueError(f"method: expected 'closed' or 'adam', got {method!r}")
    if gaussian is None:
        gaussian = GaussianDenoiser.from_moments(Moments().update(data), dtype=torch.float64)
    require_device(gaussian.mean, "gaussian", data.device, "data")  # never moved
    weights, biases, distances, residuals, correlations = [], [], [], [], []
    for sigma in grid.tolist():
        if method == "closed":
            w, b, residual = _closed_form(denoiser, data, sigma, ridge, draws, batch_size, generator)
        else:
            w, b = _adam(denoiser, data, sigma, epochs, lr, batch_size, generator)
            residual = torch.tensor(float("nan"), dtype=torch.float64, device=w.device)
        reference = _gaussian_operator(gaussian, sigma).to(w.device)
        distances.append((w - reference).norm() / reference.norm())
        residuals.append(residual)
        correlations.append((_leading_left_vector(w) @ _leading_left_vector(reference)).abs())
        weights.append(w)
        biases.append(b)
    report = DistillReport(grid, torch.stack(distances).cpu(), torch.stack(residuals).cpu(),
                           torch.stack(correlations).cpu())
    return LinearDistillation(grid.to(data.device), torch.stack(weights), torch.stack(biases),
                              data.shape[1:], report)
