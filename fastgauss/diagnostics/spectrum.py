"""Summaries of a covariance spectrum: variance explained, and a picture of it."""

from __future__ import annotations

from pathlib import Path

import torch


def components_for_variance(eigvals: torch.Tensor, fractions=(0.9, 0.99, 0.999)) -> dict[float, int]:
    """Smallest k whose top-k eigenvalues hold each fraction of the total variance.

    eigvals: [d], descending and non-negative. Returns {fraction: k}; k = 0 when the
    total variance is 0.
    """
    total = eigvals.sum()
    if total <= 0:
        return {f: 0 for f in fractions}
    cumulative = eigvals.cumsum(0) / total
    return {f: int(torch.searchsorted(cumulative, torch.tensor(f, dtype=cumulative.dtype)).item()) + 1
            for f in fractions}


def nonzero_spectrum(eigvals: torch.Tensor) -> tuple[int, torch.Tensor]:
    """(rank, eigvals[:rank]): the eigenvalues a plot shows, the exact zeros left out.

    eigvals: [d] descending, with exact zeros past the covariance's rank (``Moments.eigh``
    applies the exact-rank rule), so nothing at rounding level is drawn as variance.
    """
    rank = int((eigvals > 0).sum())
    return rank, eigvals[:rank]


def plot_spectrum(path: Path, eigvals: torch.Tensor, mean: torch.Tensor, eigvecs: torch.Tensor,
                  feature_shape: tuple[int, ...], title: str, n_images: int = 7) -> Path:
    """PNG: eigenvalue spectrum, cumulative variance, and (for images) the mean and top eigenvectors.

    eigvals: [r] descending (exact zeros past the rank, as ``Moments.eigh`` gives them); mean: [d];
    eigvecs: [d, r]; feature_shape: (C, H, W) or (d,). Only the nonzero eigenvalues are drawn, and
    the titles state the rank: the rest are exactly 0, not small.
    """
    from matplotlib.figure import Figure  # the object API: the user's backend is left as it is

    is_image = len(feature_shape) == 3 and feature_shape[0] in (1, 3)
    rows = 2 if is_image else 1
    fig = Figure(figsize=(10, 3.6 + 1.6 * (rows - 1)), constrained_layout=True)
    grid = fig.add_gridspec(rows, n_images + 1, height_ratios=[3.6, 1.6][:rows])
    rank, shown = nonzero_spectrum(eigvals)
    k = torch.arange(1, rank + 1)
    ax = fig.add_subplot(grid[0, : (n_images + 1) // 2])
    if rank:
        ax.semilogy(k, shown, lw=1.5, label=f"rank {rank}: the other {eigvals.numel() - rank} are exactly 0")
        ax.legend(fontsize=8, loc="upper right")
    ax.set(xlabel="component k", ylabel="eigenvalue $\\lambda_k$",
           title=f"covariance spectrum (rank {rank} of {eigvals.numel()})")
    ax.grid(alpha=0.3)
    ax = fig.add_subplot(grid[0, (n_images + 1) // 2:])
    total = eigvals.sum().clamp_min(torch.finfo(eigvals.dtype).tiny)
    ax.plot(k, shown.cumsum(0) / total, lw=1.5)
    counts = components_for_variance(eigvals)
    for count in counts.values():
        ax.axvline(count, color="gray", lw=0.6, ls=":")
    ax.text(0.97, 0.05, "\n".join(f"{frac:.1%} of variance: {count} components" for frac, count in counts.items()),
            transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
            bbox=dict(boxstyle="round", fc="white", ec="0.8"))
    ax.set(xscale="log", xlabel="components kept", ylabel="variance explained", ylim=(0, 1.02),
           title="cumulative variance")
    ax.grid(alpha=0.3)
    if is_image:
        pictures = [("mean", mean)] + [(f"u{i + 1}", eigvecs[:, i]) for i in range(min(n_images, eigvecs.shape[1]))]
        for col, (label, vec) in enumerate(pictures):
            img = vec.reshape(feature_shape).permute(1, 2, 0).float()
            img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
            ax = fig.add_subplot(grid[1, col])
            ax.imshow(img.squeeze(-1).numpy(), cmap="gray" if feature_shape[0] == 1 else None)
            ax.set_title(label, fontsize=9)
            ax.axis("off")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    return path
