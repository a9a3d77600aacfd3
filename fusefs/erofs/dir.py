"""Directory blocks and readdir (after the kernel's ``fs/erofs/dir.c``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from fusefs.erofs.dirent import DirEntryRecord

# A readdir offset is a stable key: (block << 16) | (index in block + 2).
# 0 means "from the start", 1 is the "." a DOT_OMITTED directory does not
# store (readdir shows it first); a block holds at most 65536 / 12 dirents.
_KEY_SHIFT: Final = 16
_KEY_MASK: Final = (1 << _KEY_SHIFT) - 1
DOT_KEY: Final = 1

BlockReader = Callable[[int], list[DirEntryRecord]]


def dir_nblocks(size: int, block_size: int) -> int:
    return -(-size // block_size)


def block_maxsize(size: int, block_size: int, blk: int) -> int:
    """Bytes of directory block ``blk`` in use (the last one ends at i_size)."""
    return min(block_size, size - blk * block_size)


def entry_key(blk: int, index: int) -> int:
    return (blk << _KEY_SHIFT) | (index + 2)


def iter_entries(
    get_block: BlockReader, nblocks: int, after: int = 0, *, dot: DirEntryRecord | None = None
) -> Iterator[tuple[int, DirEntryRecord]]:
    """``(key, entry)`` in on-disk order, starting after the entry keyed
    ``after``.  ``dot``: the "." of a DOT_OMITTED directory, shown first, as
    the kernel's readdir emits it before the stored entries."""
    if after <= 0:
        if dot is not None:
            yield DOT_KEY, dot
        blk, start = 0, 0
    else:
        blk, start = after >> _KEY_SHIFT, max((after & _KEY_MASK) - 1, 0)
    while blk < nblocks:
        entries = get_block(blk)
        for i in range(start, len(entries)):
            yield entry_key(blk, i), entries[i]
        blk += 1
        start = 0
