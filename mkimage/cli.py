"""``nommufs mkimage FORMAT ...`` and ``python -m mkimage FORMAT ...``.

One subcommand per image format; each format module (listed in
:data:`FORMATS`) exposes ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``, like the ``nommufs`` subcommands themselves.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Final, NoReturn, Protocol, cast

from fusefs import __version__
from fusefs.errors import FsError

NAME: Final = "mkimage"
HELP: Final = "build an image (EROFS or cramfs) from a directory"

# Format modules, in the order `nommufs mkimage -h` lists them.
FORMATS: Final[tuple[str, ...]] = ("mkimage.erofs.cli", "mkimage.cramfs.cli")


class FormatCommand(Protocol):
    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-parser per format to ``parser`` (``nommufs mkimage``)."""
    sub = parser.add_subparsers(dest="format", metavar="FORMAT")
    sub.required = True
    for modname in FORMATS:
        mod = cast(FormatCommand, importlib.import_module(modname))
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        p.add_argument("--version", action="version", version=f"nommufs {__version__}")
        mod.add_arguments(p)
        p.set_defaults(_format_run=mod.run)


def run(args: argparse.Namespace) -> int:
    """Run the chosen format's builder."""
    return int(args._format_run(args))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mkimage``: the same as ``nommufs mkimage``."""
    parser = _Parser(prog="mkimage", description=HELP)
    parser.add_argument("--version", action="version", version=f"nommufs {__version__}")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FsError, OSError) as e:
        print(f"mkimage {args.format}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
