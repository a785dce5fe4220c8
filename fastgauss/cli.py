"""The ``fastgauss`` command.

Every subcommand is a ``_add_<name>(commands)`` function that builds its parser and a ``_<name>(args)``
that runs it; ``build_parser`` lists them. A user's mistake (a bad option value, a dataset that
is not there, a device this machine lacks) prints one line naming the option and exits 2, with
no traceback: option values are checked by the argparse ``type=`` functions below
(``positive_int``, ``device_type``, ...), and checks that need the data raise :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from . import __version__
from ._core.device import check_device
from .data import SCALES, dataset_names, load_dataset
from .moments import PRECISIONS, Moments
from .analyze_cli import add_parser as _add_analyze
from .sample_cli import add_parser as _add_sample
from .diagnostics.spectrum import components_for_variance, plot_spectrum

DEFAULT_OUT = Path("fastgauss-out")


class UsageError(Exception):
    """A user's mistake found after parsing (e.g. a size larger than the dataset): one line, exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block) and every default shown in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# ---------------------------------------------------------------- option types

def int_at_least(low: int):
    """argparse type: an integer >= low, e.g. ``type=int_at_least(1)``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def device_type(text: str) -> str:
    """argparse type: 'cpu', 'cuda' or 'cuda:N' that exists on this machine."""
    try:
        device = check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("device: ")) from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"expected 'cpu', 'cuda' or 'cuda:N', got {text!r}")
    return str(device)


def int_list(low: int):
    """argparse type: a non-empty comma-separated list of integers >= low, e.g. 64,256,1797."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
        small = [v for v in values if v < low]
        if small:
            raise argparse.ArgumentTypeError(f"every value must be an integer >= {low}, got {small[0]}")
        return values
    parse.__name__ = "list"
    return parse


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _add_device_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--device", type=device_type, default=default_device(),
                        help=f"where to {what}: cpu, cuda or cuda:N (default: cuda when this machine has it)")


def _add_scale_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", choices=SCALES, default=None,
                        help="range of a float .npy/.npz dataset, mapped onto [-1, 1] (default: already in [-1, 1])")


def _load(args, option: str = "--dataset") -> torch.Tensor:
    source = getattr(args, "dataset")
    try:
        return load_dataset(source, limit=getattr(args, "limit", None), scale=args.scale)
    except ValueError as exc:
        raise UsageError(f"{option} {source}: {exc}") from None


def _is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _say(*args, **kwargs) -> None:
    """print, on rank 0 only under torchrun."""
    if _is_main_process():
        print(*args, **kwargs)


# ----------------------------------------------------------------------- stats

def _stats(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    data = _load(args, "dataset")
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


def _add_stats(commands) -> None:
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
    _add_device_argument(stats, "accumulate")
    stats.add_argument("--precision", default="ieee", choices=PRECISIONS, help="GPU product mode")
    _add_scale_argument(stats)
    stats.add_argument("--no-plot", action="store_true", help="skip the PNG")
    stats.add_argument("--quiet", action="store_true", help="no progress bar")
    stats.set_defaults(run=_stats)


# ----------------------------------------------------------------------- train

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


def _check_size(option: str, n: int, data: torch.Tensor, source) -> None:
    if n > data.shape[0]:
        raise UsageError(f"{option} {n}: the dataset {source} has only {data.shape[0]} samples")


def _train_run(args: argparse.Namespace) -> int:
    from ._core.plots import plot_training_curve
    from .edm.train import TrainConfig, Trainer

    data = _load(args)
    if args.n is not None:
        _check_size("--n", args.n, data, args.dataset)
    config = TrainConfig(dataset=args.dataset, n=args.n, width=args.width, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
                         scale=args.scale,
                         out=str(args.out or DEFAULT_OUT / f"train-{Path(args.dataset).stem}-n{args.n or 'all'}-w{args.width}"))
    checkpoint = Path(config.out) / "checkpoint.pt"
    if args.resume:
        if not checkpoint.exists():
            raise UsageError(f"--resume: no checkpoint at {checkpoint} to continue from (leave out --resume to "
                             "start a new run, or pass the run folder with --out)")
        trainer = Trainer.resume(checkpoint, config, data, device=args.device)
        if trainer.step >= args.steps:
            raise UsageError(f"--steps {args.steps}: the checkpoint {checkpoint} is already at step {trainer.step}; "
                             "pass a larger --steps to continue")
        _say(f"resuming {checkpoint} at step {trainer.step}")
    else:
        trainer = Trainer(config, data, device=args.device)
    try:
        records = trainer.run(progress=not args.quiet)
    except FloatingPointError as exc:
        raise UsageError(f"{exc}; try a smaller --lr (this run: --lr {args.lr:g})") from None
    if not _is_main_process():
        return 0
    if records:
        last = records[-1]
        print(f"step {last['step']}: GL score {last['gl_score']:.3f} (fresh N(mu, Sigma) samples: "
              f"{last['gl_score_gaussian']:.3f}), memorization ratio {last['memorization_ratio']:.3f}")
    log = Path(config.out) / "log.jsonl"
    written = [str(checkpoint), str(log)]
    history = [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.exists() else []
    if history:
        try:
            written.append(str(plot_training_curve(Path(config.out) / "curve.png", history)))
        except ImportError:
            print("(install fastgauss[plot] for a curve of the measurements)")
    print(f"wrote {', '.join(written)}")
    return 0


def _add_model_arguments(parser: argparse.ArgumentParser, *, steps: int) -> None:
    """What every training command takes: the data, the model's capacity and the training length."""
    parser.add_argument("--dataset", default="digits", help="bundled name or path (as for stats)")
    _add_scale_argument(parser)
    parser.add_argument("--width", type=int_at_least(8), default=32, help="UNet channel width (capacity), a multiple of 8")
    parser.add_argument("--steps", type=positive_int, default=steps, help="training steps")


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a small EDM model and measure it against the references",
                                description="Train an EDM model (SmallUNet) on a dataset, measuring every "
                                            "--eval-every steps its distance to the Gaussian and memorizing "
                                            "denoisers, its linearity and its samples' memorization; writes "
                                            "checkpoint.pt, log.jsonl and curve.png to the run folder.")
    _add_model_arguments(train, steps=4000)
    train.add_argument("--n", "--train-size", dest="n", type=int_at_least(2),
                       help="training-set size (a deterministic subset; default: all); under torchrun write "
                            "--train-size, since torchrun reads an abbreviated --n as one of its own options")
    train.add_argument("--batch-size", type=positive_int, default=128, help="images per training step")
    train.add_argument("--lr", type=positive_float, default=2e-3, help="Adam learning rate (after warm-up)")
    train.add_argument("--seed", type=int, default=0, help="seed of the subset, the weights, batches and noise")
    train.add_argument("--eval-every", type=positive_int, default=1000, help="steps between measurements")
    train.add_argument("--out", help="run folder (default: fastgauss-out/train-DATASET-nN-wWIDTH)")
    train.add_argument("--resume", action="store_true", help="continue from the run folder's checkpoint")
    _add_device_argument(train, "train and measure")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)


# ------------------------------------------------------------------------ demo

def _demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    started = time.perf_counter()
    data = _load(args)
    _check_size("--small-n", args.small_n, data, args.dataset)
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


def _add_demo(commands) -> None:
    demo = commands.add_parser("demo", help="the paper's finding on a bundled dataset: report folder",
                               description="Train a memorizing (small subset) and a generalizing (full set) "
                                           "model and write a report comparing them with the Gaussian and "
                                           "memorizing denoisers, with each model's verdict and its evidence.")
    _add_model_arguments(demo, steps=3000)
    demo.add_argument("--small-n", type=int_at_least(2), default=64, help="training-set size of the memorizing model")
    demo.add_argument("--samples", type=positive_int, default=64,
                      help="samples for the GL score and memorization ratio")
    demo.add_argument("--out", default=str(DEFAULT_OUT / "demo"), help="report folder")
    _add_device_argument(demo, "train and measure")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)


# ------------------------------------------------------------------- reproduce

def _reproduce(args: argparse.Namespace) -> int:
    from .reproduce import run_sweep

    data = _load(args)
    for n in args.sizes:
        _check_size("--sizes", n, data, args.dataset)
    folder = run_sweep(args.dataset, args.sizes, args.widths, args.steps, out=args.out, samples=args.samples,
                       progress=not args.quiet, device=args.device, data=data, scale=args.scale)
    print((folder / "sweep.md").read_text())
    print(f"wrote {folder / 'sweep.json'}, {folder / 'sweep.md'} and {folder / 'sweep.png'}")
    return 0


def _add_reproduce(commands) -> None:
    sweep = commands.add_parser("reproduce", help="the paper's sweeps: training-set size, width, training length",
                                description="Train every combination of --sizes, --widths and --steps and report "
                                            "each model's verdict (memorizes, undertrained or generalizes) with "
                                            "its evidence.")
    sweep.add_argument("--dataset", default="digits", help="bundled name or path (a zip for CIFAR-10 or FFHQ)")
    _add_scale_argument(sweep)
    sweep.add_argument("--sizes", type=int_list(2), default=[64, 256, 1797],
                       help="training-set sizes (each from 2 to the dataset's size), e.g. 64,256,1797")
    sweep.add_argument("--widths", type=int_list(8), default=[32], help="UNet widths (multiples of 8), e.g. 16,32,64")
    sweep.add_argument("--steps", type=int_list(1), default=[3000], help="training lengths, e.g. 1000,3000")
    sweep.add_argument("--samples", type=positive_int, default=64,
                       help="samples for the GL score and memorization ratio")
    sweep.add_argument("--out", default=str(DEFAULT_OUT / "reproduce"), help="report folder")
    _add_device_argument(sweep, "train and measure")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(run=_reproduce)


# ---------------------------------------------------------------------- parser

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastgauss", description="Hidden Gaussian structure of diffusion models.")
    parser.add_argument("--version", action="version", version=f"fastgauss {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # One line per command; a command that lives in its own module registers here the same way:
    # `from .<module> import add_parser as _add_<name>` at the top, then `_add_<name>(commands)` below.
    _add_stats(commands)
    _add_train(commands)
    _add_demo(commands)
    _add_reproduce(commands)
    _add_sample(commands)
    _add_analyze(commands)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    prog = f"fastgauss {args.command}"
    try:
        return args.run(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, FloatingPointError) as exc:
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
