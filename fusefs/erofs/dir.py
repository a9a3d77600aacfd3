"""Directory blocks and readdir (after the kernel's ``fs/erofs/dir.c``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fusefs.erofs.dirent import DirEntryRecord

# A readdir offset is a stable key: (block << 16) | (index in block + 1).
# 0 means "from the start"; a block holds at most 65536 / 12 dirents.
_KEY_SHIFT = 16

BlockReader = Callable[[int], list[DirEntryRecord]]


def dir_nblocks(size: int, block_size: int) -> int:
    return -(-size // block_size)


def block_maxsize(size: int, block_size: int, blk: int) -> int:
    """Bytes of directory block ``blk`` in use (the last one ends at i_size)."""
    return min(block_size, size - blk * block_size)


def entry_key(blk: int, index: int) -> int:
    return (blk << _KEY_SHIFT) | (index + 1)


def iter_entries(
    get_block: BlockReader, nblocks: int, after: int = 0
) -> Iterator[tuple[int, DirEntryRecord]]:
    """``(key, entry)`` in on-disk order, starting after the entry keyed ``after``."""
    blk, start = (after >> _KEY_SHIFT, after & ((1 << _KEY_SHIFT) - 1)) if after > 0 else (0, 0)
    while blk < nblocks:
        entries = get_block(blk)
        for i in range(start, len(entries)):
            yield entry_key(blk, i), entries[i]
        blk += 1
        start = 0
