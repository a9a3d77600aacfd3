"""``nommufs mkimage FORMAT ...`` and ``python -m mkimage FORMAT ...``.

A command (:class:`fusefs.cmdline.Command`) with one subcommand per image
format, each a module of the same shape (:data:`FORMATS`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Final

from fusefs.cmdline import Command, Parser, add_commands, build_parser, run_chosen, run_main
from mkimage.cramfs import cli as cramfs
from mkimage.erofs import cli as erofs

NAME: Final = "mkimage"
HELP: Final = "build an image (EROFS or cramfs) from a directory"

# In the order `nommufs mkimage -h` lists them.
FORMATS: Final[tuple[Command, ...]] = (erofs, cramfs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per format to ``parser`` (``nommufs mkimage``)."""
    add_commands(parser, FORMATS, dest="format", metavar="FORMAT")


def run(args: argparse.Namespace) -> int:
    """Run the chosen format's builder."""
    return run_chosen(args, "format")


def parser() -> Parser:
    """``python -m mkimage``'s command line."""
    return build_parser("mkimage", HELP, FORMATS, dest="format", metavar="FORMAT")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mkimage``: the same as ``nommufs mkimage``."""
    return run_main(parser(), argv, dest="format")
