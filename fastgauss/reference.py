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


def gaussian_of_data(data, ddof: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Gaussian of N rows with the exact-rank rule: (mean [d], eigvals [d] descending, eigvecs [d, d]).

    data: [N, d]. The covariance of N rows centred on their mean has rank at most N - 1, so the
    eigenvalues past min(N - 1, d) are exactly 0, and so are those within float64 eigh's
    rounding (d * eps * lambda_max). Without this rule the null space would pass through at sigma = 0.
    """
    x = _f64(data)
    n, d = x.shape
    lam, u = torch.linalg.eigh(covariance(x, ddof))
    lam, u = lam.flip(0), u.flip(1)
    keep = (torch.arange(d) < min(n - 1, d)) & (lam > d * torch.finfo(torch.float64).eps * lam.max())
    return mean(x), torch.where(keep, lam, torch.zeros(())), u


def gaussian_denoiser_of_data(x, sigma, data, ddof: int = 0) -> torch.Tensor:
    """D(x; s) of the exact-rank Gaussian of ``data`` [N, d] (``gaussian_of_data``): x [B, d], sigma [B]."""
    return gaussian_denoiser(x, sigma, *gaussian_of_data(data, ddof))


def gaussian_denoiser(x, sigma, mean, eigvals, eigvecs, lam_rest: float = 0.0) -> torch.Tensor:
    """D(x; s) = mu + U diag(w) U^T (x - mu) + a (I - U U^T)(x - mu) for each row.

    x: [B, d]; sigma: [B]; mean: [d]; eigvals: [r]; eigvecs: [d, r];
    w_k = lam_k / (lam_k + s^2), a = lam_rest / (lam_rest + s^2), with 0/0 taken as 0.
    """
    x, sigma, mean, lam, u = _f64(x), _f64(sigma), _f64(mean), _f64(eigvals), _f64(eigvecs)
    s2 = sigma[:, None] ** 2
    w = torch.where(lam + s2 > 0, lam / (lam + s2), torch.zeros(()))
    a = torch.where(lam_rest + s2 > 0, lam_rest / (lam_rest + s2), torch.zeros(()))
    centred = x - mean
    coeffs = centred @ u
    return mean + (coeffs * w) @ u.T + a * (centred - coeffs @ u.T)


def gaussian_jacobian(sigma: float, eigvals, eigvecs, lam_rest: float = 0.0) -> torch.Tensor:
    """dD/dx = U diag(w) U^T + a (I - U U^T): [d, d]."""
    lam, u = _f64(eigvals), _f64(eigvecs)
    w = lam / (lam + sigma**2)
    a = lam_rest / (lam_rest + sigma**2) if lam_rest + sigma**2 > 0 else 0.0
    return u @ torch.diag(w) @ u.T + a * (torch.eye(u.shape[0], dtype=torch.float64) - u @ u.T)


def edm_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """[n + 1]: (smax^(1/rho) + i/(n-1) (smin^(1/rho) - smax^(1/rho)))^rho for i < n, then 0."""
    levels = [(sigma_max ** (1 / rho) + (i / (n - 1) if n > 1 else 0.0) * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
              for i in range(n)]
    return torch.tensor(levels + [0.0], dtype=torch.float64)


def gaussian_flow_endpoint(x_start, sigma_start: float, mean, eigvals, eigvecs) -> torch.Tensor:
    """Probability-flow ODE from x_start at sigma_start down to sigma = 0, for N(mean, U diag(lam) U^T):
    mean + sum_k sqrt(lam_k / (lam_k + sigma_start^2)) c_k u_k, c = U^T (x_start - mean)."""
    x, mean, lam, u = _f64(x_start), _f64(mean), _f64(eigvals), _f64(eigvecs)
    c = (x - mean) @ u
    return mean + (c * torch.sqrt(lam / (lam + sigma_start**2))) @ u.T


def empirical_denoiser(x, sigma, data) -> torch.Tensor:
    """softmax(-cdist(x, Y)^2 / (2 sigma^2)) @ Y, materialized: x [B, d], sigma [B], data [N, d]."""
    x, sigma, data = _f64(x), _f64(sigma), _f64(data)
    dist2 = torch.cdist(x, data, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    weights = torch.softmax(-dist2 / (2 * sigma[:, None] ** 2), dim=1)
    return weights @ data


def empirical_jacobian(x, sigma: float, data) -> torch.Tensor:
    """dD/dx at one query x [d]: (sum_i w_i y_i y_i^T - D D^T) / sigma^2, [d, d]."""
    x, data = _f64(x), _f64(data)
    w = torch.softmax(-((data - x) ** 2).sum(1) / (2 * sigma**2), dim=0)
    d = w @ data
    return ((data * w[:, None]).T @ data - torch.outer(d, d)) / sigma**2


def nearest_neighbors(x, data, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute force in float64: (distances [B, k], indices [B, k]), ties to the lower index."""
    x, data = _f64(x), _f64(data)
    dist = torch.cdist(x, data, compute_mode="donot_use_mm_for_euclid_dist")
    order = torch.stack([torch.tensor(sorted(range(data.shape[0]), key=lambda i: (row[i].item(), i))[:k])
                         for row in dist])
    return dist.gather(1, order), order


def gaussian_flow(x_start, sigma_start: float, sigma: float, mean, eigvals, eigvecs, lam_rest: float = 0.0) -> torch.Tensor:
    """Probability-flow ODE of N(mean, U diag(lam) U^T + lam_rest (I - U U^T)) from sigma_start to sigma:
    mean + sum_k sqrt((lam_k + s^2) / (lam_k + s_T^2)) c_k u_k + sqrt((lam_rest + s^2) / (lam_rest + s_T^2)) r,
    c = U^T (x_start - mean), r = the part of x_start - mean outside span(U). x_start: [B, d]."""
    x, mean, lam, u = _f64(x_start), _f64(mean), _f64(eigvals), _f64(eigvecs)
    c = (x - mean) @ u
    rest = (x - mean) - c @ u.T
    a = ((lam_rest + sigma**2) / (lam_rest + sigma_start**2)) ** 0.5
    return mean + (c * torch.sqrt((lam + sigma**2) / (lam + sigma_start**2))) @ u.T + a * rest
