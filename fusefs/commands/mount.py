"""``nommufs mount``: serve an image through FUSE (see :mod:`fusefs.fuse`)."""

from __future__ import annotations

import argparse
import functools

from fusefs.commands._common import add_image_arguments, open_from_args, parse_size

NAME = "mount"
HELP = "mount an image through FUSE (read-only)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-f", dest="foreground", action="store_true", help="stay in the foreground")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTS",
        help="comma-separated FUSE mount options (e.g. allow_other)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        metavar="N",
        help="decompress in up to N threads at once (default: 2)",
    )
    parser.add_argument(
        "--readahead",
        type=parse_size,
        default=1 << 20,
        metavar="SIZE",
        help="kernel readahead on the mount, as root (default: 1M; 0: the kernel's 128K)",
    )
    parser.add_argument(
        "--stats",
        metavar="FILE",
        help="write the memory counters (arena, page cache, copies) to FILE as JSON "
        "on SIGUSR1 and after unmounting",
    )
    add_image_arguments(parser)
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")


def run(args: argparse.Namespace) -> int:
    from fusefs.commands._common import memory_from_args
    from fusefs.fuse import serve

    memory_from_args(args)  # a bad --arena fails here, before any fork
    options = [o.strip() for group in args.options for o in group.split(",")]
    return serve(
        functools.partial(open_from_args, args),
        args.mountpoint,
        options=options,
        threads=args.threads,
        foreground=args.foreground,
        readahead=args.readahead,
        stats_path=args.stats,
    )
