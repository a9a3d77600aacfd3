"""``nommufs ls``: list a directory of an image, like ls(1).

Names (and symlink targets) are shown escaped, as :mod:`fusefs.names` says:
one line per entry, whatever bytes the image holds."""

from __future__ import annotations

import argparse
import os
import stat
import sys
import time
from typing import BinaryIO

from fusefs.commands._common import add_image_arguments, open_from_args
from fusefs.names import escape
from fusefs.vfs import Attr, Filesystem, Ino, resolve, walk

NAME = "ls"
HELP = "list files in an image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-l", dest="long", action="store_true", help="long listing")
    parser.add_argument("-R", dest="recursive", action="store_true", help="list subdirectories too")
    parser.add_argument(
        "-a", dest="all", action="store_true", help="show names starting with '.', . and .. too"
    )
    add_image_arguments(parser)
    parser.add_argument(
        "path", metavar="PATH", nargs="?", default="/", help="path inside the image"
    )


def _shown(name: bytes) -> bytes:
    return escape(name).encode()


def long_line(fs: Filesystem, ino: Ino, attr: Attr, name: bytes) -> bytes:
    """One ``ls -l`` line for ``name``."""
    if stat.S_ISCHR(attr.mode) or stat.S_ISBLK(attr.mode):
        size = f"{os.major(attr.rdev)}, {os.minor(attr.rdev)}"
    else:
        size = str(attr.size)
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(attr.mtime_ns // 10**9))
    head = (
        f"{stat.filemode(attr.mode)} {attr.nlink:>3} {attr.uid:>5} {attr.gid:>5}"
        f" {size:>10} {when} "
    )
    line = head.encode() + _shown(name)
    if attr.is_lnk:
        line += b" -> " + _shown(fs.readlink(ino))
    return line


def _list_dir(fs: Filesystem, ino: Ino, args: argparse.Namespace, out: BinaryIO) -> None:
    for ent in fs.readdir(ino):
        if ent.name.startswith(b".") and not args.all:
            continue  # ls(1): dotfiles only with -a
        if args.long:
            out.write(long_line(fs, ent.ino, fs.getattr(ent.ino), ent.name) + b"\n")
        else:
            out.write(_shown(ent.name) + b"\n")


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_from_args(args) as fs:
        ino = resolve(fs, args.path)
        attr = fs.getattr(ino)
        if not attr.is_dir:
            name = os.fsencode(args.path).rstrip(b"/").rsplit(b"/", 1)[-1]
            out.write((long_line(fs, ino, attr, name) if args.long else _shown(name)) + b"\n")
            return 0
        if not args.recursive:
            _list_dir(fs, ino, args, out)
            return 0
        top = os.fsencode(args.path).rstrip(b"/") or b""
        first = True
        for item in walk(fs, ino):
            if not item.attr.is_dir:
                continue
            if not first:
                out.write(b"\n")
            first = False
            shown = (top + b"/" + item.path if item.path else top) or b"/"
            out.write(_shown(shown) + b":\n")
            _list_dir(fs, item.ino, args, out)
    return 0
