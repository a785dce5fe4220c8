"""``fastgauss reproduce``: the paper's sweeps (training-set size, width, training length).

Every configuration is trained and measured as in the demo, and each model's regime is the
three-way :func:`fastgauss.verdict` (memorizes / undertrained / generalizes) of its evidence:
memorization ratio of its samples, RMSE to the memorizing vs the Gaussian denoiser at sigma <= 1,
and GL score beside the GL score of fresh N(mu, Sigma) samples. The report also lists, per
model, the mean RMSE to the Gaussian and to the memorizing denoiser over sigma in [0.5, 5].
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import torch

from .._core.plots import figure
from ..data import load_dataset
from .demo import DEFINITIONS, model_verdict
from ..edm.train import TrainConfig, Trainer
from .common import DEFAULT_OUT, add_run_arguments, add_scale_argument, check_size, int_list, load_data

MID_SIGMA = (0.5, 5.0)
_MARKERS = {"memorizes": "X", "undertrained": "v", "generalizes": "o"}


def _mid_mean(record: dict, key: str) -> float:
    values = [v for s, v in zip(record["sigma"], record[key]) if MID_SIGMA[0] <= s <= MID_SIGMA[1]]
    return sum(values) / len(values) if values else float("nan")


def run_sweep(dataset: str, sizes, widths, steps, *, out: str, batch_size: int = 128, samples: int = 64,
              progress: bool = True, device: str = "cpu", data: torch.Tensor | None = None,
              scale: str | None = None) -> Path:
    """Train every (n, width, steps) combination; writes sweep.json, sweep.md and sweep.png; returns the folder.

    sizes, widths, steps: non-empty lists; every size from 2 to the dataset's size.
    data: the dataset if already loaded ([N, C, H, W] in [-1, 1]), else ``dataset`` is loaded (with ``scale``).
    """
    for label, values, low in (("sizes", sizes, 2), ("widths", widths, 8), ("steps", steps, 1)):
        if not values or any(not isinstance(v, int) or v < low for v in values):
            raise ValueError(f"{label}: expected a non-empty list of integers >= {low}, got {values!r}")
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    data = load_dataset(dataset, scale=scale) if data is None else data
    too_big = [n for n in sizes if n > data.shape[0]]
    if too_big:
        raise ValueError(f"sizes: {too_big[0]} is more than the {data.shape[0]} samples of {dataset}")
    rows = []
    for n, width, length in itertools.product(sizes, widths, steps):
        config = TrainConfig(dataset=dataset, n=None if n == data.shape[0] else n, width=width, steps=length,
                             batch_size=batch_size, eval_every=length, eval_samples=samples, scale=scale,
                             out=str(folder / f"n{n}-w{width}-s{length}"))
        record = Trainer(config, data, device=device).run(progress=progress)[-1]
        v = model_verdict(record)
        rows.append({"n": record["n"], "width": width, "steps": length, "regime": v.label,
                     "verdict": v.to_dict(), "memorization_ratio": record["memorization_ratio"],
                     "gl_score": record["gl_score"], "gl_score_gaussian": record["gl_score_gaussian"],
                     "rmse_ratio": v.rmse_ratio,
                     "rmse_gaussian_mid": _mid_mean(record, "rmse_gaussian"),
                     "rmse_empirical_mid": _mid_mean(record, "rmse_empirical"), "record": record})
    (folder / "sweep.json").write_text(json.dumps(rows, indent=2))
    (folder / "sweep.md").write_text(_markdown(dataset, rows))
    _plot(folder / "sweep.png", rows)
    return folder


def _markdown(dataset: str, rows: list[dict]) -> str:
    def num(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    lines = ["# fastgauss reproduce", "", f"dataset {dataset}. Verdict by fastgauss.verdict from the columns beside it; "
             f"the last two columns average the RMSE over sigma in [{MID_SIGMA[0]}, {MID_SIGMA[1]}].", "",
             "| N | width | steps | verdict | memorization ratio | RMSE ratio (sigma <= 1) | GL score | "
             "GL score, N(mu, Sigma) samples | RMSE to Gaussian | RMSE to memorizing |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['n']} | {r['width']} | {r['steps']} | {r['regime']} | {r['memorization_ratio']:.3f} | "
              f"{num(r['rmse_ratio'], '.2f')} | {r['gl_score']:.3f} | {r['gl_score_gaussian']:.3f} | "
              f"{r['rmse_gaussian_mid']:.4f} | {r['rmse_empirical_mid']:.4f} |" for r in rows]
    lines += ["", "Why each verdict:", ""]
    lines += [f"- N = {r['n']}, width {r['width']}, {r['steps']} steps: {r['regime']} ({r['verdict']['rule']})"
              for r in rows]
    lines += ["", "## What the numbers mean", "", DEFINITIONS, "![sweep](sweep.png)"]
    return "\n".join(lines) + "\n"


def _plot(path: Path, rows: list[dict]) -> None:
    """Mid-sigma RMSE to both references against the training-set size: one colour per (width, steps),
    solid to the Gaussian, dashed to the memorizing denoiser; each point's marker is its verdict."""
    fig = figure(figsize=(8.5, 4.4), layout="constrained")
    ax = fig.subplots()
    groups = sorted({(r["width"], r["steps"]) for r in rows})
    for i, (width, length) in enumerate(groups):
        color = f"C{i}"
        group = sorted((r for r in rows if (r["width"], r["steps"]) == (width, length)), key=lambda r: r["n"])
        sizes = [r["n"] for r in group]
        ax.plot(sizes, [r["rmse_gaussian_mid"] for r in group], "-", color=color,
                label=f"w={width}, {length} steps: to Gaussian")
        ax.plot(sizes, [r["rmse_empirical_mid"] for r in group], "--", color=color,
                label=f"w={width}, {length} steps: to memorizing")
        for r in group:
            for key in ("rmse_gaussian_mid", "rmse_empirical_mid"):
                ax.plot([r["n"]], [r[key]], _MARKERS[r["regime"]], color=color, ms=7, mec="black", mew=0.5)
    for label, marker in _MARKERS.items():
        ax.plot([], [], marker, color="gray", mec="black", mew=0.5, ls="none", label=f"verdict: {label}")
    sizes = sorted({r["n"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()
    ax.set(xlabel="training-set size N", ylabel=f"RMSE, mean over sigma in [{MID_SIGMA[0]}, {MID_SIGMA[1]}]",
           title="from memorization to the Gaussian structure")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside the axes
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------ the command

def run_command(args: argparse.Namespace) -> int:

    data = load_data(args)
    for n in args.sizes:
        check_size("--sizes", n, data, args.dataset)
    folder = run_sweep(args.dataset, args.sizes, args.widths, args.steps, out=args.out, samples=args.samples,
                       progress=not args.quiet, device=args.device, data=data, scale=args.scale)
    print((folder / "sweep.md").read_text())
    print(f"wrote {folder / 'sweep.json'}, {folder / 'sweep.md'} and {folder / 'sweep.png'}")
    return 0


def add_parser(commands) -> None:
    sweep = commands.add_parser("reproduce", help="the paper's sweeps: training-set size, width, training length",
                                description="Train every combination of --sizes, --widths and --steps and report "
                                            "each model's verdict (memorizes, undertrained or generalizes) with "
                                            "its evidence.")
    sweep.add_argument("--dataset", default="digits", help="bundled name or path (a zip for CIFAR-10 or FFHQ)")
    add_scale_argument(sweep)
    sweep.add_argument("--sizes", type=int_list(2), default=[64, 256, 1797],
                       help="training-set sizes (each from 2 to the dataset's size), e.g. 64,256,1797")
    sweep.add_argument("--widths", type=int_list(8), default=[32], help="UNet widths (multiples of 8), e.g. 16,32,64")
    sweep.add_argument("--steps", type=int_list(1), default=[3000], help="training lengths, e.g. 1000,3000")
    add_run_arguments(sweep, out=str(DEFAULT_OUT / "reproduce"), out_help="report folder")
    sweep.set_defaults(run=run_command)
