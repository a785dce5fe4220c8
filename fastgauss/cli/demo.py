"""``fastgauss demo``: the paper's finding on a bundled dataset, on a laptop CPU (or a GPU).

Two small EDM models: one on a small subset (it memorizes), one on the full set (it
generalizes). For each, per noise level, the RMSE to the Gaussian denoiser and to the
memorizing denoiser of its own training set and its linearity; the GL score and memorization
ratio of its samples, with the GL score of fresh N(mu, Sigma) samples beside it; the verdict
(:func:`fastgauss.verdict`) read off that evidence; and a picture grid of samples from the same
latents by both networks, the Gaussian denoiser (closed form) and the memorizing denoiser.
"""

from __future__ import annotations

import argparse
import time
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .._core.plots import figure
from ..data import load_dataset
from ..ops.empirical import EmpiricalDenoiser
from ..edm.sampling import edm_sigmas, sample_euler
from ..edm.train import TrainConfig, Trainer
from ..diagnostics.verdict import verdict
from .common import DEFAULT_OUT, add_model_arguments, add_run_arguments, check_size, int_at_least, load_data

#: What every number in the report means (printed into summary.md; the README repeats it).
DEFINITIONS = """\
- **RMSE to Gaussian / to memorizing** at sigma: mean over noisy training images x = y + sigma eps of
  sqrt(|D_net(x) - D_ref(x)|^2 / d), against the Gaussian denoiser D_G of N(mu, Sigma) (the training set's
  mean and covariance) and against the memorizing denoiser D_M (the optimal denoiser of the training set itself).
- **linearity** at sigma: mean over pairs of |cos(D(a x_1 + b x_2), a D(x_1) + b D(x_2))|, a = b = 1/sqrt(2); 1 for
  a linear map.
- **GL score**: mean over the model's samples of |x - NN(x)| / |x| (NN: the nearest training image); small when
  samples copy training images. Its reference is the GL score of as many fresh N(mu, Sigma) samples.
- **memorization ratio**: the fraction of samples whose nearest training image is less than 1/3 as far as the
  second nearest (a copy of one training image).
- **RMSE ratio**: mean RMSE to memorizing / mean RMSE to Gaussian at sigma <= 1; below 1 the network is closer to D_M.
- **verdict**: memorizes if memorization ratio >= 0.1 or RMSE ratio <= the calibrated margin; undertrained if its
  GL score is above that of fresh N(mu, Sigma) samples (its samples lie farther from the data than the
  Gaussian's); generalizes otherwise (fastgauss.verdict).
"""


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
    device: str = "cpu"
    scale: str | None = None


def model_verdict(record: dict):
    """fastgauss.verdict of one measurement record (Trainer.measure's dict)."""
    return verdict(memorization_ratio=record["memorization_ratio"], gl_score=record["gl_score"],
                   gl_score_gaussian=record.get("gl_score_gaussian"),
                   rmse_to_empirical=dict(zip(record["sigma"], record["rmse_empirical"])),
                   rmse_to_gaussian=dict(zip(record["sigma"], record["rmse_gaussian"])))


def run_demo(config: DemoConfig, *, progress: bool = True, data: torch.Tensor | None = None) -> Path:
    """Train both models, measure them, write the report folder; returns its path.

    data: the dataset ([N, C, H, W] in [-1, 1]) if already loaded, else ``config.dataset`` is loaded.
    """
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(config.dataset, scale=config.scale) if data is None else data
    models = {}
    for name, n in (("memorizing", config.small_n), ("generalizing", None)):
        train_config = TrainConfig(dataset=config.dataset, n=n, width=config.width, steps=config.steps,
                                   batch_size=config.batch_size, eval_every=config.steps, seed=config.seed,
                                   eval_sigmas=tuple(config.eval_sigmas), eval_samples=config.samples,
                                   scale=config.scale, out=str(out / name))
        trainer = Trainer(train_config, data, device=config.device)
        record = trainer.run(progress=progress)[-1]
        models[name] = (trainer, record)
    summary = {"config": asdict(config),
               "models": {name: {"n": rec["n"], "width": rec["width"], "steps": rec["step"], "sigma": rec["sigma"],
                                 "rmse_gaussian": rec["rmse_gaussian"], "rmse_empirical": rec["rmse_empirical"],
                                 "linearity": rec["linearity"], "gl_score": rec["gl_score"],
                                 "gl_score_gaussian": rec["gl_score_gaussian"],
                                 "memorization_ratio": rec["memorization_ratio"],
                                 "verdict": model_verdict(rec).to_dict()}
                          for name, (_, rec) in models.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(_markdown(summary))
    _plot_curves(out / "distances.png", summary)
    _plot_samples(out / "samples.png", models, data, config)
    return out


def _markdown(summary: dict) -> str:
    lines = ["# fastgauss demo: the hidden Gaussian structure", ""]
    for name, m in summary["models"].items():
        v = m["verdict"]
        lines += [f"## {name} model: N = {m['n']}, width {m['width']}, {m['steps']} steps", "",
                  f"**Verdict: {v['label']}** ({v['rule']}).", "",
                  f"- memorization ratio {m['memorization_ratio']:.3f} (memorizes at >= {v['memorization_threshold']:g})",
                  f"- GL score {m['gl_score']:.3f}; fresh N(mu, Sigma) samples on the same data: "
                  f"{m['gl_score_gaussian']:.3f} (undertrained when the model's is above it)",
                  f"- RMSE ratio (to memorizing / to Gaussian, sigma <= {v['sigma_max']:g}): "
                  + ("not measured" if v["rmse_ratio"] is None else
                     f"{v['rmse_to_empirical_low']:.4f} / {v['rmse_to_gaussian_low']:.4f} = {v['rmse_ratio']:.2f}")
                  + f" (memorizes at <= {v['margin']:g})", "",
                  "| sigma | RMSE to Gaussian | RMSE to memorizing | linearity |", "|---|---|---|---|"]
        for row in zip(m["sigma"], m["rmse_gaussian"], m["rmse_empirical"], m["linearity"]):
            lines.append(f"| {row[0]:g} | {row[1]:.4f} | {row[2]:.4f} | {row[3]:.4f} |")
        lines.append("")
    lines += ["## What the numbers mean", "", DEFINITIONS,
              "![distances](distances.png)", "", "![samples](samples.png)", ""]
    return "\n".join(lines)


def _plot_curves(path: Path, summary: dict) -> None:
    """Two panels; one colour per model in both; solid: to the Gaussian, dashed: to the memorizing denoiser."""
    fig = figure(figsize=(11, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for i, (name, m) in enumerate(summary["models"].items()):
        color, who = f"C{i}", f"{name} (N={m['n']}, {m['verdict']['label']})"
        axes[0].plot(m["sigma"], m["rmse_gaussian"], "-", marker="o", color=color, label=f"{who}: to Gaussian")
        axes[0].plot(m["sigma"], m["rmse_empirical"], "--", marker="s", color=color, label=f"{who}: to memorizing")
        axes[1].plot(m["sigma"], m["linearity"], "-", marker="o", color=color, label=who)
    axes[0].set(xscale="log", xlabel="sigma", ylabel="RMSE", title="distance to the reference denoisers")
    axes[1].set(xscale="log", xlabel="sigma", ylabel="|cos|", title="linearity score")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # below
    fig.savefig(path, dpi=110)


def _plot_samples(path: Path, models: dict, data: torch.Tensor, config: DemoConfig) -> None:
    count = min(8, config.samples)
    device = models["generalizing"][0].train_set.device
    latents = torch.randn((count, *data.shape[1:]), generator=torch.Generator().manual_seed(config.seed + 7))
    latents = latents.to(device)
    sigmas = edm_sigmas(10)  # the paper's comparison: 10 Euler steps from the same latents
    small_set = models["memorizing"][0].train_set
    gaussian = models["generalizing"][0].references()[0]
    rows = {
        f"network, N={data.shape[0]}": sample_euler(models["generalizing"][0].ema.model, latents, sigmas),
        "Gaussian (closed form)": gaussian.sample(latents, sigmas),
        f"network, N={small_set.shape[0]}": sample_euler(models["memorizing"][0].ema.model, latents, sigmas),
        f"memorizing, N={small_set.shape[0]}": sample_euler(EmpiricalDenoiser(small_set), latents, sigmas),
    }
    fig = figure(figsize=(1.3 * count, 1.45 * len(rows)))
    axes = fig.subplots(len(rows), count, squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        images = images.detach().cpu()
        for c in range(count):
            img = images[c].clamp(-1, 1).permute(1, 2, 0).squeeze(-1) * 0.5 + 0.5
            axes[r][c].imshow(img.numpy(), cmap="gray" if img.dim() == 2 else None, vmin=0, vmax=1)
            axes[r][c].axis("off")
        axes[r][0].set_title(label, fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------ the command

def run_command(args: argparse.Namespace) -> int:

    started = time.perf_counter()
    data = load_data(args)
    check_size("--small-n", args.small_n, data, args.dataset)
    config = DemoConfig(dataset=args.dataset, small_n=args.small_n, width=args.width, steps=args.steps,
                        samples=args.samples, out=str(args.out), device=args.device, scale=args.scale)
    out = run_demo(config, progress=not args.quiet, data=data)
    summary = json.loads((out / "summary.json").read_text())
    for name, m in summary["models"].items():
        print(f"{name:>12} (N={m['n']}): {m['verdict']['label']} ({m['verdict']['rule']})")
    print(f"report: {out / 'summary.md'} (the evidence and what each number means; plots distances.png, "
          f"samples.png; data summary.json)")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def add_parser(commands) -> None:
    demo = commands.add_parser("demo", help="the paper's finding on a bundled dataset: report folder",
                               description="Train a memorizing (small subset) and a generalizing (full set) "
                                           "model and write a report comparing them with the Gaussian and "
                                           "memorizing denoisers, with each model's verdict and its evidence.")
    add_model_arguments(demo, steps=3000)
    demo.add_argument("--small-n", type=int_at_least(2), default=64, help="training-set size of the memorizing model")
    add_run_arguments(demo, out=str(DEFAULT_OUT / "demo"), out_help="report folder")
    demo.set_defaults(run=run_command)
