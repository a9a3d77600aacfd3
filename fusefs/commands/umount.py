"""``nommufs umount``: unmount a nommufs FUSE mount, live or stale (see
:mod:`fusefs.mounttab`)."""

from __future__ import annotations

import argparse

from fusefs.mounttab import unmount

NAME = "umount"
HELP = "unmount a FUSE mount made by `nommufs mount` (also one whose daemon died)"


LAZY_HELP = "lazy unmount: detach now, finish when no longer busy (fusermount3 -z)"
FORCE_HELP = "unmount even a mount that is not nommufs's (squashfuse, a kernel mount, ...)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-z", dest="lazy", action="store_true", help=LAZY_HELP)
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")


def run(args: argparse.Namespace) -> int:
    unmount(args.mountpoint, lazy=args.lazy, force=args.force)
    return 0
