"""``fastgauss stats DATASET``: mean, covariance and eigendecomposition of a dataset, to a file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..data import dataset_names
from ..diagnostics.spectrum import components_for_variance, plot_spectrum
from ..ops.moments.op import PRECISIONS, Moments
from .common import DEFAULT_OUT, UsageError, add_device_argument, add_scale_argument, load_data, positive_int

def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    data = load_data(args, "dataset")
    name = Path(str(args.dataset)).stem if args.dataset not in dataset_names() else args.dataset
    out = Path(args.out) if args.out else DEFAULT_OUT / f"stats-{name}.pt"
    if args.rank is not None and args.rank > data[0].numel():
        raise UsageError(f"--rank {args.rank}: the data has only d = {data[0].numel()} features")
    out.parent.mkdir(parents=True, exist_ok=True)
    moments = Moments.from_loader(data.split(args.batch_size), device=args.device, progress=not args.quiet,
                                  desc=f"moments of {name}", precision=args.precision)
    eigvals, eigvecs = moments.eigh(rank=args.rank, ddof=args.ddof)
    all_eigvals = eigvals if args.rank is None else moments.eigh(ddof=args.ddof)[0]
    result = {
        "source": str(args.dataset), "count": moments.count, "feature_shape": moments.feature_shape,
        "ddof": args.ddof, "mean": moments.mean.cpu(), "covariance": moments.covariance(args.ddof).cpu(),
        "eigvals": eigvals.cpu(), "eigvecs": eigvecs.cpu(), "moments": moments.state_dict(),
    }
    tmp = out.with_name(out.name + ".tmp")
    torch.save(result, tmp)
    tmp.replace(out)  # atomic: a crash never leaves a half-written file

    print(f"dataset      {args.dataset}  ({moments.count} samples, feature shape {moments.feature_shape})")
    print(f"dimension    d = {moments.dim}")
    top = ", ".join(f"{v:.4g}" for v in all_eigvals[: args.top].tolist())
    print(f"top {min(args.top, all_eigvals.numel())} eigenvalues  {top}")
    print(f"total variance  {all_eigvals.sum().item():.6g}")
    for frac, k in components_for_variance(all_eigvals.cpu()).items():
        print(f"components for {frac:.1%} of the variance: {k} of {moments.dim}")
    print(f"wrote {out}")
    if not args.no_plot:
        try:
            png = plot_spectrum(out.with_suffix(".png"), all_eigvals.cpu(), result["mean"], result["eigvecs"],
                                moments.feature_shape, f"{name}: {moments.count} samples, d = {moments.dim}")
            print(f"wrote {png}")
        except ImportError:
            print("(install fastgauss[plot] for a picture of the spectrum)")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


def add_parser(commands) -> None:
    stats = commands.add_parser(
        "stats", help="mean, covariance and eigendecomposition of a dataset",
        description="Stream a dataset through fastgauss.Moments and write mean, covariance and "
                    "eigendecomposition to a file (torch.save).")
    stats.add_argument("dataset", help=f"bundled ({', '.join(dataset_names())}) or a path: image folder, "
                                       "zip of images, .npy/.npz")
    stats.add_argument("--out", help=f"output file (default: {DEFAULT_OUT}/stats-NAME.pt; a .png beside it)")
    stats.add_argument("--limit", type=positive_int, help="use only the first LIMIT samples (default: all)")
    stats.add_argument("--batch-size", type=positive_int, default=1024, help="samples per streamed batch")
    stats.add_argument("--rank", type=positive_int, help="keep only the top RANK eigenpairs in the file (default: all)")
    stats.add_argument("--ddof", type=int, default=0, choices=(0, 1), help="divide by N - ddof")
    stats.add_argument("--top", type=positive_int, default=10, help="how many eigenvalues to print")
    add_device_argument(stats, "accumulate")
    stats.add_argument("--precision", default="ieee", choices=PRECISIONS, help="GPU product mode")
    add_scale_argument(stats)
    stats.add_argument("--no-plot", action="store_true", help="skip the PNG")
    stats.add_argument("--quiet", action="store_true", help="no progress bar")
    stats.set_defaults(run=run)
