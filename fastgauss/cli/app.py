"""The ``fastgauss`` command: one module per subcommand, each with ``add_parser(commands)``.

    stats      mean, covariance and eigendecomposition of a dataset      (fastgauss.cli.stats)
    train      train a small EDM model and measure it                    (fastgauss.cli.train)
    demo       the paper's finding on a bundled dataset                  (fastgauss.cli.demo)
    reproduce  the paper's sweeps                                         (fastgauss.cli.reproduce)
    sample     sample a model, with Gaussian teleportation               (fastgauss.cli.sample)
    analyze    your own model against the Gaussian and memorizing denoisers (fastgauss.cli.analyze)

A mistake is one line on stderr and exit status 2 (fastgauss.cli.common.UsageError).
"""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from . import analyze
from . import demo
from . import reproduce
from . import sample
from . import stats
from . import train
from .common import Parser, UsageError

#: The subcommands in the order ``fastgauss --help`` lists them.
COMMANDS = (stats, train, demo, reproduce, sample, analyze)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fastgauss", description="Hidden Gaussian structure of diffusion models.")
    parser.add_argument("--version", action="version", version=f"fastgauss {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(commands)
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
