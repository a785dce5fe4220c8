"""Report figures through matplotlib's object API: a ``matplotlib.figure.Figure`` saved to a file,
so that importing or calling fastgauss never selects or changes the user's backend (no pyplot)."""

from __future__ import annotations

from pathlib import Path


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
