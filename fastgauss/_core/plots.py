"""Report figures through matplotlib's object API: a ``matplotlib.figure.Figure`` saved to a file,
so that importing or calling fastgauss never selects or changes the user's backend (no pyplot)."""

from __future__ import annotations

from pathlib import Path

import torch


def figure(**kwargs):
    """A new ``matplotlib.figure.Figure`` (no pyplot, no backend change); ImportError without matplotlib."""
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_training_curve(path, records: list[dict]) -> Path:
    """PNG of a training run's measurements against the step (records: the lines of log.jsonl).

    Left: RMSE of the network to the Gaussian and to the memorizing denoiser, averaged over the
    measured noise levels. Right: GL score of its samples beside that of fresh N(mu, Sigma)
    samples, and the memorization ratio of its samples.
    """
    path = Path(path)
    steps = [r["step"] for r in records]
    fig = figure(figsize=(10, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for key, label, style in (("rmse_gaussian", "to Gaussian", "-"), ("rmse_empirical", "to memorizing", "--")):
        left.plot(steps, [sum(r[key]) / len(r[key]) for r in records], style, marker="o", color="C0" if style == "-"
                  else "C1", label=label)
    left.set(xlabel="training step", ylabel="RMSE, mean over sigma", title="distance to the reference denoisers")
    right.plot(steps, [r["gl_score"] for r in records], "-o", color="C0", label="GL score")
    if all("gl_score_gaussian" in r for r in records):
        right.plot(steps, [r["gl_score_gaussian"] for r in records], ":", color="C0",
                   label="GL score, fresh N(mu, Sigma) samples")
    right.plot(steps, [r["memorization_ratio"] for r in records], "--s", color="C3", label="memorization ratio")
    right.set(xlabel="training step", ylabel="score", title="the samples")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.savefig(path, dpi=110)
    return path


def imshow_array(t: torch.Tensor):
    """[C, H, W] in [-1, 1] -> an array for imshow (channel 0 when C is not 1 or 3)."""
    t = t.detach().float().cpu().clamp(-1, 1) * 0.5 + 0.5
    if t.dim() != 3:
        return None
    return (t[0] if t.shape[0] != 3 else t.permute(1, 2, 0)).numpy()


def image_grid(path: Path, rows: dict, title: str) -> None:
    """A PNG of labelled rows of images: rows maps a label to a list of [C, H, W] tensors in [-1, 1]."""
    count = max(len(v) for v in rows.values())
    fig = figure(figsize=(1.3 * count + 1.5, 1.45 * len(rows)))
    axes = fig.subplots(len(rows), count, squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(count):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                img = imshow_array(images[c])
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        axes[r][0].set_title(label, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
