"""Plain float64 references: the formulas of DESIGN.md section 1, a few lines each.

No chunking, no cleverness, and no code shared with the product paths: tests and
benchmarks/gpu_check.py compare every kernel and every PyTorch path against these.
Inputs are converted to float64 on the CPU.
"""

from __future__ import annotations

import torch


def _f64(x) -> torch.Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def mean(x) -> torch.Tensor:
    """x: [N, d] -> mu: [d]."""
    x = _f64(x)
    return x.sum(0) / x.shape[0]


def covariance(x, ddof: int = 0) -> torch.Tensor:
    """x: [N, d] -> Sigma = sum (x_i - mu)(x_i - mu)^T / (N - ddof): [d, d]."""
    x = _f64(x)
    centred = x - mean(x)
    return centred.T @ centred / (x.shape[0] - ddof)


def cross_covariance(z, x, ddof: int = 0) -> torch.Tensor:
    """Pairs z: [N, dz], x: [N, d] -> C_zx = sum (z_i - mu_z)(x_i - mu_x)^T / (N - ddof): [dz, d]."""
    z, x = _f64(z), _f64(x)
    return (z - mean(z)).T @ (x - mean(x)) / (x.shape[0] - ddof)


def centered_gram(a, a_shift, b=None, b_shift=None) -> torch.Tensor:
    """(a - a_shift)^T (b - b_shift) for a: [n, da], b: [n, db] (b = a when None)."""
    a, a_shift = _f64(a), _f64(a_shift)
    b, b_shift = (a, a_shift) if b is None else (_f64(b), _f64(b_shift))
    return (a - a_shift).T @ (b - b_shift)
