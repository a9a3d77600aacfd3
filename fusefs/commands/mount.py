"""``nommufs mount``: serve an image through FUSE (see :mod:`fusefs.fuse`)."""

from __future__ import annotations

import argparse
import functools
import os

from fusefs.commands._common import (
    add_image_arguments,
    memory_from_args,
    open_from_args,
    parse_size,
)

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
        help="comma-separated FUSE mount options (e.g. allow_other); fsname= and subtype= "
        "replace nommufs's",
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
        help="write the memory counters (arena, page cache, copies) and the daemon's pid "
        "to FILE as JSON when the mount is ready, on SIGUSR1 and after unmounting",
    )
    parser.add_argument(
        "--log",
        metavar="FILE",
        help="append the daemon's log to FILE (corrupt data met through the mount is "
        "logged there as a WARNING naming the path and the nid)",
    )
    add_image_arguments(parser)
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")


def run(args: argparse.Namespace) -> int:
    # trio and pyfuse3 load only for this command: they cost every other one 0.1 s
    from fusefs.fuse import serve

    memory_from_args(args)  # a bad --arena fails here, before any fork
    # and a missing or unreadable IMAGE too, named as the IMAGE
    os.close(os.open(args.image, os.O_RDONLY | os.O_CLOEXEC))
    options = [o for group in args.options for o in group.split(",")]
    return serve(
        functools.partial(open_from_args, args),
        args.mountpoint,
        options=options,
        threads=args.threads,
        foreground=args.foreground,
        readahead=args.readahead,
        stats_path=args.stats,
        log_path=args.log,
    )
