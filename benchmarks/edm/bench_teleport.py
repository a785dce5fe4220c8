"""Gaussian teleportation: network evaluations saved at equal sample quality (CPU).

For each model (the demo's generalizing and memorizing EDM models on digits, and a diffusers
UNet trained by examples/train_diffusers_digits.py when its folder is given), from the same
latents:
  - the reference solution: plain Heun with 256 steps;
  - plain Heun and Euler with n steps, n in STEPS;
  - the same with teleportation at fixed switch levels and at switch_sigma="auto" (the default
    tol at every n, and a sweep of tol at n = 18, which is how DEFAULT_TOL was chosen);
and for each run its NFE, the RMSE of its samples to the reference, the sliced Wasserstein
distance of its samples to the training set (a distribution-level measure, beside the value of
the 256-step reference), the memorization ratio and the GL score; then per model and sampler
the NFE at which the auto curve reaches plain 18-step quality (error, SW2, both).

    python benchmarks/edm/bench_teleport.py [--samples 1000] [--checkpoint-dir DIR] [--diffusers DIR ...]
                                        [--out fastgauss-out/bench-teleport]

The demo's models are trained once (about 5 minutes each at one thread) and cached under
--checkpoint-dir (default --out); a diffusers folder is one written by
examples/train_diffusers_digits.py (its train_data.npy is the training set).
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

STEPS = (6, 9, 12, 15, 18, 21, 24)
REFERENCE_STEPS = 256
FIXED_SWITCHES = (10.0, 5.0)  # at every n; EXTRA_SWITCHES only at n = 18
EXTRA_SWITCHES = (20.0, 2.0)
TOL_SWEEP = (0.004, 0.01, 0.015)


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
    """(the folder's denoiser, its exact training images [N, 1, 8, 8] from train_data.npy)."""
    import numpy as np

    return fastgauss.load_denoiser(folder), torch.from_numpy(np.load(Path(folder) / "train_data.npy")).float()


def evaluate(name, net, train_set, samples: int, seed: int = 0) -> list[dict]:
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(train_set))
    latents = torch.randn((samples, *train_set.shape[1:]), generator=torch.Generator().manual_seed(seed))
    probes = train_set[torch.randperm(train_set.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:64]]
    with torch.no_grad():
        reference = fastgauss.sample_heun(net, latents, fastgauss.edm_sigmas(REFERENCE_STEPS))
        rows = [_row(name, "heun", REFERENCE_STEPS, None, 2 * REFERENCE_STEPS - 1, reference, reference, train_set, 0.0)]
        for steps in STEPS:
            sig = teleport.clip_schedule(fastgauss.edm_sigmas(steps).tolist(), net)
            for sampler_name, sampler in (("heun", fastgauss.sample_heun), ("euler", fastgauss.sample_euler)):
                sweep = TOL_SWEEP if steps == 18 and sampler_name == "heun" else ()
                tols = (teleport.DEFAULT_TOL, *sweep)
                autos = {tol: teleport.choose_switch(net, g, sig, data=probes, tol=tol, sampler=sampler_name,
                                                     generator=torch.Generator().manual_seed(seed + 2)) for tol in tols}
                fixed = FIXED_SWITCHES + (EXTRA_SWITCHES if steps == 18 and sampler_name == "heun" else ())
                runs = [(None, None)] + [(f"{s:g}", s) for s in fixed if s < sig[0]]
                runs += [(f"auto tol={tol:g}: {c.sigma:.3g}" + (" (default)" if tol == teleport.DEFAULT_TOL else ""),
                          c.sigma) for tol, c in autos.items()]
                done = {}  # switch level -> row: a level chosen twice is sampled once
                for label, switch in runs:
                    if switch in done:
                        row = {**done[switch], "switch": label}
                    else:
                        kwargs = {} if switch is None else {"gaussian": g, "switch_sigma": switch}
                        started = time.perf_counter()
                        out, traj = sampler(net, latents, torch.tensor(sig, dtype=torch.float64),
                                            return_trajectory=True, **kwargs)
                        row = done[switch] = _row(name, sampler_name, steps, label, traj.nfe, out, reference,
                                                  train_set, time.perf_counter() - started)
                    if label is not None and label.startswith("auto"):
                        choice = next(c for c in autos.values() if c.sigma == switch)
                        row["bound"] = choice.bound[choice.levels.index(choice.sigma)]
                        row["auto_default"] = label.endswith("(default)")
                        # network calls of the choice itself (all probes): the mismatch, then the end-point check
                        row["probe_nfe"] = probes.shape[0] * sum(1 for s in sig if s > 0) + choice.probe_nfe
                        row["checked"] = {f"{k:.4g}": v for k, v in (choice.checked or {}).items()}
                    rows.append(row)
    return rows


def rmse_by_level(name, net, train_set, steps: int = 18, seed: int = 0) -> str:
    """Per level of the (clipped) n-step schedule: the network's RMSE to the Gaussian and the bound
    E(s) on the end-point change of a jump to that level (what switch_sigma="auto" reads)."""
    g = fastgauss.GaussianDenoiser.from_moments(fastgauss.Moments().update(train_set))
    probes = train_set[torch.randperm(train_set.shape[0], generator=torch.Generator().manual_seed(seed + 1))[:64]]
    sig = teleport.clip_schedule(fastgauss.edm_sigmas(steps).tolist(), net)
    with torch.no_grad():
        c = teleport.choose_switch(net, g, sig, data=probes, generator=torch.Generator().manual_seed(seed))
    return "\n".join([f"| {name}: sigma | " + " | ".join(f"{s:.3g}" for s in c.levels) + " |",
                      "|" + "---|" * (len(c.levels) + 1),
                      "| RMSE to the Gaussian | " + " | ".join(f"{v:.3f}" for v in c.rmse) + " | - |",
                      "| bound E(s) on the jump's end-point change | " + " | ".join(f"{v:.4f}" for v in c.bound) + " |",
                      f"(auto, tol = {teleport.DEFAULT_TOL:g}: switch at {c.sigma:.3g})"])


def _row(model, sampler, steps, switch, nfe, samples, reference, train_set, seconds) -> dict:
    d = math.prod(samples.shape[1:])
    rmse = float(((samples - reference).reshape(samples.shape[0], -1).double().pow(2).sum(1) / d).sqrt().mean())
    return {"model": model, "sampler": sampler, "steps": steps, "switch": switch, "nfe": nfe, "rmse_to_ref": rmse,
            "sw_to_data": sliced_wasserstein(samples, train_set),
            "memorization_ratio": fastgauss.memorization_ratio(samples, train_set),
            "gl_score": fastgauss.gl_score(samples, train_set), "seconds": seconds}


def nfe_to_reach(curve: list[dict], key: str, target: float):
    """Fewest NFE at which a curve (runs sorted by NFE) reaches ``key`` <= target, interpolated
    linearly in NFE and log(key) between its neighbouring runs; None if it never does."""
    for before, run in zip([None] + curve[:-1], curve):
        if run[key] <= target:
            if before is None or before[key] <= target:
                return float(run["nfe"])
            t = math.log(before[key] / target) / math.log(before[key] / run[key])
            return before["nfe"] + t * (run["nfe"] - before["nfe"])
    return None


def saved_at_equal_quality(rows: list[dict]) -> list[str]:
    """Per model and sampler, against plain sampling at the EDM default of 18 steps: what auto
    (default tol) chooses there, the NFE its curve over n needs to reach that error, that SW2, and
    the fewest NFE of any teleported run at most as bad in both."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        for sampler in ("heun", "euler"):
            mine = [r for r in rows if r["model"] == model and r["sampler"] == sampler and r["steps"] in STEPS]
            plain = next((r for r in mine if r["switch"] is None and r["steps"] == 18), None)
            if plain is None:
                continue
            auto = sorted((r for r in mine if r.get("auto_default")), key=lambda r: r["nfe"])
            a18 = next(r for r in auto if r["steps"] == 18)
            lines.append(f"{model} {sampler}, plain 18 steps: {plain['nfe']} NFE, error {plain['rmse_to_ref']:.4f}, "
                         f"SW2 {plain['sw_to_data']:.4f}; auto at 18 steps: {a18['switch']}, {a18['nfe']} NFE, "
                         f"error {a18['rmse_to_ref']:.4f}, SW2 {a18['sw_to_data']:.4f}, bound {a18['bound']:.4f}")
            for key, what in (("rmse_to_ref", "error"), ("sw_to_data", "SW2")):
                nfe = nfe_to_reach(auto, key, plain[key])
                lines.append(f"  auto curve at equal {what}: " + ("never reached" if nfe is None else
                             f"{nfe:.1f} NFE ({1 - nfe / plain['nfe']:.0%} fewer)"))
            both = [r for r in mine if r["switch"] is not None and r["rmse_to_ref"] <= plain["rmse_to_ref"]
                    and r["sw_to_data"] <= plain["sw_to_data"]]
            if both:
                best = min(both, key=lambda r: r["nfe"])
                lines.append(f"  fewest NFE of a teleported run at most as bad in both: {best['nfe']} ({best['steps']} "
                             f"steps, switch {best['switch']}): {1 - best['nfe'] / plain['nfe']:.0%} fewer")
            else:
                lines.append("  no teleported run at most as bad in both")
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
    parser.add_argument("--checkpoint-dir", default=None,
                        help="where the demo's models are cached (DIR/generalizing/checkpoint.pt, ...; default --out)")
    parser.add_argument("--only", nargs="*", default=None, help="model names to run (generalizing, memorizing, "
                        "diffusers:FOLDERNAME); default all")
    parser.add_argument("--levels-only", action="store_true", help="only the per-level RMSE to the Gaussian")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits")
    rows, levels = [], []
    models = dict(demo_models(Path(args.checkpoint_dir) if args.checkpoint_dir else out, data))
    for folder in args.diffusers:
        models[f"diffusers:{Path(folder).name}"] = diffusers_model(folder)
    for name, (net, train_set) in models.items():
        if args.only is not None and name not in args.only:
            continue
        levels.append(rmse_by_level(name, net, train_set))
        if not args.levels_only:
            rows += evaluate(name, net, train_set, args.samples)
            (out / "teleport.json").write_text(json.dumps(rows, indent=2))  # partial results survive
    (out / "teleport.json").write_text(json.dumps(rows, indent=2))
    level_table = "\n\n".join(levels)
    report = level_table + "\n\n" + table(rows) + "\n\n" + "\n".join(saved_at_equal_quality(rows))
    (out / "teleport.md").write_text(report + "\n")
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
