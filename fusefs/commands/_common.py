"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
from collections.abc import Iterable, Iterator

from fusefs.errors import CorruptImageError, FsError, InvalidArgumentError
from fusefs.vfs import (
    DEFAULT_ARENA_BYTES,
    MM_MODES,
    STRATEGIES,
    Filesystem,
    Ino,
    MemoryConfig,
    open_image,
)
from fusefs.vfs import parse_size as vfs_parse_size

log = logging.getLogger("nommufs")


def parse_size(text: str) -> int:
    """:func:`fusefs.vfs.parse_size` for argparse (its message, as a usage error)."""
    try:
        return vfs_parse_size(text)
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("simulated machine")
    g.add_argument("--mm", choices=MM_MODES, default="mmu", help="arena mode (default: mmu)")
    g.add_argument(
        "--decompress",
        choices=STRATEGIES,
        default="vmap",
        help="decompression strategy (default: vmap)",
    )
    g.add_argument(
        "--arena",
        type=parse_size,
        default=DEFAULT_ARENA_BYTES,
        metavar="SIZE",
        help="arena size, a multiple of 4 KiB (default: 64M)",
    )
    g.add_argument(
        "--xip-read",
        choices=("pagecache", "direct"),
        default="pagecache",
        help="cramfs XIP files: read() through the page cache as the kernel does (default), "
        "or straight from flash as a DAX filesystem would",
    )


def memory_from_args(args: argparse.Namespace) -> MemoryConfig:
    return MemoryConfig(
        mm=args.mm,
        decompress=args.decompress,
        arena_bytes=args.arena,
        xip_read=args.xip_read,
    )


def add_image_arguments(parser: argparse.ArgumentParser) -> None:
    """IMAGE, ``--offset`` and the simulated-machine options."""
    add_image_location(parser)
    add_memory_arguments(parser)


def add_image_location(parser: argparse.ArgumentParser) -> None:
    """IMAGE and ``--offset``: where the filesystem is."""
    parser.add_argument(
        "image", metavar="IMAGE", help="EROFS or cramfs image (file or block device)"
    )
    parser.add_argument(
        "--offset",
        type=parse_size,
        default=0,
        metavar="BYTES",
        help="where the filesystem starts inside IMAGE (default: 0)",
    )


CHUNK = 1 << 20


def read_data(fs: Filesystem, ino: Ino, size: int) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` of every part of a regular file that is not a
    hole (:meth:`~fusefs.vfs.Filesystem.data_ranges`): a reader of the
    whole file does work in proportion to what the image stores, not to
    the size it claims."""
    return read_ranges(fs, ino, fs.data_ranges(ino), size)


def read_ranges(
    fs: Filesystem, ino: Ino, ranges: Iterable[tuple[int, int]], size: int
) -> Iterator[tuple[int, bytes]]:
    """``(offset, bytes)`` of the ``(offset, length)`` ranges of a regular
    file, in pieces of at most ``CHUNK``.  A short read is
    CorruptImageError naming where the data ended."""
    for start, length in ranges:
        pos, end = start, min(start + length, size)
        while pos < end:
            data = fs.read(ino, pos, min(CHUNK, end - pos))
            if not data:
                raise CorruptImageError(f"data ends at {pos}, size is {size}")
            yield pos, data
            pos += len(data)


def data_bytes(fs: Filesystem, ino: Ino) -> int:
    """How many bytes of a regular file are not holes: what writing it out
    may take on disk."""
    return sum(length for _start, length in fs.data_ranges(ino))


def check_room(need: int, st: os.statvfs_result, what: str, where: str) -> None:
    """Raise NoSpaceError unless ``need`` bytes (``what``) fit in the space
    ``st`` (a statvfs of ``where``) says is free: an image may claim far
    more data than it stores, and writing it out would fill the disk."""
    free = st.f_bavail * st.f_frsize
    if need > free:
        raise NoSpaceError(f"{what} needs {need} bytes, {where} has {free} free")


class NoSpaceError(FsError):
    """What an image's files claim does not fit where they would be written."""

    errno = errno.ENOSPC


def open_from_args(args: argparse.Namespace) -> Filesystem:
    """Open ``args.image`` as :func:`add_image_arguments` described it."""
    memory = memory_from_args(args)
    fs = open_image(args.image, memory, offset=args.offset)
    # Every command opening an image through here (mount included) opens
    # just this one, for as long as it runs.  The arena's page metadata (a
    # Page per frame) is then the bulk of the heap, and the collector's full
    # passes would walk it again and again while reads allocate (about 13%
    # of a cold read of the bench image).  Frozen, it is left out of them;
    # what is made afterwards is collected as usual.
    gc.freeze()
    log.info(
        "%s: %s image of %d bytes; --mm %s --decompress %s --arena %d",
        args.image, fs.format_name, fs.image.size, memory.mm, memory.decompress,
        memory.arena_bytes,
    )  # fmt: skip
    return fs
