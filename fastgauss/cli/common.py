"""What every ``fastgauss`` command shares: the one-line error, option types and the data loader.

A user's mistake (a bad option value, a dataset that is not there, a device this machine lacks)
prints one line naming the option and exits 2, with no traceback: option values are checked by the
argparse ``type=`` functions below (``positive_int``, ``device_type``, ...), and checks that need
the data raise :class:`UsageError`.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from .._core.device import check_device
from .._core.sigma import level_list
from ..data import SCALES, load_dataset

DEFAULT_OUT = Path("fastgauss-out")


class UsageError(Exception):
    """A user's mistake found after parsing (e.g. a size larger than the dataset): one line, exit 2."""


class Parser(argparse.ArgumentParser):
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


def number_list(kind: type, low=None, example: str = ""):
    """argparse type: a non-empty comma-separated list of ``kind`` (int or float), each >= low
    when given, e.g. ``number_list(int, 2)`` for 64,256,1797 or ``number_list(float)`` for 0.1,0.5,2."""
    noun = "integers" if kind is int else "numbers"
    hint = f", e.g. {example}" if example else ""

    def parse(text: str) -> list:
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {noun}{hint}, got {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one of the {noun}{hint}, got {text!r}")
        small = [v for v in values if low is not None and v < low]
        if small:
            raise argparse.ArgumentTypeError(f"every value must be >= {low}, got {small[0]}")
        return values
    parse.__name__ = "list"
    return parse


def noise_levels(text: str) -> list[float]:
    """argparse type: a comma-separated list of noise levels, each finite and > 0 (the rule of
    ``fastgauss._core.sigma.level_list``), e.g. 0.1,0.5,2."""
    values = number_list(float, example="0.1,0.5,2")(text)
    try:
        return level_list(values, "levels").tolist()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("levels: ")) from None


noise_levels.__name__ = "noise levels"


def int_list(low: int):
    """argparse type: a non-empty comma-separated list of integers >= low, e.g. 64,256,1797."""
    return number_list(int, low)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_device_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--device", type=device_type, default=default_device(),
                        help=f"where to {what}: cpu, cuda or cuda:N (default: cuda when this machine has it)")


def add_scale_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scale", choices=SCALES, default=None,
                        help="range of a float .npy/.npz dataset, mapped onto [-1, 1] (default: already in [-1, 1])")


def add_run_arguments(parser: argparse.ArgumentParser, *, out: str | None, out_help: str, samples: bool = True) -> None:
    """What every training command takes after its own options: ``--samples`` (with ``samples``),
    ``--out`` (default ``out``), ``--device`` and ``--quiet``."""
    if samples:
        parser.add_argument("--samples", type=positive_int, default=64,
                            help="samples for the GL score and memorization ratio")
    parser.add_argument("--out", default=out, help=out_help)
    add_device_argument(parser, "train and measure")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def load_data(args, option: str = "--dataset") -> torch.Tensor:
    source = getattr(args, "dataset")
    try:
        return load_dataset(source, limit=getattr(args, "limit", None), scale=args.scale)
    except ValueError as exc:
        raise UsageError(f"{option} {source}: {exc}") from None


def is_main_process() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def say(*args, **kwargs) -> None:
    """print, on rank 0 only under torchrun."""
    if is_main_process():
        print(*args, **kwargs)


def check_size(option: str, n: int, data: torch.Tensor, source) -> None:
    if n > data.shape[0]:
        raise UsageError(f"{option} {n}: the dataset {source} has only {data.shape[0]} samples")


def add_model_arguments(parser: argparse.ArgumentParser, *, steps: int) -> None:
    """What every training command takes: the data, the model's capacity and the training length."""
    parser.add_argument("--dataset", default="digits", help="bundled name or path (as for stats)")
    add_scale_argument(parser)
    parser.add_argument("--width", type=int_at_least(8), default=32, help="UNet channel width (capacity), a multiple of 8")
    parser.add_argument("--steps", type=positive_int, default=steps, help="training steps")
