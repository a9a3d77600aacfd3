"""File data, prepared by the worker threads: each regular file becomes a
flat (inline/plain), chunk-based (holes) or compressed inode plan and the
bytes it needs in the data area.  Nothing here depends on where the file
lands; the writer places and rebases it afterwards."""

from __future__ import annotations

import hashlib
import operator
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fusefs.erofs.format import (
    EROFS_CHUNK_FORMAT_48BIT,
    EROFS_CHUNK_FORMAT_INDEXES,
    EROFS_SLOTSIZE,
    Z_EROFS_ADVISE_BIG_PCLUSTER_1,
    Z_EROFS_ADVISE_BIG_PCLUSTER_2,
    Z_EROFS_ADVISE_COMPACTED_2B,
    Z_EROFS_ADVISE_FRAGMENT_PCLUSTER,
    Z_EROFS_ADVISE_INLINE_PCLUSTER,
    Z_EROFS_FRAGMENT_INODE_BIT,
    DataLayout,
    MapHeader,
    round_up,
)
from mkimage.erofs import inode as inodemod
from mkimage.erofs.compress import DestSize, Extent, cut_extents, segment_bytes
from mkimage.erofs.inode import Inode
from mkimage.erofs.options import ErofsOptions
from mkimage.erofs.zmap import (
    PlacedExtent,
    compact_index_bytes,
    compact_ok,
    full_index_bytes,
    lcluster_entries,
    rebase_offsets,
)
from mkimage.tree import Node


@dataclass(slots=True)
class FileResult:
    """A regular file prepared by a worker: its layout and the bytes for the data area."""

    layout: DataLayout
    payload: bytes | memoryview  # whole blocks for the data region (a view: from a worker)
    inline: bytes = b""
    chunks: list[int | None] = field(default_factory=list)
    # -E dedupe: each extent (addresses relative to 0), its pcluster bytes
    # (empty for an inline tail) and a digest of the data it decodes to
    placed: list[PlacedExtent] = field(default_factory=list)
    pieces: list[bytes] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    fragment: bytes = b""  # -E fragments: the tail that goes to the packed inode
    written: int = 0  # payload bytes a worker process wrote into the image itself

    @property
    def data_bytes(self) -> int:
        """Bytes of the data region (whoever writes them)."""
        return len(self.payload) + self.written


# What prepare_file decides about an inode, besides its FileResult: a worker
# process sends these back (mkimage.erofs.pool) for the writer's own inode
# (not the lcluster entries: once encoded, only rebase_at is needed).
PLAN_FIELDS = (
    "layout", "map_header", "trailer", "whole_fragment", "physical_blocks", "inline",
    "big", "rebase_at", "two_b", "compact", "chunkformat",
)  # fmt: skip


_plan_fields = operator.attrgetter(*PLAN_FIELDS)


def plan_of(ino: Inode) -> tuple[object, ...]:
    """The PLAN_FIELDS of ``ino``, in that order."""
    plan: tuple[object, ...] = _plan_fields(ino)
    return plan


def apply_plan(ino: Inode, plan: tuple[object, ...]) -> None:
    """Set what :func:`plan_of` took from another process's copy of ``ino``."""
    for name, value in zip(PLAN_FIELDS, plan, strict=True):
        setattr(ino, name, value)


class Cutter:
    """Cuts file data into extents with one compressor per thread; data
    longer than a segment is cut segment by segment, on ``pool`` when given
    (the boundaries are fixed, so the result does not depend on threads)."""

    def __init__(self, opts: ErofsOptions, pool: ThreadPoolExecutor | None) -> None:
        self.opts = opts
        self.pool = pool
        self.local: dict[int, DestSize] = {}

    def _destsize(self) -> DestSize:
        assert self.opts.codec is not None
        key = threading.get_ident()
        ds = self.local.get(key)
        if ds is None:
            ds = self.local[key] = self.opts.codec.destsize(self.opts.pcluster_size)
        return ds

    def __call__(self, buf: bytearray, zero_padding: bool, inline_max: int) -> list[Extent]:
        size = len(buf)
        opts = self.opts

        def cut(a: int, b: int) -> list[Extent]:
            return cut_extents(
                buf, self._destsize(), opts.pcluster_size, opts.block_size,
                zero_padding=zero_padding, inline_max=inline_max if b == size else 0,
                start=a, end=b, max_extent=opts.max_extent_bytes,
            )  # fmt: skip

        seg = segment_bytes(opts.max_extent_bytes)
        segments = [(a, min(size, a + seg)) for a in range(0, size, seg)]
        if self.pool is None or len(segments) == 1:
            return [e for a, b in segments for e in cut(a, b)]
        futures = [self.pool.submit(cut, a, b) for a, b in segments]
        return [e for f in futures for e in f.result()]


def compresses(size: int, opts: ErofsOptions) -> bool:
    """Is a regular file of ``size`` bytes cut into pclusters (else it is
    stored flat or chunk-based, which takes no compressor)?"""
    if opts.codec is None or not size or "all-fragments" in opts.extended:
        return False
    ztail_or_frag = opts.fragments or "ztailpacking" in opts.extended
    return size > opts.block_size or ztail_or_frag


def prepare_file(node: Node, ino: Inode, opts: ErofsOptions, cutter: Cutter | None) -> FileResult:
    bs = opts.block_size
    size = node.size
    codec = opts.codec
    frag = opts.fragments
    ztail = "ztailpacking" in opts.extended and not frag
    if codec is not None and cutter is not None and "all-fragments" in opts.extended and size:
        return _whole_fragment(ino, node.read_data())
    buf: bytearray | None = None
    if codec is not None and cutter is not None and compresses(size, opts):
        buf = node.read_buffer()
        zero_padding = not ("legacy-compress" in opts.extended and codec.algorithm == 0)
        inline_max = bs - EROFS_SLOTSIZE if ztail else 0
        extents = cutter(buf, zero_padding, inline_max)
        if frag:
            return _fragmented(ino, buf, extents, opts, codec.algorithm)
        tail = b""
        if ztail and len(extents[-1].inline_bytes) <= inline_max:
            tail = extents[-1].inline_bytes
        blocks = [len(e.payload) // bs for e in extents]
        if tail:
            blocks[-1] = 0
        stored = sum(blocks) * bs + len(tail)
        flat_bytes = size if size % bs and ino.base_size + size % bs <= bs else round_up(size, bs)
        if any(e.compressed for e in extents) and stored < flat_bytes:
            placed = []
            blk = 0
            for e, n in zip(extents, blocks, strict=True):
                # an inline tail pcluster counts one block for CBLKCNT, none on disk
                placed.append(PlacedExtent(e.la, e.llen, blk, n or 1, e.compressed))
                blk += n
            _plan_compressed(ino, placed, opts, codec.algorithm, tail)
            pieces = [e.payload if n else b"" for e, n in zip(extents, blocks, strict=True)]
            res = FileResult(ino.layout, b"".join(pieces), inline=tail)
            if "dedupe" in opts.extended:
                res.placed, res.pieces = placed, pieces
                res.digests = [hashlib.sha256(buf[e.la : e.la + e.llen]).digest() for e in extents]
            return res
    data = node.read_data() if buf is None else bytes(buf)
    if opts.chunk_size and size:
        return _chunked(data, ino, opts, opts.chunk_size)
    if codec is None and size >= bs:
        nblk = -(-size // bs)
        holes = sum(not data[i * bs : (i + 1) * bs].strip(b"\0") for i in range(nblk))
        if holes and holes * bs > 4 * nblk:
            return _chunked(data, ino, opts, bs)
    return flat(data, ino, opts, regular=True)


def _chunked(data: bytes, ino: Inode, opts: ErofsOptions, chunk: int) -> FileResult:
    """CHUNK_BASED: chunks of ``chunk`` bytes in contiguous blocks, an
    all-zero chunk a hole (no blocks); a 4-byte block map, or 8-byte chunk
    indexes with ``-E force-chunk-indexes`` (48-bit ones under ``-E 48bit``)."""
    bs = opts.block_size
    ino.chunkformat = (chunk // bs).bit_length() - 1
    if "force-chunk-indexes" in opts.extended:
        ino.chunkformat |= EROFS_CHUNK_FORMAT_INDEXES
        if opts.is_48bit:
            ino.chunkformat |= EROFS_CHUNK_FORMAT_48BIT
    chunks: list[int | None] = []
    parts: list[bytes] = []
    blocks = 0
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        if not piece.strip(b"\0"):
            chunks.append(None)
            continue
        chunks.append(blocks)
        parts.append(piece + bytes(-len(piece) % bs))
        blocks += -(-len(piece) // bs)
    return FileResult(DataLayout.EROFS_INODE_CHUNK_BASED, b"".join(parts), chunks=chunks)


def _whole_fragment(ino: Inode, data: bytes) -> FileResult:
    """The whole file in the packed inode (-E all-fragments; a file of one
    extent with -E fragments): a bare 8-byte map header with bit 63 set."""
    ino.layout = DataLayout.EROFS_INODE_COMPRESSED_FULL
    ino.map_header = MapHeader.with_fragmentoff(0, 0, 0, 1 << Z_EROFS_FRAGMENT_INODE_BIT)
    ino.trailer = (1 << 63).to_bytes(8, "little")
    ino.whole_fragment = True
    return FileResult(ino.layout, b"", fragment=data)


def _fragmented(
    ino: Inode, buf: bytearray, extents: list[Extent], opts: ErofsOptions, alg: int
) -> FileResult:
    """-E fragments: the last extent's data goes to the packed inode (the
    whole file when it is one extent); the others stay pclusters."""
    bs = opts.block_size
    last = extents[-1]
    placed = []
    blk = 0
    for e in extents[:-1]:
        placed.append(PlacedExtent(e.la, e.llen, blk, len(e.payload) // bs, e.compressed))
        blk += len(e.payload) // bs
    placed.append(PlacedExtent(last.la, ino.size - last.la, 0, 1, True, fragment=True))
    pieces = [e.payload for e in extents[:-1]] + [b""]
    if len(extents) == 1:
        return _whole_fragment(ino, bytes(buf))
    _plan_compressed(ino, placed, opts, alg, b"", fragment=True)
    res = FileResult(ino.layout, b"".join(pieces), fragment=bytes(buf[last.la :]))
    if "dedupe" in opts.extended and not ino.whole_fragment:
        res.placed, res.pieces = placed, pieces
        res.digests = [hashlib.sha256(buf[e.la : e.la + e.llen]).digest() for e in extents]
    return res


def _plan_compressed(
    ino: Inode,
    placed: list[PlacedExtent],
    opts: ErofsOptions,
    alg: int,
    tail: bytes,
    *,
    fragment: bool = False,
) -> None:
    """Layout, map header, lcluster indexes and their bytes (addresses
    relative to the file's first block) of a compressed inode; ``tail`` is
    the last pcluster when it is stored inline (ztailpacking)."""
    ino.physical_blocks = sum(e.blocks for e in placed) - (1 if tail or fragment else 0)
    ino.inline = tail
    ino.big = opts.pcluster_size > opts.block_size
    ino.lclusters = lcluster_entries(placed, ino.size, opts.blkszbits, ino.big)
    ino.two_b = opts.blkszbits <= 12
    # dedupe points extents at earlier pclusters: not back to back, so full indexes
    ino.compact = not {"legacy-compress", "dedupe"} & opts.extended and compact_ok(
        opts.blkszbits, ino.two_b
    )
    ino.layout = (
        DataLayout.EROFS_INODE_COMPRESSED_COMPACT
        if ino.compact
        else DataLayout.EROFS_INODE_COMPRESSED_FULL
    )
    advise = Z_EROFS_ADVISE_COMPACTED_2B if ino.compact and ino.two_b else 0
    if ino.big:
        advise |= Z_EROFS_ADVISE_BIG_PCLUSTER_1 | Z_EROFS_ADVISE_BIG_PCLUSTER_2
    if tail:
        advise |= Z_EROFS_ADVISE_INLINE_PCLUSTER
    if fragment:
        advise |= Z_EROFS_ADVISE_FRAGMENT_PCLUSTER
    ino.map_header = MapHeader(0, len(tail), advise, alg, 0)
    hpos = inodemod.trailer_offset(ino)
    if ino.compact:
        ino.trailer = compact_index_bytes(
            ino.map_header, hpos, ino.lclusters, opts.blkszbits, ino.two_b, ino.big
        )
    else:
        ino.trailer = full_index_bytes(ino.map_header, ino.lclusters)
    ino.rebase_at = rebase_offsets(
        hpos, ino.lclusters, compact=ino.compact, lclusterbits=opts.blkszbits, two_b=ino.two_b
    )


def flat(data: bytes, ino: Inode, opts: ErofsOptions, *, regular: bool) -> FileResult:
    bs = opts.block_size
    size = len(data)
    tail = size % bs
    inline_ok = not (regular and "noinline_data" in opts.extended)
    # erofs: an inline tail must stay in the block of its inode (core + xattrs + tail <= bs)
    if tail and inline_ok and ino.base_size + tail <= bs:
        head = size - tail
        return FileResult(DataLayout.EROFS_INODE_FLAT_INLINE, data[:head], inline=data[head:])
    return FileResult(DataLayout.EROFS_INODE_FLAT_PLAIN, data + bytes(-size % bs))
