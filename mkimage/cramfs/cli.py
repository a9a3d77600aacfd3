"""``nommufs mkimage cramfs [options] SRC OUT`` with mkcramfs / mkfs.cramfs spellings."""

from __future__ import annotations

import argparse
import sys
import time

from fusefs.cmdline import verbosity
from mkimage.errors import BuildError
from mkimage.tree import ScanOptions, atomic_output, scan

NAME = "cramfs"
HELP = "build a cramfs image (zlib, optional execute-in-place)"
_OTHER_ORDER = {"little": "big", "big": "little"}


def _compressor(text: str) -> int:
    algo, _, level = text.partition(",")
    if algo != "zlib":
        raise argparse.ArgumentTypeError(f"cramfs compresses with zlib only, not {algo!r}")
    if not level:
        return 6
    if not level.isdigit() or not 0 <= int(level) <= 9:
        raise argparse.ArgumentTypeError(f"zlib level {level!r} is not 0..9")
    return int(level)


def _block_size(text: str) -> int:
    if text != "4096":
        raise argparse.ArgumentTypeError(
            f"block size {text}: cramfs images for Linux use the 4096-byte page size only"
        )
    return 4096


def _edition(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"edition {text!r} is not a number") from None
    if not 0 <= value < 1 << 32:
        raise argparse.ArgumentTypeError(f"edition {text} does not fit 32 bits")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC", help="source directory")
    parser.add_argument("out", metavar="OUT", help="image file to write")
    parser.add_argument(
        "-b", dest="block_size", type=_block_size, default=4096, help="block size (4096 only)"
    )
    parser.add_argument("-e", dest="edition", type=_edition, default=0, help="edition number")
    parser.add_argument("-n", dest="name", default="Compressed", help="volume name (16 bytes)")
    order = parser.add_mutually_exclusive_group()
    order.add_argument(
        "-N", dest="endian", choices=("little", "big", "host"), default="host", help="byte order"
    )
    # mkcramfs as Buildroot and OpenWrt patch it: -r is "reverse endian-ness"
    order.add_argument(
        "-r", dest="endian", action="store_const", const="reverse",
        help="the byte order opposite to this machine's (mkcramfs -r)",
    )  # fmt: skip
    parser.add_argument("-z", dest="holes", action="store_true", help="make explicit holes")
    parser.add_argument(
        "-p", dest="pad", action="store_true", help="pad by 512 bytes for boot code"
    )
    parser.add_argument(
        "-D", "--device-table", dest="device_table", metavar="FILE", help="makedevs device table"
    )
    parser.add_argument(
        "-q",
        "--all-root",
        dest="all_root",
        action="store_true",
        help="make all files owned by root",
    )
    parser.add_argument(
        "-x", dest="ext_pointers", action="store_true", help="extended block pointers (raw blocks)"
    )
    parser.add_argument(
        "-X",
        dest="xip",
        action="count",
        default=0,
        help="execute-in-place for ELF programs or --xip files (twice: MMU page alignment)",
    )
    parser.add_argument(
        "--xip",
        dest="xip_globs",
        action="append",
        default=[],
        metavar="GLOB",
        help="files to store XIP",
    )
    parser.add_argument(
        "-c", dest="level", type=_compressor, default=6, metavar="zlib[,LEVEL]", help="compression"
    )
    parser.add_argument("--exclude-path", action="append", default=[], metavar="PATH")
    parser.add_argument("--exclude-regex", action="append", default=[], metavar="REGEX")


def run(args: argparse.Namespace) -> int:
    # here, not at the top: `mkimage erofs` imports this module for its help only
    from mkimage.cramfs.writer import CramfsOptions, build_cramfs

    if args.xip_globs and not args.xip:
        raise BuildError("--xip needs -X")
    endian = {"host": sys.byteorder, "reverse": _OTHER_ORDER[sys.byteorder]}.get(
        args.endian, args.endian
    )
    name = args.name.encode()
    if len(name) > 16:
        print("warning: volume name truncated to 16 bytes", file=sys.stderr)
    opts = CramfsOptions(
        endian=endian,
        edition=args.edition,
        name=name[:16],
        holes=args.holes,
        pad=args.pad,
        ext_pointers=args.ext_pointers or bool(args.xip),
        xip=args.xip,
        xip_globs=tuple(args.xip_globs),
        level=args.level,
    )
    scan_opts = ScanOptions(
        exclude_paths=tuple(args.exclude_path),
        exclude_regex=tuple(args.exclude_regex),
        all_root=args.all_root,
        device_table=args.device_table,
        new_node_mtime_ns=time.time_ns(),
    )

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr)

    with scan(args.src, scan_opts) as tree:
        image, report = build_cramfs(tree, opts, warn)
    with atomic_output(args.out) as f:
        f.write(image)
    if verbosity(args):  # -v, as mkfs.cramfs -v
        print(
            f"{args.out}: {report.size} bytes, {report.files} files, {report.blocks} blocks,"
            f" {report.holes} holes, {report.raw_blocks} raw blocks,"
            f" {len(report.xip_files)} XIP files"
        )
    return 0
