"""Directory data: sorted dirents (``.`` and ``..`` included) packed in blocks."""

from __future__ import annotations

from collections.abc import Sequence

from fusefs.erofs.dirent import dirent_blocks, pack_dirent_block
from fusefs.erofs.format import Dirent

# (name, nid, file_type); the nid is 0 while sizes are computed
DirEntry = tuple[bytes, int, int]


def dir_size(entries: Sequence[DirEntry], block_size: int) -> int:
    """i_size of a directory: full blocks, plus the used bytes of the last
    one (a dirent and its name per entry: what pack_dirent_block packs)."""
    blocks = dirent_blocks(sorted(entries), block_size)
    last = sum(Dirent.SIZE + len(name) for name, _nid, _ftype in blocks[-1])
    return (len(blocks) - 1) * block_size + last


def dir_bytes(entries: Sequence[DirEntry], block_size: int) -> bytes:
    """The directory's data (i_size bytes): each block zero-filled but the last."""
    blocks = dirent_blocks(sorted(entries), block_size)
    out = bytearray()
    for i, blk in enumerate(blocks):
        raw = pack_dirent_block(blk)
        out += raw if i == len(blocks) - 1 else raw + bytes(block_size - len(raw))
    return bytes(out)
