"""Block mapping, metadata buffers and uncompressed reads (after the
kernel's ``fs/erofs/data.c``).

:func:`map_blocks` is the one extent mapper every read asks where a logical
offset lives, as ``erofs_map_blocks`` is: FLAT_PLAIN, FLAT_INLINE and
CHUNK_BASED here, compressed layouts through the inode's
:class:`~fusefs.erofs.zmap.ZMap`.  Both answer with a :class:`Map`.
:func:`copy_plain` is the one routine that copies an uncompressed extent's
bytes, for metadata (directories, symlinks), for the page cache
(:func:`fill_plain`) and for ``inspect``.

Metadata (inode cores, xattrs, inline tails, chunk tables, compressed
indexes) is read from a :class:`MetaBuf`, as the kernel reads it through
``erofs_read_metabuf``: the image itself, or -- for an inode whose nid has
the metabox bit -- the data of the metabox inode, which may be compressed and
so is read through the page cache like any file (:class:`MetaboxBuf`).  An
inode found in the metabox keeps the bytes it owns there (core, xattrs and
trailer) as one :class:`MetaRecord`, read once when the inode is loaded:
later reads of its indexes or inline data then never start a second page
cache read in the middle of one (a fill of its own pages, say).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final, Protocol

from fusefs.erofs import format as f
from fusefs.erofs.inode import NULL_STARTBLK, ErofsInode
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


class MetaBuf(Protocol):
    """Where metadata bytes are read: :class:`fusefs.vfs.ImageBytes`,
    :class:`MetaboxBuf` or :class:`MetaRecord`.  Offsets are byte positions
    in the image or in the metabox inode's data."""

    def check(self, offset: int, length: int, *, structure: str, nid: int | None = None) -> None:
        """Raise CorruptImageError unless ``[offset, offset + length)`` is inside."""

    def slice(
        self, offset: int, length: int, *, structure: str, nid: int | None = None
    ) -> memoryview:
        """The bytes ``[offset, offset + length)``, bounds-checked."""


class _MetaWindow:
    """Bytes ``[start, end)`` of a metadata space, bounds-checked; ``what``
    names them in errors."""

    start: int
    end: int
    what: str

    def check(self, offset: int, length: int, *, structure: str, nid: int | None = None) -> None:
        if offset < self.start or length < 0 or offset + length > self.end:
            reason = f"{length} bytes at {offset:#x} lie outside {self.what}"
            raise CorruptImageError(reason, structure=structure, offset=offset, nid=nid)


class MetaboxBuf(_MetaWindow):
    """The metabox inode's data as a metadata source (INCOMPAT_METABOX).

    ``read(offset, length)`` reads the metabox inode's data through the
    image's page cache (decompressing it in the arena when it is
    compressed), so metadata reads are counted like file reads."""

    def __init__(self, nid: int, size: int, read: Callable[[int, int], bytes]) -> None:
        self.nid = nid
        self.start, self.end = 0, size
        self.what = f"the {size}-byte metabox (nid {nid})"
        self._read = read

    def slice(
        self, offset: int, length: int, *, structure: str, nid: int | None = None
    ) -> memoryview:
        self.check(offset, length, structure=structure, nid=nid)
        data = self._read(offset, length)
        if len(data) != length:
            raise CorruptImageError(
                f"metabox read of {length} bytes at {offset:#x} returned {len(data)}",
                structure=structure,
                offset=offset,
                nid=nid,
            )
        return memoryview(data)


class MetaRecord(_MetaWindow):
    """Bytes ``[base, base + len(data))`` of the metabox, read once: the core,
    xattrs and trailer of one inode there.  Reads outside them are
    corruption (they would belong to another inode)."""

    def __init__(self, base: int, data: bytes) -> None:
        self.start, self.end = base, base + len(data)
        self.what = f"the inode's metadata [{base:#x}, {self.end:#x}) in the metabox"
        self.data = data

    def slice(
        self, offset: int, length: int, *, structure: str, nid: int | None = None
    ) -> memoryview:
        self.check(offset, length, structure=structure, nid=nid)
        return memoryview(self.data)[offset - self.start : offset - self.start + length]


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


class Map:
    """Logical ``[la, la + llen)`` of a file and where its bytes are: raw at
    image offset ``pa`` (``plen`` bytes), a pcluster there that decodes to
    them, a fragment of the packed inode, or a hole.  (``erofs_map_blocks``.)

    A plain immutable class, not a NamedTuple: compiled, it is a native
    object made and read without Python-level calls, once or more per
    pcluster a read decodes."""

    __slots__ = ("algorithm", "flags", "fragmentoff", "la", "llen", "pa", "plen")

    def __init__(
        self,
        la: int,
        llen: int,
        pa: int,
        plen: int,
        flags: int,  # MapFlags bits, as a plain int
        algorithm: int = f.Z_EROFS_COMPRESSION_SHIFTED,  # Z_EROFS_COMPRESSION_*, for ENCODED
        fragmentoff: int = 0,
    ) -> None:
        self.la: Final = la
        self.llen: Final = llen
        self.pa: Final = pa
        self.plen: Final = plen
        self.flags: Final = flags
        self.algorithm: Final = algorithm
        self.fragmentoff: Final = fragmentoff

    def _fields(self) -> tuple[int, int, int, int, int, int, int]:
        return (self.la, self.llen, self.pa, self.plen, self.flags, self.algorithm,
                self.fragmentoff)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Map) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "Map(la={}, llen={}, pa={}, plen={}, flags={}, algorithm={}, fragmentoff={})".format(
            *self._fields()
        )

    def clipped(self, la: int, llen: int) -> Map:
        """The part ``[la, la + llen)`` of a fragment extent (plain bytes of
        the packed inode, readable in any piece)."""
        return Map(la, llen, self.pa, self.plen, self.flags, self.algorithm,
                   self.fragmentoff + (la - self.la))  # fmt: skip

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
        if inode.startblk == NULL_STARTBLK:
            # erofs (6.15+): an all-ones start block makes a hole-only file
            return Map(0, size, 0, 0, 0)
        return Map(0, size, inode.startblk * bs, size, MAPPED)
    if inode.layout == f.EROFS_INODE_FLAT_INLINE:
        head = (-(-size // bs) - 1) * bs
        if la < head:
            return Map(0, head, inode.startblk * bs, head, MAPPED)
        # pa is in the inode's metadata (inode.meta), as the kernel's EROFS_MAP_META
        return Map(head, size - head, inode.inline_pos, size - head, MAPPED | META)
    if inode.layout == f.EROFS_INODE_CHUNK_BASED:
        return _map_chunk(image, sbi, inode, la)
    raise CorruptImageError(
        f"layout {inode.layout} is not uncompressed", structure="erofs map", nid=nid
    )


def chunk_table(inode: ErofsInode, blkszbits: int) -> tuple[int, int, int]:
    """``(chunkbits, entry size, table position)`` of a chunk-based inode:
    4-byte block map entries, or 8-byte indexes (EROFS_CHUNK_FORMAT_INDEXES),
    from the next multiple of the entry size after core and xattrs."""
    fmt = inode.chunkformat
    chunkbits = blkszbits + (fmt & f.EROFS_CHUNK_FORMAT_BLKBITS_MASK)
    unit = f.CHUNK_INDEX_SIZE if fmt & f.EROFS_CHUNK_FORMAT_INDEXES else f.CHUNK_BLOCKMAP.size
    return chunkbits, unit, f.round_up(inode.inline_pos, unit)


def chunk_count(inode: ErofsInode, chunkbits: int) -> int:
    return (inode.size + (1 << chunkbits) - 1) >> chunkbits


def _map_chunk(image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode, la: int) -> Map:
    chunkbits, unit, table = chunk_table(inode, sbi.blkszbits)
    meta = inode.meta
    meta.check(table, chunk_count(inode, chunkbits) * unit,
               structure="erofs chunk index table", nid=inode.nid)  # fmt: skip
    idx = la >> chunkbits
    raw = meta.slice(table + unit * idx, unit, structure="erofs chunk index", nid=inode.nid)
    if unit == f.CHUNK_INDEX_SIZE:
        ci = f.ChunkIndex.unpack_from(raw)
        # erofs: 48 address bits only with EROFS_CHUNK_FORMAT_48BIT; all ones is a hole
        if inode.chunkformat & f.EROFS_CHUNK_FORMAT_48BIT:
            nulladdr = f.EROFS_NULL_ADDR_48
        else:
            nulladdr = f.EROFS_NULL_ADDR
        startblk = ((ci.startblk_hi << 32) | ci.startblk_lo) & nulladdr
    else:
        nulladdr = f.EROFS_NULL_ADDR
        startblk = f.CHUNK_BLOCKMAP.unpack_from(raw)[0]
    start = idx << chunkbits
    llen = min(1 << chunkbits, inode.size - start)
    if startblk == nulladdr:
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


def copy_plain(image: ImageBytes, inode: ErofsInode, m: Map, pos: int, dst: memoryview) -> None:
    """Copy bytes ``[pos, pos + len(dst))`` of an uncompressed extent ``m``
    into ``dst``: read from the image file (exactly these bytes, as a bio
    would: see :meth:`ImageBytes.read_into`), or from the inode's metadata for
    an inline (META) extent."""
    n = len(dst)
    nid = inode.nid
    if not (m.la <= pos and pos + n <= m.end):
        raise CorruptImageError(
            f"copy of [{pos}, {pos + n}) outside extent [{m.la}, {m.end})",
            structure="erofs map",
            nid=nid,
        )
    if not m.flags & MAPPED:
        dst[:] = bytes(n)
        return
    if m.flags & META:
        dst[:] = inode.meta.slice(m.pa + pos - m.la, n, structure="erofs data", nid=nid)
    else:
        image.read_into(m.pa + pos - m.la, [dst], structure="erofs data", nid=nid)


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
        copy_plain(image, inode, m, pos, memoryview(out)[pos - offset : stop - offset])
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
                    copy_plain(image, inode, m, pos, view[pos - q * PS : stop - q * PS])
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
