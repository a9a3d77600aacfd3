"""``nommufs inspect``: superblock, features and counts, one inode's layout, or
(``-S``) a summary of the files like ``dump.erofs -S``.

JSON (``--json``) gives numbers as numbers: ``mode``, checksums, flags; names
exactly (:func:`fusefs.names.json_name`).  Text escapes them (:mod:`fusefs.names`).  The
text output shows the keys of :data:`SHOWN_AS` as a reader expects them
(mode in octal, checksums and flags in hex).
"""

from __future__ import annotations

import argparse
import json
import stat
import sys
from collections import Counter
from typing import Any, Final

from fusefs.commands._common import add_image_arguments, open_from_args
from fusefs.names import one_line
from fusefs.vfs import Filesystem, resolve, walk

NAME = "inspect"
HELP = "show an image's superblock, features and counts, one inode's layout, or a summary"

# key -> how the text output shows its number
SHOWN_AS: Final[dict[str, str]] = {
    "mode": "#o", "checksum": "#010x", "crc": "#010x", "flags": "#x", "advise": "#x",
    "feature_compat": "#x", "feature_incompat": "#x",
}  # fmt: skip
TYPE_NAMES: Final[dict[int, str]] = {
    stat.S_IFREG: "regular", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
    stat.S_IFCHR: "char device", stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
}  # fmt: skip
HISTOGRAM_KIB: Final = tuple(1 << k for k in range(16))  # bucket bounds 1K .. 32M, as dump.erofs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--inode", metavar="PATH", help="show the inode at PATH instead")
    parser.add_argument(
        "-S", dest="summary", action="store_true",
        help="summary of the files (as dump.erofs -S): counts by type, sizes, compression, "
        "size histograms",
    )  # fmt: skip


def _histogram(sizes: list[int]) -> list[dict[str, Any]]:
    """Counts per size bucket: [0, 1K), [1K, 2K), ... [16M, 32M), [32M, ...)."""
    bounds = (0, *HISTOGRAM_KIB)
    rows = []
    for i, lo in enumerate(bounds):
        hi = bounds[i + 1] if i + 1 < len(bounds) else None
        n = sum(1 for s in sizes if s >= lo * 1024 and (hi is None or s < hi * 1024))
        rows.append({"from_kib": lo, "to_kib": hi, "count": n})
    return rows


def summary(fs: Filesystem) -> dict[str, Any]:
    """Counts by file type, total and per-file sizes, and how much smaller
    the files are in the image (:meth:`~fusefs.vfs.Filesystem.stored_bytes`)."""
    by_type: Counter[str] = Counter()
    original: list[int] = []
    on_disk: list[int] = []
    seen: set[int] = set()
    for item in walk(fs):
        if item.ino in seen:
            continue  # hard links: one inode
        seen.add(item.ino)
        by_type[TYPE_NAMES.get(stat.S_IFMT(item.attr.mode), "unknown")] += 1
        if item.attr.is_reg:
            original.append(item.attr.size)
            on_disk.append(fs.stored_bytes(item.ino))
    total, stored = sum(original), sum(on_disk)
    return {
        "format": fs.format_name,
        "image_bytes": fs.image.size,
        "inodes": len(seen),
        "by_type": {name: by_type.get(name, 0) for name in TYPE_NAMES.values()},
        "files_original_bytes": total,
        "files_on_disk_bytes": stored,
        "compress_rate": round(stored / total, 4) if total else None,
        "original_size_histogram": _histogram(original),
        "on_disk_size_histogram": _histogram(on_disk),
    }


def _shown(key: str, value: Any) -> Any:
    spec = SHOWN_AS.get(key)
    return format(value, spec) if spec and isinstance(value, int) else value


def _say(line: str) -> None:
    """One line of the text output; names from the image in it are escaped."""
    print(one_line(line))


def _print_text(data: Any, indent: str = "") -> None:
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, dict | list) and value:
                _say(f"{indent}{key}:")
                _print_text(value, indent + "  ")
            else:
                _say(f"{indent}{key}: {_shown(key, value)}")
    elif isinstance(data, list):
        for value in data:
            if isinstance(value, dict | list):
                _say(f"{indent}-")
                _print_text(value, indent + "  ")
            else:
                _say(f"{indent}- {value}")
    else:
        _say(f"{indent}{data}")


def _print_summary(s: dict[str, Any]) -> None:
    print(f"{'total inodes':<28}{s['inodes']}")
    for name, n in s["by_type"].items():
        print(f"{name + ' files':<28}{n}")
    print(f"{'original file bytes':<28}{s['files_original_bytes']}")
    print(f"{'on-disk file bytes':<28}{s['files_on_disk_bytes']}")
    rate = s["compress_rate"]
    print(f"{'compress rate':<28}{'-' if rate is None else f'{rate * 100:.2f}%'}")
    print(f"{'image bytes':<28}{s['image_bytes']}")
    for key, title in (("original_size_histogram", "original"), ("on_disk_size_histogram",
                                                                 "on-disk")):  # fmt: skip
        rows = s[key]
        files = sum(r["count"] for r in rows) or 1
        print(f"\n{title} file size distribution:\n  >=(KiB) .. <(KiB)      count   ratio")
        for r in rows:
            hi = "" if r["to_kib"] is None else r["to_kib"]
            share = r["count"] / files
            bar = "#" * round(40 * share)
            row = f"  {r['from_kib']:>7} .. {hi:<7} {r['count']:>9} {100 * share:6.2f}%"
            print(f"{row} |{bar:<40}|")


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as fs:
        if args.summary:
            data = summary(fs)
        elif args.inode is not None:
            data = fs.describe_inode(resolve(fs, args.inode))
        else:
            data = {"format": fs.format_name, **fs.describe()}
    if args.json:
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    elif args.summary:
        _print_summary(data)
    else:
        _print_text(data)
    return 0
