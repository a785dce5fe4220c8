"""``fastgauss demo``: the paper's finding on a bundled dataset, on a laptop CPU.

Two small EDM models: one on a small subset (it memorizes), one on the full set (it
generalizes). For each, per noise level, the RMSE to the Gaussian denoiser and to the
memorizing denoiser of its own training set and its linearity; the GL score and memorization
ratio of its samples; and a picture grid of samples from the same latents by both networks,
the Gaussian denoiser (closed form) and the memorizing denoiser.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .data import load_dataset
from .empirical import EmpiricalDenoiser
from .sampling import edm_sigmas, sample_euler
from .train import TrainConfig, Trainer


@dataclass
class DemoConfig:
    dataset: str = "digits"
    small_n: int = 64
    width: int = 32
    steps: int = 3000
    batch_size: int = 128
    eval_sigmas: tuple = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
    samples: int = 64
    seed: int = 0
    out: str = "fastgauss-out/demo"


def run_demo(config: DemoConfig, *, progress: bool = True) -> Path:
    """Train both models, measure them, write the report folder; returns its path."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset)
    models = {}
    for name, n in (("memorizing", config.small_n), ("generalizing", None)):
        train_config = TrainConfig(dataset=config.dataset, n=n, width=config.width, steps=config.steps,
                                   batch_size=config.batch_size, eval_every=config.steps, seed=config.seed,
                                   eval_sigmas=tuple(config.eval_sigmas), eval_samples=config.samples,
                                   out=str(out / name))
        trainer = Trainer(train_config, data)
        record = trainer.run(progress=progress)[-1]
        models[name] = (trainer, record)
    summary = {"config": asdict(config),
               "models": {name: {"n": rec["n"], "width": rec["width"], "steps": rec["step"], "sigma": rec["sigma"],
                                 "rmse_gaussian": rec["rmse_gaussian"], "rmse_empirical": rec["rmse_empirical"],
                                 "linearity": rec["linearity"], "gl_score": rec["gl_score"],
                                 "memorization_ratio": rec["memorization_ratio"]}
                          for name, (_, rec) in models.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    _plot_curves(out / "distances.png", summary)
    _plot_samples(out / "samples.png", models, data, config)
    return out


def _markdown(summary: dict) -> str:
    lines = ["# fastgauss demo: the hidden Gaussian structure", ""]
    for name, m in summary["models"].items():
        lines += [f"## {name} model: N = {m['n']}, width {m['width']}, {m['steps']} steps", "",
                  f"GL score {m['gl_score']:.3f} (above 0.6: generalizes), memorization ratio "
                  f"{m['memorization_ratio']:.3f}", "",
                  "| sigma | RMSE to Gaussian | RMSE to memorizing | linearity |", "|---|---|---|---|"]
        for row in zip(m["sigma"], m["rmse_gaussian"], m["rmse_empirical"], m["linearity"]):
            lines.append(f"| {row[0]:g} | {row[1]:.4f} | {row[2]:.4f} | {row[3]:.4f} |")
        lines.append("")
    lines += ["![distances](distances.png)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def _plot_curves(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for name, m in summary["models"].items():
        style = "-" if name == "generalizing" else "--"
        axes[0].plot(m["sigma"], m["rmse_gaussian"], style, marker="o", label=f"{name} (N={m['n']}) to Gaussian")
        axes[0].plot(m["sigma"], m["rmse_empirical"], style, marker="s", label=f"{name} (N={m['n']}) to memorizing")
        axes[1].plot(m["sigma"], m["linearity"], style, marker="o", label=f"{name} (N={m['n']})")
    axes[0].set(xscale="log", xlabel="sigma", ylabel="RMSE", title="distance to the reference denoisers")
    axes[1].set(xscale="log", xlabel="sigma", ylabel="|cos|", title="linearity score")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_samples(path: Path, models: dict, data: torch.Tensor, config: DemoConfig) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = min(8, config.samples)
    latents = torch.randn((count, *data.shape[1:]), generator=torch.Generator().manual_seed(config.seed + 7))
    sigmas = edm_sigmas(10)  # the paper's comparison: 10 Euler steps from the same latents
    small_set = models["memorizing"][0].train_set
    gaussian = models["generalizing"][0].references()[0]
    rows = {
        f"network, N={data.shape[0]}": sample_euler(models["generalizing"][0].ema.model, latents, sigmas),
        f"Gaussian (closed form)": gaussian.sample(latents, sigmas),
        f"network, N={small_set.shape[0]}": sample_euler(models["memorizing"][0].ema.model, latents, sigmas),
        f"memorizing, N={small_set.shape[0]}": sample_euler(EmpiricalDenoiser(small_set), latents, sigmas),
    }
    fig, axes = plt.subplots(len(rows), count, figsize=(1.3 * count, 1.45 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for c in range(count):
            img = images[c].clamp(-1, 1).permute(1, 2, 0).squeeze(-1) * 0.5 + 0.5
            axes[r][c].imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1)
            axes[r][c].axis("off")
        axes[r][0].set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
