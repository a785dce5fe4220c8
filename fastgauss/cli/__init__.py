"""The ``fastgauss`` command line (``fastgauss.cli.main``); one module per subcommand."""

from .app import build_parser, main

__all__ = ["build_parser", "main"]
