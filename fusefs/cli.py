"""``nommufs``: one command, one subcommand per job.

A subcommand is a module (``fusefs/commands/<name>.py``, or ``mkimage/cli.py``
with a subcommand per format) following :class:`fusefs.cmdline.Command`; it is
listed in :data:`COMMANDS` only once it works.  Everything common to the
command lines (``-V``, ``-v``, ``-d``, exit statuses, signals) is in
:mod:`fusefs.cmdline`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from fusefs.cmdline import Command, Parser, build_parser, exit_process, run_main
from fusefs.commands import budget, cat, extract, fsck, inspect, ls, mount, umount
from mkimage import cli as mkimage

# In the order `nommufs -h` lists them.
COMMANDS: Final[tuple[Command, ...]] = (
    mount, umount, ls, cat, extract, inspect, fsck, budget, mkimage,
)  # fmt: skip


def parser() -> Parser:
    """The ``nommufs`` command line (also used to generate its manual page)."""
    return build_parser(
        "nommufs",
        "Compressed read-only filesystems (EROFS, cramfs/XIP) for tiny Linux systems.",
        COMMANDS,
        dest="command",
        metavar="COMMAND",
    )


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(parser(), argv, dest="command")


def entry() -> None:
    """The ``nommufs`` console script: :func:`main`, then the process ends
    (:func:`~fusefs.cmdline.exit_process`)."""
    exit_process(main())


if __name__ == "__main__":
    entry()
