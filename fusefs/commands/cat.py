"""``nommufs cat``: copy a file of an image to standard output.

When standard output is a regular file (``nommufs cat IMG PATH > file``),
the holes the image's index declares are seeked over, as ``cp --sparse``
does: a file that claims 8 TiB of one hole costs nothing.  Into a pipe or
a terminal the holes are written as zeros, as cat(1) writes them.

Into a regular file, the data the file claims (holes excluded) must fit in
the space free on the output's filesystem, or nothing is written and a
one-line error says so: a 12 KiB image can claim 3.9 GiB.  Into a pipe the
bytes stream, and the reader decides when it has had enough."""

from __future__ import annotations

import argparse
import fcntl
import os
import stat
import sys
from typing import BinaryIO

from fusefs.commands._common import (
    CHUNK,
    add_image_arguments,
    check_room,
    data_bytes,
    open_from_args,
    read_data,
)
from fusefs.commands.extract import write_sparse
from fusefs.errors import InvalidArgumentError, IsADirectoryFsError
from fusefs.vfs import Filesystem, Ino, resolve

NAME = "cat"
HELP = "print a file of an image"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_arguments(parser)
    parser.add_argument("path", metavar="PATH", help="file inside the image")


def _seekable_file(fd: int) -> bool:
    """A regular file we may seek in (not opened for appending)."""
    return stat.S_ISREG(os.fstat(fd).st_mode) and not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND


def _stream(fs: Filesystem, ino: Ino, size: int, out: BinaryIO) -> None:
    """Every byte in order, holes as zeros."""
    done = 0
    for pos, data in read_data(fs, ino, size):
        while done < pos:
            n = min(CHUNK, pos - done)
            out.write(bytes(n))
            done += n
        out.write(data)
        done = pos + len(data)
    while done < size:
        n = min(CHUNK, size - done)
        out.write(bytes(n))
        done += n


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    with open_from_args(args) as fs:
        ino = resolve(fs, args.path, follow_last=True)
        attr = fs.getattr(ino)
        if attr.is_dir:
            raise IsADirectoryFsError(f"{args.path}: is a directory")
        if not attr.is_reg:
            raise InvalidArgumentError(f"{args.path}: not a regular file")
        out.flush()
        fd = out.fileno()
        if _seekable_file(fd):
            check_room(data_bytes(fs, ino), os.fstatvfs(fd), args.path, "the output's filesystem")
            base = os.lseek(fd, 0, os.SEEK_CUR)
            write_sparse(fd, read_data(fs, ino, attr.size), base)
            os.ftruncate(fd, max(base + attr.size, os.fstat(fd).st_size))
            os.lseek(fd, base + attr.size, os.SEEK_SET)
        else:
            _stream(fs, ino, attr.size, out)
            out.flush()
    return 0
