"""The ``fastgauss`` command."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from .data import dataset_names, load_dataset
from .moments import PRECISIONS, Moments
from .spectrum import components_for_variance, plot_spectrum

DEFAULT_OUT = Path("fastgauss-out")


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _stats(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    data = load_dataset(args.dataset, limit=args.limit)
    name = Path(str(args.dataset)).stem if args.dataset not in dataset_names() else args.dataset
    out = Path(args.out) if args.out else DEFAULT_OUT / f"stats-{name}.pt"
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


def _init_distributed(device: str) -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return False
    if device.startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return True


def _train(args: argparse.Namespace) -> int:
    if _init_distributed(args.device):
        import torch.distributed as dist

        try:
            return _train_run(args)
        finally:
            dist.destroy_process_group()
    return _train_run(args)


def _train_run(args: argparse.Namespace) -> int:
    from .train import TrainConfig, Trainer

    config = TrainConfig(dataset=args.dataset, n=args.n, width=args.width, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
                         out=str(args.out or DEFAULT_OUT / f"train-{Path(args.dataset).stem}-n{args.n or 'all'}-w{args.width}"))
    checkpoint = Path(config.out) / "checkpoint.pt"
    if args.resume and checkpoint.exists():
        trainer = Trainer.resume(checkpoint, config, device=args.device)
        print(f"resuming {checkpoint} at step {trainer.step}")
    else:
        trainer = Trainer(config, device=args.device)
    records = trainer.run(progress=not args.quiet)
    if records:
        last = records[-1]
        print(f"step {last['step']}: GL score {last['gl_score']:.3f}, memorization ratio {last['memorization_ratio']:.3f}")
    print(f"wrote {checkpoint} and {Path(config.out) / 'log.jsonl'}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    started = time.perf_counter()
    config = DemoConfig(dataset=args.dataset, small_n=args.small_n, width=args.width, steps=args.steps,
                        samples=args.samples, out=str(args.out))
    out = run_demo(config, progress=not args.quiet)
    summary = json.loads((out / "summary.json").read_text())
    for name, m in summary["models"].items():
        print(f"{name:>12} (N={m['n']}): GL score {m['gl_score']:.3f}, memorization ratio {m['memorization_ratio']:.3f}, "
              f"mean RMSE to Gaussian {sum(m['rmse_gaussian']) / len(m['rmse_gaussian']):.4f}")
    print(f"report: {out / 'summary.md'} (plots distances.png, samples.png; data summary.json)")
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser, *, steps: int) -> None:
    """What every training command takes: the data, the model's capacity and the training length."""
    parser.add_argument("--dataset", default="digits", help="bundled name or path (as for stats)")
    parser.add_argument("--width", type=int, default=32, help="UNet channel width (capacity)")
    parser.add_argument("--steps", type=int, default=steps, help="training steps")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import run_sweep

    folder = run_sweep(args.dataset, args.sizes, args.widths, args.steps, out=args.out, samples=args.samples,
                       progress=not args.quiet)
    print((folder / "sweep.md").read_text())
    print(f"wrote {folder / 'sweep.json'} and {folder / 'sweep.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastgauss", description="Hidden Gaussian structure of diffusion models.")
    commands = parser.add_subparsers(dest="command", required=True)
    stats = commands.add_parser(
        "stats", help="mean, covariance and eigendecomposition of a dataset",
        description="Stream a dataset through fastgauss.Moments and write mean, covariance and "
                    "eigendecomposition to a file (torch.save).")
    stats.add_argument("dataset", help=f"bundled ({', '.join(dataset_names())}) or a path: image folder, "
                                       "zip of images, .npy/.npz")
    stats.add_argument("--out", help=f"output file (default {DEFAULT_OUT}/stats-NAME.pt; a .png beside it)")
    stats.add_argument("--limit", type=int, help="use only the first N samples")
    stats.add_argument("--batch-size", type=int, default=1024)
    stats.add_argument("--rank", type=int, help="keep only the top RANK eigenpairs in the file")
    stats.add_argument("--ddof", type=int, default=0, choices=(0, 1), help="divide by N - ddof (default N)")
    stats.add_argument("--top", type=int, default=10, help="how many eigenvalues to print")
    stats.add_argument("--device", default=_default_device(), help="where to accumulate (default: cuda if present)")
    stats.add_argument("--precision", default="ieee", choices=PRECISIONS, help="GPU product mode")
    stats.add_argument("--no-plot", action="store_true", help="skip the PNG")
    stats.add_argument("--quiet", action="store_true", help="no progress bar")
    stats.set_defaults(run=_stats)

    train = commands.add_parser("train", help="train a small EDM model and measure it against the references",
                                description="Train an EDM model (SmallUNet) on a dataset, measuring every "
                                            "--eval-every steps its distance to the Gaussian and memorizing "
                                            "denoisers, its linearity and its samples' memorization.")
    _add_model_arguments(train, steps=4000)
    train.add_argument("--n", "--train-size", dest="n", type=int,
                       help="training-set size (a deterministic subset; default all); under torchrun write "
                            "--train-size, since torchrun reads an abbreviated --n as one of its own options")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=2e-3)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--eval-every", type=int, default=1000)
    train.add_argument("--out", help="run folder (checkpoint.pt, log.jsonl)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    train.add_argument("--device", default=_default_device())
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    demo = commands.add_parser("demo", help="the paper's finding on a bundled dataset: report folder",
                               description="Train a memorizing (small subset) and a generalizing (full set) "
                                           "model and write a report comparing them with the Gaussian and "
                                           "memorizing denoisers.")
    _add_model_arguments(demo, steps=3000)
    demo.add_argument("--small-n", type=int, default=64, help="training-set size of the memorizing model")
    demo.add_argument("--samples", type=int, default=64, help="samples for the GL score and memorization ratio")
    demo.add_argument("--out", default=str(DEFAULT_OUT / "demo"), help="report folder")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)

    sweep = commands.add_parser("reproduce", help="the paper's sweeps: training-set size, width, training length",
                                description="Train every combination of --sizes, --widths and --steps and report "
                                            "which regime (memorizing or generalizing) each model is in.")
    sweep.add_argument("--dataset", default="digits", help="bundled name or path (a zip for CIFAR-10 or FFHQ)")
    sweep.add_argument("--sizes", type=_ints, default=[64, 256, 1797], help="training-set sizes, e.g. 64,256,1797")
    sweep.add_argument("--widths", type=_ints, default=[32], help="UNet widths, e.g. 16,32,64")
    sweep.add_argument("--steps", type=_ints, default=[3000], help="training lengths, e.g. 1000,3000")
    sweep.add_argument("--samples", type=int, default=64)
    sweep.add_argument("--out", default=str(DEFAULT_OUT / "reproduce"))
    sweep.add_argument("--quiet", action="store_true")
    sweep.set_defaults(run=_reproduce)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "batch_size", 1) < 1:
        print("fastgauss: error: --batch-size must be at least 1", file=sys.stderr)
        return 2
    try:
        return args.run(args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as exc:
        print(f"fastgauss: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
