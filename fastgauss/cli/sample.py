"""``fastgauss sample``: samples from any model ``load_denoiser`` reads, with Gaussian teleportation.

    fastgauss sample MODEL --dataset DATA [--samples 64] [--sampler heun|euler] [--sampling-steps 18]
                     [--teleport auto|none|SIGMA] [--tol T] [--seed 0] [--device ...] [--out DIR]

The Gaussian comes from DATA's statistics (cached beside the output, see ``fastgauss.analysis.stats_cache``).
Writes DIR/samples.pt ({"samples": [S, *feature_shape], "nfe", "switch_sigma", ...}),
DIR/samples.png (a grid) and DIR/summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch


def teleport_level(text: str):
    """argparse type: 'auto', 'none' or a level >= 0."""
    if text in ("auto", "none"):
        return None if text == "none" else "auto"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a level >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a level >= 0, got {text}")
    return value


def add_parser(commands) -> None:
    from .common import add_device_argument, add_scale_argument, positive_float, positive_int

    p = commands.add_parser("sample", help="samples from a model, optionally teleported by the data's Gaussian",
                            description=__doc__.split("\n")[0])
    p.add_argument("model", help="a diffusers folder, an EDM .pkl (with --trust-code) or a fastgauss checkpoint")
    p.add_argument("--dataset", required=True, help="the training data: a bundled name, a folder, a zip or an array")
    add_scale_argument(p)
    p.add_argument("--samples", type=positive_int, default=64, help="how many samples")
    p.add_argument("--sampler", choices=("heun", "euler"), default="heun", help="the ODE sampler")
    p.add_argument("--sampling-steps", type=positive_int, default=18, help="steps of the EDM schedule")
    p.add_argument("--teleport", type=teleport_level, default="auto",
                   help="switch level sigma_s of the Gaussian jump: auto (measured), none, or a level")
    p.add_argument("--tol", type=positive_float, default=None,
                   help="auto: how far the jump may move the samples, RMSE per feature in data units "
                        "(default: teleport.DEFAULT_TOL)")
    p.add_argument("--trust-code", action="store_true", help="allow EDM pickles, which run their own code")
    p.add_argument("--cache-dir", default=None, help="where the data's statistics are cached (default: beside --out)")
    p.add_argument("--batch-size", type=positive_int, default=256, help="samples per network call")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents")
    add_device_argument(p, "run the model")
    p.add_argument("--out", default="fastgauss-out/sample", help="output folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .. import GaussianDenoiser, sample_euler, sample_heun
    from ..analysis.stats_cache import cached_stats
    from .common import UsageError, load_data, say
    from ..models import load_denoiser
    from ..edm.sampling import edm_sigmas
    from ..edm.teleport import DEFAULT_TOL, choose_switch, clip_schedule

    started = time.perf_counter()
    out = Path(args.out)
    data = load_data(args)
    try:
        model = load_denoiser(args.model, trust_code=args.trust_code, device=args.device)
    except ValueError as exc:
        raise UsageError(f"MODEL {args.model}: {exc}") from None
    shape = getattr(model, "feature_shape", None)
    if shape is not None and tuple(shape) != tuple(data.shape[1:]):
        raise UsageError(f"--dataset {args.dataset}: images of shape {tuple(data.shape[1:])}, but the model "
                         f"{args.model} takes {tuple(shape)}")
    out.mkdir(parents=True, exist_ok=True)
    stats = cached_stats(data, cache_dir=args.cache_dir or out / "cache", source=_source(args.dataset),
                         progress=not args.quiet)
    gaussian = GaussianDenoiser.from_moments(stats.moments).to(args.device)
    latents = torch.randn((args.samples, *data.shape[1:]), generator=torch.Generator().manual_seed(args.seed))
    latents = latents.to(args.device)
    sigmas = edm_sigmas(args.sampling_steps)
    sampler = sample_heun if args.sampler == "heun" else sample_euler
    kwargs, choice, probes = {}, None, None
    if args.teleport is not None:
        kwargs = {"gaussian": gaussian, "switch_sigma": args.teleport}
    if args.teleport == "auto":  # measured once, before sampling: the same level for every batch
        probes = data[torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(args.seed + 1))[:64]]
        with torch.no_grad():
            choice = choose_switch(model, gaussian, clip_schedule(sigmas.tolist(), model), data=probes.to(args.device),
                                   tol=args.tol, sampler=args.sampler,
                                   generator=torch.Generator().manual_seed(args.seed + 2))
        kwargs["switch_sigma"] = choice.sigma
    chunks, nfe, jump = [], 0, None
    with torch.no_grad():
        for part in latents.split(args.batch_size):
            samples, traj = sampler(model, part, sigmas, return_trajectory=True, progress=not args.quiet, **kwargs)
            chunks.append(samples.cpu())
            nfe, jump = traj.nfe, traj.jump or jump
    samples = torch.cat(chunks)
    summary = {"model": str(args.model), "dataset": str(args.dataset), "n_samples": args.samples,
               "sampler": args.sampler, "sampling_steps": args.sampling_steps,
               "nfe_per_sample": nfe, "nfe_without_teleport": 2 * len(_positive(sigmas)) - 1 if args.sampler == "heun"
               else len(_positive(sigmas)),
               "teleport": args.teleport if args.teleport is not None else "none",
               "tol": args.tol if args.tol is not None else DEFAULT_TOL,
               "switch_sigma": None if jump is None else jump[1], "seed": args.seed,
               "switch_bound": None if choice is None else choice.bound[choice.levels.index(choice.sigma)],
               "auto_probe_nfe": None if choice is None
               else len(probes) * sum(1 for s in choice.levels if s > 0) + choice.probe_nfe,
               "seconds": round(time.perf_counter() - started, 2)}
    torch.save({"samples": samples, **summary}, out / "samples.pt")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"sampled {args.samples} from {args.model} with {args.sampler}: {nfe} network evaluations per sample "
         f"({summary['nfe_without_teleport']} without teleportation), switch sigma "
         f"{'none' if jump is None else f'{jump[1]:.4g}'}")
    png = _grid(out / "samples.png", samples)
    say(f"wrote {out / 'samples.pt'}, {out / 'summary.json'}" + (f", {png}" if png else ""))
    return 0


def _positive(sigmas: torch.Tensor) -> list[float]:
    return [s for s in sigmas.tolist() if s > 0]


def _source(dataset: str):
    path = Path(dataset)
    return path if path.exists() else None


def _grid(path: Path, samples: torch.Tensor, columns: int = 8):
    """A PNG grid of up to 64 samples ([S, C, H, W] in [-1, 1]); None without matplotlib or for non-images."""
    if samples.dim() != 4:
        return None
    try:
        from .._core.plots import image_grid

        shown = samples[:64]
        image_grid(path, {f"samples {i}-{min(i + columns, len(shown)) - 1}": list(shown[i:i + columns])
                          for i in range(0, len(shown), columns)}, f"{len(samples)} samples")
    except ImportError:
        return None
    return path
