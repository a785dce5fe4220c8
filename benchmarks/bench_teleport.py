"""Gaussian teleportation: network evaluations saved at equal sample quality (CPU).

For each model (the demo's generalizing and memorizing EDM models on digits, and a diffusers
UNet trained by examples/train_diffusers_digits.py when its folder is given), from the same
latents:
  - the reference solution: plain Heun with 256 steps;
  - plain Heun and Euler with n steps, n in STEPS;
  - the same with teleportation at fixed switch levels and at switch_sigma="auto";
and for each run its NFE, the RMSE of its samples to the reference, the sliced Wasserstein
distance of its samples to the training set (a distribution-level measure, beside the value of
the 256-step reference), the memorization ratio and the GL score.

    python benchmarks/bench_teleport.py [--samples 1000] [--diffusers DIR ...] [--out fastgauss-out/bench-teleport]

Models are trained once (about 2 minutes each on 2 cores) and cached under --out.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

import fastgauss
from fastgauss.edm import teleport
from fastgauss.data import load_dataset
from fastgauss.edm.train import TrainConfig, Trainer

STEPS = (6, 9, 12, 18)
REFERENCE_STEPS = 256
FIXED_SWITCHES = (10.0, 5.0, 2.0, 1.0)


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two point sets [Na, d] and [Nb, d] (quantiles matched)."""
    a, b = a.reshape(a.shape[0], -1).double(), b.reshape(b.shape[0], -1).double()
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(a.shape[1], projections, generator=g, dtype=torch.float64)
    dirs /= dirs.norm(dim=0, keepdim=True)
    qa, qb = (a @ dirs).sort(0).values, (b @ dirs).sort(0).values
    levels = torch.linspace(0, 1, max(a.shape[0], b.shape[0]), dtype=torch.float64)
    ia = (levels * (a.shape[0] - 1)).round().long()
    ib = (levels * (b.shape[0] - 1)).round().long()
    return float(((qa[ia] - qb[ib]) ** 2).mean().sqrt())


def demo_models(out: Path, data: torch.Tensor) -> dict:
    """The demo's two models (its DemoConfig defaults), trained once and cached."""
    models = {}
    for name, n in (("generalizing", None), ("memorizing", 64)):
        config = TrainConfig(dataset="digits", n=n, width=32, steps=3000, batch_size=128, eval_every=3000,
                             out=str(out / name))
        ckpt = out / name / "checkpoint.pt"
        trainer = Trainer.resume(ckpt, config, data) if ckpt.exists() else Trainer(config, data)
        if trainer.step < config.steps:
            trainer.run(measure=False)
            trainer.save(ckpt)
        models[name] = (trainer.ema.model.eval(), trainer.train_set)
    return models


def diffusers_model(folder: str):
    den = fastgauss.load_denoiser(folder)
    n = json.loads((Path(folder) / "fastgauss_train.json").read_text())["n"] if \
        (Path(folder) / "fastgauss_train.json").exists() else None
    data = load_dataset("digits")
    if n:
        from fastgauss.edm.splits import subset
        data = subset(data, n, seed=0)
    return den, data


def evaluate(name, net, train_set, samples: int, seed: int = 0) -> list[dict]:
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(train_set))
    latents = torch.randn((samples, *train_set.shape[1:]), generator=torch.Generator().manual_seed(seed))
    probes = train_set[torch.randperm(train_set.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:64]]
    with torch.no_grad():
        reference = fastgauss.sample_heun(net, latents, fastgauss.edm_sigmas(REFERENCE_STEPS))
        rows = [_row(name, "heun", REFERENCE_STEPS, None, 2 * REFERENCE_STEPS - 1, reference, reference, train_set, 0.0)]
        for steps in STEPS:
            sig = fastgauss.edm_sigmas(steps)
            auto = teleport.auto_switch_sigma(net, g, sig.tolist(), data=probes)
            for sampler_name, sampler in (("heun", fastgauss.sample_heun), ("euler", fastgauss.sample_euler)):
                for switch in (None, *FIXED_SWITCHES, "auto"):
                    kwargs = {} if switch is None else {"gaussian": g, "switch_sigma": auto if switch == "auto" else switch}
                    started = time.perf_counter()
                    out, traj = sampler(net, latents, sig, return_trajectory=True, **kwargs)
                    rows.append(_row(name, sampler_name, steps, switch if switch != "auto" else f"auto={auto:.3g}",
                                     traj["nfe"], out, reference, train_set, time.perf_counter() - started))
    return rows


def rmse_by_level(name, net, train_set, steps: int = 18, seed: int = 0) -> str:
    """The network's RMSE to the Gaussian at each level of the schedule (what switch_sigma="auto" reads)."""
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(train_set))
    probes = train_set[torch.randperm(train_set.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:64]]
    sig = fastgauss.edm_sigmas(steps)[:-1]
    with torch.no_grad():
        t = fastgauss.denoiser_rmse(net, g, probes, sig, n=probes.shape[0], generator=torch.Generator().manual_seed(seed))
    return f"| {name} | " + " | ".join(f"{v:.3f}" for v in t.value.tolist()) + " |", sig


def _row(model, sampler, steps, switch, nfe, samples, reference, train_set, seconds) -> dict:
    d = math.prod(samples.shape[1:])
    rmse = float(((samples - reference).reshape(samples.shape[0], -1).double().pow(2).sum(1) / d).sqrt().mean())
    return {"model": model, "sampler": sampler, "steps": steps, "switch": switch, "nfe": nfe, "rmse_to_ref": rmse,
            "sw_to_data": sliced_wasserstein(samples, train_set),
            "memorization_ratio": fastgauss.memorization_ratio(samples, train_set),
            "gl_score": fastgauss.gl_score(samples, train_set), "seconds": seconds}


def saved_at_equal_quality(rows: list[dict]) -> list[str]:
    """Per model and sampler: the fewest NFE of a teleported run whose error and distribution measure
    are at most those of plain sampling at the EDM default of 18 steps."""
    lines = []
    for model in sorted({r["model"] for r in rows}):
        for sampler in ("heun", "euler"):
            plain = [r for r in rows if r["model"] == model and r["sampler"] == sampler and r["switch"] is None
                     and r["steps"] == 18]
            if not plain:
                continue
            p = plain[0]
            better = [r for r in rows if r["model"] == model and r["sampler"] == sampler and r["switch"] is not None
                      and r["steps"] in STEPS and r["rmse_to_ref"] <= p["rmse_to_ref"] and r["sw_to_data"] <= p["sw_to_data"]]
            if better:
                best = min(better, key=lambda r: r["nfe"])
                lines.append(f"{model} {sampler}: {best['nfe']} NFE ({best['steps']} steps, switch {best['switch']}) "
                             f"vs {p['nfe']} plain: {1 - best['nfe'] / p['nfe']:.0%} fewer")
            else:
                lines.append(f"{model} {sampler}: no teleported run matched plain {p['nfe']}-NFE quality")
    return lines


def table(rows: list[dict]) -> str:
    head = "| model | sampler | steps | switch sigma | NFE | RMSE to 256-step Heun | sliced W2 to data | mem. ratio | GL score |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        lines.append(f"| {r['model']} | {r['sampler']} | {r['steps']} | {r['switch'] if r['switch'] is not None else '-'} "
                     f"| {r['nfe']} | {r['rmse_to_ref']:.4f} | {r['sw_to_data']:.4f} | {r['memorization_ratio']:.2f} "
                     f"| {r['gl_score']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--diffusers", nargs="*", default=[], help="diffusers folders written by the example")
    parser.add_argument("--out", default="fastgauss-out/bench-teleport")
    parser.add_argument("--levels-only", action="store_true", help="only the per-level RMSE to the Gaussian")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits")
    rows, levels = [], []
    models = dict(demo_models(out, data))
    for folder in args.diffusers:
        models[f"diffusers:{Path(folder).name}"] = diffusers_model(folder)
    for name, (net, train_set) in models.items():
        line, sig = rmse_by_level(name, net, train_set)
        levels.append(line)
        if not args.levels_only:
            rows += evaluate(name, net, train_set, args.samples)
    (out / "teleport.json").write_text(json.dumps(rows, indent=2))
    head = "| RMSE to the Gaussian at sigma = | " + " | ".join(f"{s:.3g}" for s in sig.tolist()) + " |"
    level_table = "\n".join([head, "|" + "---|" * (sig.numel() + 1), *levels])
    report = level_table + "\n\n" + table(rows) + "\n\n" + "\n".join(saved_at_equal_quality(rows))
    (out / "teleport.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
