"""``nommufs``: one command, one subcommand per job.

A subcommand lives in its own module (``fusefs/commands/<name>.py`` or
``mkimage/cli.py``) exposing ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; it is listed in :data:`COMMANDS` only once it works.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Final, NoReturn, Protocol, cast

from fusefs import __version__
from fusefs.errors import FsError

# Modules providing subcommands, in the order `nommufs -h` lists them.
COMMANDS: Final[tuple[str, ...]] = (
    "fusefs.commands.mount",
    "fusefs.commands.umount",
    "fusefs.commands.ls",
    "fusefs.commands.cat",
    "fusefs.commands.extract",
    "fusefs.commands.inspect",
    "fusefs.commands.fsck",
    "fusefs.commands.budget",
    "mkimage.cli",
)


class Command(Protocol):
    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (``nommufs ls: error: ...``), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="nommufs",
        description="Compressed read-only filesystems (EROFS, cramfs/XIP) for tiny Linux systems.",
    )
    parser.add_argument("--version", action="version", version=f"nommufs {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log more (repeatable)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for modname in COMMANDS:
        mod = cast(Command, importlib.import_module(modname))
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        p.add_argument("--version", action="version", version=f"nommufs {__version__}")
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="nommufs: %(levelname)s: %(message)s",
    )
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return int(run(args))
    except FsError as e:
        print(f"nommufs {args.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"nommufs {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
