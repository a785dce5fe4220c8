"""``fastgauss reproduce``: the paper's sweeps (training-set size, width, training length).

Every configuration is trained and measured as in the demo; each model's regime is read off
its samples: "memorizes" when at least ``MEMORIZING`` of them sit much closer to one training
image than to any other (memorization ratio), "generalizes" otherwise. The report lists, per
model, the mean RMSE to the Gaussian and to the memorizing denoiser over sigma in [0.5, 5].
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from .data import load_dataset
from .train import TrainConfig, Trainer

MEMORIZING = 0.1
MID_SIGMA = (0.5, 5.0)


def _mid_mean(record: dict, key: str) -> float:
    values = [v for s, v in zip(record["sigma"], record[key]) if MID_SIGMA[0] <= s <= MID_SIGMA[1]]
    return sum(values) / len(values) if values else float("nan")


def run_sweep(dataset: str, sizes, widths, steps, *, out: str, batch_size: int = 128, samples: int = 64,
              progress: bool = True) -> Path:
    """Train every (n, width, steps) combination; writes sweep.json and sweep.md; returns the folder."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset)
    rows = []
    for n, width, length in itertools.product(sizes, widths, steps):
        config = TrainConfig(dataset=dataset, n=None if n >= data.shape[0] else n, width=width, steps=length,
                             batch_size=batch_size, eval_every=length, eval_samples=samples,
                             out=str(folder / f"n{n}-w{width}-s{length}"))
        record = Trainer(config, data).run(progress=progress)[-1]
        rows.append({"n": record["n"], "width": width, "steps": length,
                     "regime": "memorizes" if record["memorization_ratio"] >= MEMORIZING else "generalizes",
                     "memorization_ratio": record["memorization_ratio"], "gl_score": record["gl_score"],
                     "rmse_gaussian_mid": _mid_mean(record, "rmse_gaussian"),
                     "rmse_empirical_mid": _mid_mean(record, "rmse_empirical"), "record": record})
    (folder / "sweep.json").write_text(json.dumps(rows, indent=2))
    lines = ["# fastgauss reproduce", "", f"dataset {dataset}; regime: memorization ratio >= {MEMORIZING} means "
             f"memorizes; RMSE averaged over sigma in [{MID_SIGMA[0]}, {MID_SIGMA[1]}]", "",
             "| N | width | steps | regime | memorization ratio | GL score | RMSE to Gaussian | RMSE to memorizing |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['width']} | {r['steps']} | {r['regime']} | {r['memorization_ratio']:.3f} | "
              f"{r['gl_score']:.3f} | {r['rmse_gaussian_mid']:.4f} | {r['rmse_empirical_mid']:.4f} |" for r in rows]
    lines += ["", "![sweep](sweep.png)"]
    (folder / "sweep.md").write_text("\n".join(lines) + "\n")
    _plot(folder / "sweep.png", rows)
    return folder


def _plot(path: Path, rows: list[dict]) -> None:
    """Mean mid-sigma RMSE to both references against the training-set size, one line per (width, steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4), constrained_layout=True)
    for width, length in sorted({(r["width"], r["steps"]) for r in rows}):
        group = sorted((r for r in rows if (r["width"], r["steps"]) == (width, length)), key=lambda r: r["n"])
        sizes = [r["n"] for r in group]
        ax.plot(sizes, [r["rmse_gaussian_mid"] for r in group], "-o", label=f"to Gaussian, w={width}, {length} steps")
        ax.plot(sizes, [r["rmse_empirical_mid"] for r in group], "--s", label=f"to memorizing, w={width}, {length} steps")
    ax.set(xscale="log", xlabel="training-set size N", ylabel=f"RMSE, sigma in [{MID_SIGMA[0]}, {MID_SIGMA[1]}]",
           title="from memorization to the Gaussian structure")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
