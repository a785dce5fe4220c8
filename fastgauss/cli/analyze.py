"""``fastgauss analyze MODEL --dataset DATA --out DIR``: the command line of ``fastgauss.analyze``.

``add_parser(subparsers)`` registers the command; its handler raises ValueError for a user's
mistake, which ``fastgauss.cli.main`` prints as one line with exit status 2.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``analyze`` command to an argparse subparsers object; returns its parser."""
    from .common import add_device_argument, add_scale_argument, int_at_least, noise_levels, positive_int

    parser = subparsers.add_parser(
        "analyze", help="measure your own diffusion model against the Gaussian and memorizing denoisers",
        description="Measure a trained diffusion model (a diffusers folder, an EDM/EDM2 pickle with --trust-code, "
                    "or a fastgauss checkpoint) against the Gaussian and memorizing denoisers of its training "
                    "data, and write a report folder (summary.json, summary.md, PNGs) with a verdict: memorizes, "
                    "undertrained or generalizes.")
    parser.add_argument("model", help="diffusers pipeline or UNet folder, EDM .pkl, or fastgauss checkpoint / run folder")
    parser.add_argument("--dataset", required=True,
                        help="the model's training data: bundled name or a path (image folder, zip, .npy/.npz)")
    add_scale_argument(parser)
    parser.add_argument("--out", help="report folder; None: fastgauss-out/analyze-MODELNAME")
    parser.add_argument("--sigmas", type=noise_levels,
                        help="comma-separated noise levels; None: those of 0.05,0.1,0.2,0.5,1,2,5,10 inside the "
                             "model's range")
    parser.add_argument("--samples", type=int_at_least(2), default=64, help="samples from fixed latents")
    parser.add_argument("--batch-size", type=positive_int, default=256, help="inputs per network call")
    parser.add_argument("--jacobian-k", type=int_at_least(0), default=4,
                        help="top singular vectors of the Jacobian compared with the data's top eigenvectors "
                             "(0 skips this part, the slowest for a large network)")
    parser.add_argument("--labels", type=int_at_least(0), help="class label for a class-conditional model (give the images "
                                                   "of that class as --dataset)")
    parser.add_argument("--trust-code", action="store_true",
                        help="allow loading a pickle (EDM snapshots run their embedded code when loaded)")
    parser.add_argument("--cache-dir", help="where the data statistics are cached; None: stats-cache beside "
                                            "the report folder")
    add_device_argument(parser, "run the model and the measurements")
    parser.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the noise, pairs and latents")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Handler of ``fastgauss analyze``: runs the analysis, prints the verdict and the report's path."""
    from ..analysis import analyze

    started = time.perf_counter()
    model = Path(args.model)
    if not model.exists():
        raise ValueError(f"MODEL: {model} does not exist")
    out = Path(args.out) if args.out else Path("fastgauss-out") / f"analyze-{model.resolve().name or 'model'}"
    result = analyze(str(model), args.dataset, out=out, sigmas=args.sigmas, samples=args.samples,
                     batch_size=args.batch_size, labels=args.labels, device=args.device, seed=args.seed,
                     trust_code=args.trust_code, cache_dir=args.cache_dir, scale=args.scale, jacobian_k=args.jacobian_k,
                     progress=not args.quiet)
    summary = result.summary
    print(f"verdict: {result.verdict}")
    s = summary["samples"]
    print(f"GL score {s['gl_score']:.3f} (D_G through the same sampler: {s['gl_score_gaussian_euler']:.3f}, "
          f"N(mu, Sigma) samples: {s['gl_score_fresh_gaussian']:.3f}), "
          f"memorization ratio {s['memorization_ratio']:.3f}, flow distance to D_G {s['flow_distance_gaussian']:.4f}")
    print(f"report: {out / 'summary.md'} (distances.png, samples.png, neighbors.png; data summary.json)")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0
