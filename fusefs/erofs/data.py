"""Block mapping and uncompressed reads (after the kernel's ``fs/erofs/data.c``).

:func:`map_blocks` is the one extent mapper every read asks where a logical
offset lives, as ``erofs_map_blocks`` is: FLAT_PLAIN, FLAT_INLINE and
CHUNK_BASED here, compressed layouts through the inode's
:class:`~fusefs.erofs.zmap.ZMap`.  Both answer with a :class:`Map`.
:func:`copy_plain` is the one routine that copies an uncompressed extent's
bytes, for metadata (directories, symlinks), for the page cache
(:func:`fill_plain`) and for ``inspect``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final, NamedTuple

from fusefs.erofs import format as f
from fusefs.erofs.inode import ErofsInode
from fusefs.erofs.super import ErofsSuper
from fusefs.errors import CorruptImageError
from fusefs.memory import ReadMemory
from fusefs.vfs import ImageBytes
from mmshim import PAGE_SIZE, Page

if TYPE_CHECKING:
    from fusefs.erofs.zmap import ZMap

PS: Final = PAGE_SIZE
# pages of an uncompressed file read in one go (a readahead window of 64 KiB)
PLAIN_BATCH: Final = 16


class MapFlags(enum.IntFlag):
    """What a :class:`Map` says of its extent (the kernel's ``EROFS_MAP_*``)."""

    MAPPED = 0x1  # the bytes are at pa (else a hole: zeros)
    META = 0x2  # pa is inside metadata: an inline tail or an inline pcluster
    ENCODED = 0x4  # a pcluster, decoded by ``algorithm``
    FRAGMENT = 0x10  # the bytes live in the packed inode at ``fragmentoff``
    PARTIAL_REF = 0x20  # the pcluster decodes to more than llen (dedupe)


MAPPED: Final = int(MapFlags.MAPPED)
META: Final = int(MapFlags.META)
ENCODED: Final = int(MapFlags.ENCODED)
FRAGMENT: Final = int(MapFlags.FRAGMENT)
PARTIAL_REF: Final = int(MapFlags.PARTIAL_REF)


class Map(NamedTuple):
    """Logical ``[la, la + llen)`` of a file and where its bytes are: raw at
    image offset ``pa`` (``plen`` bytes), a pcluster there that decodes to
    them, a fragment of the packed inode, or a hole.  (``erofs_map_blocks``.)"""

    la: int
    llen: int
    pa: int
    plen: int
    flags: int  # MapFlags bits, as a plain int
    algorithm: int = f.Z_EROFS_COMPRESSION_SHIFTED  # Z_EROFS_COMPRESSION_*, for ENCODED
    fragmentoff: int = 0

    @property
    def end(self) -> int:
        return self.la + self.llen

    @property
    def kind(self) -> str:
        """How ``inspect`` names it."""
        if self.flags & FRAGMENT:
            return "fragment"
        if self.flags & ENCODED:
            return "inline" if self.flags & META else "encoded"
        if not self.flags & MAPPED:
            return "hole"
        return "inline" if self.flags & META else "plain"


def map_blocks(
    image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode, zmap: ZMap | None, la: int
) -> Map:
    """The extent holding logical byte ``la`` (``0 <= la < i_size``)."""
    if zmap is not None:
        return zmap.map(la)
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
            return Map(0, size, 0, 0, 0)
        return Map(0, size, inode.startblk * bs, size, MAPPED)
    if inode.layout == f.EROFS_INODE_FLAT_INLINE:
        head = (-(-size // bs) - 1) * bs
        if la < head:
            return Map(0, head, inode.startblk * bs, head, MAPPED)
        return Map(head, size - head, inode.inline_pos, size - head, MAPPED | META)
    if inode.layout == f.EROFS_INODE_CHUNK_BASED:
        return _map_chunk(image, sbi, inode, la)
    raise CorruptImageError(
        f"layout {inode.layout} is not uncompressed", structure="erofs map", nid=nid
    )


def _map_chunk(image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode, la: int) -> Map:
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
        return Map(start, llen, 0, 0, 0)
    pa = startblk * sbi.block_size
    image.check(pa, llen, structure="erofs chunk data", nid=inode.nid)
    return Map(start, llen, pa, llen, MAPPED)


def iter_maps(
    image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode, zmap: ZMap | None
) -> Iterator[Map]:
    """Every extent of a file, in order (``inspect``, ``fsck``)."""
    la = 0
    while la < inode.size:
        m = map_blocks(image, sbi, inode, zmap, la)
        if m.end <= la:
            raise CorruptImageError(f"empty extent at {la}", structure="erofs map", nid=inode.nid)
        yield m
        la = m.end


def copy_plain(
    image: ImageBytes, m: Map, pos: int, dst: memoryview | bytearray, nid: int
) -> None:
    """Copy bytes ``[pos, pos + len(dst))`` of an uncompressed extent ``m`` into ``dst``."""
    n = len(dst)
    if not (m.la <= pos and pos + n <= m.end):
        raise CorruptImageError(
            f"copy of [{pos}, {pos + n}) outside extent [{m.la}, {m.end})",
            structure="erofs map",
            nid=nid,
        )
    if not m.flags & MAPPED:
        dst[:] = bytes(n)
        return
    src = m.pa + pos - m.la
    image.check(src, n, structure="erofs data", nid=nid)
    dst[:] = image.view[src : src + n]


def read_plain(
    image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode, offset: int, size: int
) -> bytes:
    """Bytes of an uncompressed inode straight from the image (directories
    and symlinks: the kernel's meta buffers), short at EOF."""
    end = min(offset + size, inode.size)
    out = bytearray(max(end - offset, 0))
    pos = offset
    while pos < end:
        m = map_blocks(image, sbi, inode, None, pos)
        stop = min(m.end, end)
        if stop <= pos:
            raise CorruptImageError(f"empty extent at {pos}", structure="erofs map", nid=inode.nid)
        copy_plain(image, m, pos, memoryview(out)[pos - offset : stop - offset], inode.nid)
        pos = stop
    return bytes(out)


def fill_plain(
    mem: ReadMemory, image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode, p: int, p_end: int
) -> tuple[Page, int]:
    """Read page ``p`` of an uncompressed file into the page cache, and the
    pages after it up to the request's end (at most ``PLAIN_BATCH``, as
    readahead would); returns page ``p`` with a reference for the caller and
    the index after the last page read."""
    nid = inode.nid
    mem.reclaim()
    got = mem.grab_range(nid, p, max(1, min(p_end - p, PLAIN_BATCH)), f"nid {nid}")
    locked = [pg for pg, created in got if created]  # new pages come locked
    m: Map | None = None
    page_view = mem.arena.page_view
    size = inode.size
    try:
        for q, (page, _created) in enumerate(got, p):
            if page.is_uptodate:
                continue
            if not page.is_locked:
                page.lock()
                locked.append(page)
            view = page_view(page)
            try:
                pos, end = q * PS, min((q + 1) * PS, size)
                while pos < end:
                    if m is None or not m.la <= pos < m.end:
                        m = map_blocks(image, sbi, inode, None, pos)
                    stop = min(m.end, end)
                    if stop <= pos:
                        raise CorruptImageError(
                            f"empty extent at {pos}", structure="erofs map", nid=nid
                        )
                    copy_plain(image, m, pos, view[pos - q * PS : stop - q * PS], nid)
                    pos = stop
                if end - q * PS < PS:
                    view[end - q * PS :] = bytes(PS - (end - q * PS))
            finally:
                view.release()
            page.set_uptodate()
    except BaseException:
        mem.cache.release_pages([pg for pg, _created in got])
        raise
    finally:
        mem.arena.end_read(locked, False)  # unlock each: uptodate is already set
    mem.cache.release_pages([pg for pg, _created in got[1:]])
    return got[0][0], p + len(got)
