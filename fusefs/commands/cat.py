"""``nommufs cat``: copy a file of an image to standard output."""

from __future__ import annotations

import argparse
import sys

from fusefs.commands._common import add_image_arguments, open_from_args
from fusefs.errors import InvalidArgumentError, IsADirectoryFsError
from fusefs.vfs import resolve

NAME = "cat"
HELP = "print a file of an image"
CHUNK = 1 << 20


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_arguments(parser)
    parser.add_argument("path", metavar="PATH", help="file inside the image")


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_from_args(args) as fs:
        ino = resolve(fs, args.path, follow_last=True)
        attr = fs.getattr(ino)
        if attr.is_dir:
            raise IsADirectoryFsError(f"{args.path}: is a directory")
        if not attr.is_reg:
            raise InvalidArgumentError(f"{args.path}: not a regular file")
        pos = 0
        while pos < attr.size:
            data = fs.read(ino, pos, min(CHUNK, attr.size - pos))
            if not data:
                break
            out.write(data)
            pos += len(data)
        out.flush()
    return 0
