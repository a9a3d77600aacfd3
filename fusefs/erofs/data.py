"""Block mapping of uncompressed layouts: FLAT_PLAIN, FLAT_INLINE and
CHUNK_BASED (after the kernel's ``fs/erofs/data.c``).  Every uncompressed
read asks :func:`map_blocks` where a logical offset lives."""

from __future__ import annotations

from dataclasses import dataclass

from fusefs.erofs import format as f
from fusefs.erofs.inode import ErofsInode
from fusefs.erofs.super import ErofsSuper
from fusefs.errors import CorruptImageError
from fusefs.vfs import ImageBytes


@dataclass(frozen=True, slots=True)
class Extent:
    """Logical ``[la, la + llen)`` of a file: raw bytes at image offset ``pa``,
    or a hole (``pa`` is None) that reads as zeros."""

    la: int
    llen: int
    pa: int | None
    inline: bool = False  # the bytes are the inode's inline tail (metadata)


def map_blocks(image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode, la: int) -> Extent:
    """The extent holding logical byte ``la`` (< i_size) of an uncompressed inode."""
    bs = sbi.block_size
    size = inode.size
    nid = inode.nid
    if la < 0 or la >= size:
        raise CorruptImageError(
            f"offset {la} outside the {size}-byte file", structure="erofs map", nid=nid
        )
    if inode.layout == f.EROFS_INODE_FLAT_PLAIN:
        if inode.version == f.EROFS_INODE_LAYOUT_COMPACT and inode.startblk == f.EROFS_NULL_ADDR:
            # erofs (6.15+): an all-ones start block makes a hole-only file
            return Extent(0, size, None)
        return Extent(0, size, inode.startblk * bs)
    if inode.layout == f.EROFS_INODE_FLAT_INLINE:
        head = (-(-size // bs) - 1) * bs
        if la < head:
            return Extent(0, head, inode.startblk * bs)
        return Extent(head, size - head, inode.inline_pos, inline=True)
    if inode.layout == f.EROFS_INODE_CHUNK_BASED:
        return _map_chunk(image, sbi, inode, la)
    raise CorruptImageError(
        f"layout {inode.layout} is not uncompressed", structure="erofs map", nid=nid
    )


def _map_chunk(image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode, la: int) -> Extent:
    fmt = inode.chunkformat
    chunkbits = sbi.blkszbits + (fmt & f.EROFS_CHUNK_FORMAT_BLKBITS_MASK)
    unit = 8 if fmt & f.EROFS_CHUNK_FORMAT_INDEXES else 4
    table = f.round_up(inode.inline_pos, unit)
    nchunks = (inode.size + (1 << chunkbits) - 1) >> chunkbits
    image.check(table, nchunks * unit, structure="erofs chunk index table", nid=inode.nid)
    idx = la >> chunkbits
    pos = table + unit * idx
    raw = image.slice(pos, unit, structure="erofs chunk index", nid=inode.nid)
    if unit == 8:
        startblk = f.ChunkIndex.unpack_from(raw).startblk_lo
    else:
        startblk = f.CHUNK_BLOCKMAP.unpack_from(raw)[0]
    start = idx << chunkbits
    llen = min(1 << chunkbits, inode.size - start)
    if startblk == f.EROFS_NULL_ADDR:
        return Extent(start, llen, None)
    pa = startblk * sbi.block_size
    image.check(pa, llen, structure="erofs chunk data", nid=inode.nid)
    return Extent(start, llen, pa)
