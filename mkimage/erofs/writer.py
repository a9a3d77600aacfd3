"""Lay out and write one EROFS image from a scanned :class:`~mkimage.tree.Tree`.

Image layout (block numbers grow to the right)::

    block 0..H-1   boot area, superblock at byte 1024, compression cfg records
    H..M-1         regular-file data: plain blocks and pclusters, in tree order
    M..D-1         metadata: shared xattrs, then every inode (root first) with
                   its inline xattrs, inline tail / map header + indexes /
                   chunk table (meta_blkaddr = xattr_blkaddr = M)
    D..end         directory and symlink blocks that do not fit inline

File data goes first so that it can be written as the compressor threads
deliver it (in tree order, so the image does not depend on thread timing);
metadata sizes do not depend on block addresses, so nids are assigned once
all data is placed, and directory blocks (which hold nids) come last.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import os
import stat
import threading
import uuid as uuidlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Final

from fusefs.erofs.format import (
    COMPR_CFG_HEADER,
    EROFS_FEATURE_COMPAT_MTIME,
    EROFS_FEATURE_COMPAT_SB_CHKSUM,
    EROFS_FEATURE_COMPAT_XATTR_FILTER,
    EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER,
    EROFS_FEATURE_INCOMPAT_CHUNKED_FILE,
    EROFS_FEATURE_INCOMPAT_COMPR_CFGS,
    EROFS_FEATURE_INCOMPAT_FRAGMENTS,
    EROFS_FEATURE_INCOMPAT_ZERO_PADDING,
    EROFS_FEATURE_INCOMPAT_ZTAILPACKING,
    EROFS_NULL_ADDR,
    EROFS_SLOTSIZE,
    EROFS_SUPER_OFFSET,
    Z_EROFS_ADVISE_BIG_PCLUSTER_1,
    Z_EROFS_ADVISE_BIG_PCLUSTER_2,
    Z_EROFS_ADVISE_COMPACTED_2B,
    Z_EROFS_ADVISE_FRAGMENT_PCLUSTER,
    Z_EROFS_ADVISE_INLINE_PCLUSTER,
    Z_EROFS_COMPRESSION_DEFLATE,
    Z_EROFS_COMPRESSION_LZ4,
    Z_EROFS_COMPRESSION_ZSTD,
    Z_EROFS_FRAGMENT_INODE_BIT,
    Z_EROFS_PCLUSTER_MAX_SIZE,
    DataLayout,
    DeflateCfgs,
    Lz4Cfgs,
    MapHeader,
    SuperBlock,
    ZstdCfgs,
    ftype_from_mode,
    round_up,
    sb_checksum_length,
    superblock_checksum,
)
from fusefs.errors import BuildError, UnsupportedFeatureError
from mkimage.erofs import dir as dirmod
from mkimage.erofs import inode as inodemod
from mkimage.erofs.compress import SEGMENT_BYTES, Codec, DestSize, Extent, cut_extents
from mkimage.erofs.inode import Inode
from mkimage.erofs.xattr import XattrTable
from mkimage.erofs.zmap import (
    PlacedExtent,
    compact_index_bytes,
    compact_ok,
    full_index_bytes,
    lcluster_entries,
    rebase,
)
from mkimage.tree import BytesData, LinkKey, Node, Tree, show

EXTENDED_OPTIONS: Final = (
    "ztailpacking",
    "fragments",
    "dedupe",
    "noinline_data",
    "legacy-compress",
    "force-inode-compact",
    "force-inode-extended",
    "nosbcrc",
)
# Accepted by name but not implemented: refused with UnsupportedFeatureError.
UNIMPLEMENTED_OPTIONS: Final[tuple[str, ...]] = ()


@dataclass(frozen=True, slots=True)
class ErofsOptions:
    """Everything ``nommufs mkimage erofs`` was asked for, validated."""

    codec: Codec | None = None
    pcluster_size: int = 4096
    block_size: int = 4096
    extended: frozenset[str] = frozenset()
    build_time: int = 0  # seconds; the superblock epoch
    fixed_time: bool = False  # -T / SOURCE_DATE_EPOCH given: reproducible
    all_mtimes: int | None = None  # -T without --mkfs-time: every inode's mtime
    uuid: bytes | None = None
    label: bytes = b""
    workers: int = 0  # 0: one per CPU
    progress: Callable[[int, int], None] | None = None

    @property
    def blkszbits(self) -> int:
        return self.block_size.bit_length() - 1


@dataclass(slots=True)
class BuildReport:
    """What was built (for the CLI's summary and for tests)."""

    blocks: int = 0
    block_size: int = 4096
    inodes: int = 0
    compressed_files: int = 0
    chunked_files: int = 0
    features: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _FileResult:
    """A regular file prepared by a worker: its layout and the bytes for the data area."""

    layout: DataLayout
    payload: bytes  # whole blocks for the data region
    inline: bytes = b""
    chunks: list[int | None] = field(default_factory=list)
    # -E dedupe: each extent (addresses relative to 0), its pcluster bytes
    # (empty for an inline tail) and a digest of the data it decodes to
    placed: list[PlacedExtent] = field(default_factory=list)
    pieces: list[bytes] = field(default_factory=list)
    digests: list[bytes] = field(default_factory=list)
    fragment: bytes = b""  # -E fragments: the tail that goes to the packed inode


class _Cutter:
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
                start=a, end=b,
            )  # fmt: skip

        segments = [(a, min(size, a + SEGMENT_BYTES)) for a in range(0, size, SEGMENT_BYTES)]
        if self.pool is None or len(segments) == 1:
            return [e for a, b in segments for e in cut(a, b)]
        futures = [self.pool.submit(cut, a, b) for a, b in segments]
        return [e for f in futures for e in f.result()]


def _prepare_file(
    node: Node, ino: Inode, opts: ErofsOptions, cutter: _Cutter | None
) -> _FileResult:
    data = node.read_data()
    bs = opts.block_size
    size = len(data)
    codec = opts.codec
    frag = "fragments" in opts.extended
    ztail = "ztailpacking" in opts.extended and not frag
    if codec is not None and cutter is not None and (size > bs or ((ztail or frag) and size > 0)):
        buf = bytearray(data)
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
        flat = size if size % bs and ino.base_size + size % bs <= bs else round_up(size, bs)
        if any(e.compressed for e in extents) and stored < flat:
            placed = []
            blk = 0
            for e, n in zip(extents, blocks, strict=True):
                # an inline tail pcluster counts one block for CBLKCNT, none on disk
                placed.append(PlacedExtent(e.la, e.llen, blk, n or 1, e.compressed))
                blk += n
            _plan_compressed(ino, placed, opts, codec.algorithm, tail)
            pieces = [e.payload if n else b"" for e, n in zip(extents, blocks, strict=True)]
            res = _FileResult(ino.layout, b"".join(pieces), inline=tail)
            if "dedupe" in opts.extended:
                res.placed, res.pieces = placed, pieces
                res.digests = [hashlib.sha256(buf[e.la : e.la + e.llen]).digest() for e in extents]
            return res
    if codec is None and size >= bs:
        zero = bytes(bs)
        nblk = -(-size // bs)
        holes = [data[i * bs : (i + 1) * bs].rstrip(b"\0") == b"" for i in range(nblk)]
        if any(holes) and sum(holes) * bs > 4 * nblk:
            chunks: list[int | None] = []
            parts: list[bytes] = []
            for i, hole in enumerate(holes):
                if hole:
                    chunks.append(None)
                else:
                    chunks.append(len(parts))
                    piece = data[i * bs : (i + 1) * bs]
                    parts.append(piece + zero[: bs - len(piece)])
            return _FileResult(DataLayout.EROFS_INODE_CHUNK_BASED, b"".join(parts), chunks=chunks)
    return _flat(data, ino, opts, regular=True)


def _fragmented(
    ino: Inode, buf: bytearray, extents: list[Extent], opts: ErofsOptions, alg: int
) -> _FileResult:
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
        # erofs: a whole-file fragment is a bare 8-byte header with bit 63 set
        ino.layout = DataLayout.EROFS_INODE_COMPRESSED_FULL
        ino.map_header = MapHeader.with_fragmentoff(0, 0, 0, 1 << Z_EROFS_FRAGMENT_INODE_BIT)
        ino.trailer = (1 << 63).to_bytes(8, "little")
        ino.whole_fragment = True
    else:
        _plan_compressed(ino, placed, opts, alg, b"", fragment=True)
    res = _FileResult(ino.layout, b"".join(pieces), fragment=bytes(buf[last.la :]))
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


def _flat(data: bytes, ino: Inode, opts: ErofsOptions, *, regular: bool) -> _FileResult:
    bs = opts.block_size
    size = len(data)
    tail = size % bs
    inline_ok = not (regular and "noinline_data" in opts.extended)
    # erofs: an inline tail must stay in the block of its inode (core + xattrs + tail <= bs)
    if tail and inline_ok and ino.base_size + tail <= bs:
        head = size - tail
        return _FileResult(DataLayout.EROFS_INODE_FLAT_INLINE, data[:head], inline=data[head:])
    return _FileResult(DataLayout.EROFS_INODE_FLAT_PLAIN, data + bytes(-size % bs))


class ErofsWriter:
    """Builds one image; :meth:`write` is the whole job."""

    def __init__(self, tree: Tree, opts: ErofsOptions) -> None:
        self.tree = tree
        self.opts = opts
        self.bs = opts.block_size
        self.inodes: list[Inode] = []
        self.by_link: dict[LinkKey, Inode] = {}
        self.of_node: dict[int, Inode] = {}  # id(Node) -> inode
        self.parent: dict[int, Node] = {}
        self.shared_pclusters: dict[tuple[bytes, int, bool, int], int] = {}
        self.packed: Inode | None = None
        self.deduped = 0

    # -- planning -------------------------------------------------------

    def _collect(self) -> None:
        opts = self.opts
        for node in self.tree.walk():
            for c in node.children:
                self.parent[id(c)] = node
            if node.link is not None and node.link in self.by_link:
                self.of_node[id(node)] = self.by_link[node.link]
                continue
            mtime = node.mtime_ns if opts.all_mtimes is None else opts.all_mtimes * 10**9
            ino = Inode(node, len(self.inodes) + 1, mtime)
            ino.size = node.size if not node.is_dir else 0
            self.inodes.append(ino)
            self.of_node[id(node)] = ino
            if node.link is not None:
                self.by_link[node.link] = ino
        self.xattrs = XattrTable((show(i.node.path), i.node.xattrs) for i in self.inodes)
        for ino in self.inodes:
            where = show(ino.node.path) or "/"
            ino.xattr_body = self.xattrs.ibody(ino.node.xattrs, where)
            inodemod.choose_core(
                ino,
                opts.build_time,
                force_compact="force-inode-compact" in opts.extended,
                force_extended="force-inode-extended" in opts.extended,
            )

    def _dir_entries(self, node: Node) -> list[dirmod.DirEntry]:
        me = self.of_node[id(node)]
        parent = self.of_node[id(self.parent.get(id(node), node))]
        out = [(b".", me.nid, 2), (b"..", parent.nid, 2)]
        for c in node.children:
            out.append((c.name, self.of_node[id(c)].nid, int(ftype_from_mode(c.mode))))
        return out

    # -- data -----------------------------------------------------------

    def _file_results(self, files: list[Inode]) -> Iterator[tuple[Inode, _FileResult]]:
        """Prepared files in tree order, computed by a pool of threads."""
        opts = self.opts
        workers = opts.workers or min(os.cpu_count() or 1, 8)
        # two pools: file tasks may wait for their segments, segment tasks never wait
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            ThreadPoolExecutor(max_workers=workers) as segment_pool,
        ):
            cutter = _Cutter(opts, segment_pool) if opts.codec is not None else None

            def task(ino: Inode) -> _FileResult:
                return _prepare_file(ino.node, ino, opts, cutter)

            pending: deque[tuple[Inode, Future[_FileResult]]] = deque()
            it = iter(files)
            try:
                for ino in it:
                    pending.append((ino, pool.submit(task, ino)))
                    if len(pending) >= 4 * workers:
                        break
                while pending:
                    ino, fut = pending.popleft()
                    res = fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append((nxt, pool.submit(task, nxt)))
                    yield ino, res
            finally:
                for _, fut in pending:
                    fut.cancel()

    def _place_file(self, ino: Inode, res: _FileResult, cursor: int) -> None:
        ino.layout = res.layout
        ino.startblk = cursor
        ino.data_blocks = len(res.payload) // self.bs
        ino.inline = res.inline
        if res.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
            ino.chunks = res.chunks
        elif ino.map_header is not None:
            ino.trailer = rebase(
                ino.trailer, inodemod.trailer_offset(ino), ino.lclusters, compact=ino.compact,
                lclusterbits=self.opts.blkszbits, two_b=ino.two_b, delta=cursor,
            )  # fmt: skip

    def _add_fragment(self, ino: Inode, fragment: bytes, packed: bytearray) -> None:
        """Append a file's tail to the packed inode's data; its offset goes
        into the map header (the first 4 bytes, or all 8 for a whole file)."""
        off = len(packed)
        packed += fragment
        if ino.whole_fragment:
            ino.trailer = (off | 1 << 63).to_bytes(8, "little")
            return
        if off > 0xFFFFFFFF:
            raise BuildError("-E fragments: the packed inode outgrew 4 GiB")
        ino.trailer = off.to_bytes(4, "little") + ino.trailer[4:]

    def _write_packed(self, f: BinaryIO, data: bytes, cursor: int) -> int:
        """The packed inode (not in any directory): the fragments, compressed
        like any file; returns the next free block."""
        opts = dataclasses.replace(self.opts, extended=self.opts.extended - {"fragments"})
        mtime = opts.build_time * 10**9
        node = Node(path=b"(packed inode)", mode=stat.S_IFREG | 0o600, uid=0, gid=0,
                    mtime_ns=mtime, size=len(data), data=BytesData(data))  # fmt: skip
        ino = Inode(node, len(self.inodes) + 1, node.mtime_ns, size=len(data))
        inodemod.choose_core(ino, opts.build_time, force_compact=False, force_extended=False)
        res = _prepare_file(node, ino, opts, _Cutter(opts, None) if opts.codec else None)
        self._place_file(ino, res, cursor)
        payload = self._dedupe(ino, res, cursor) if res.digests else res.payload
        f.write(payload)
        self.inodes.append(ino)
        self.packed = ino
        return cursor + ino.data_blocks

    def _dedupe(self, ino: Inode, res: _FileResult, cursor: int) -> bytes:
        """Point extents whose data an earlier pcluster already decodes to at
        that pcluster; returns the pclusters still to write, from block
        ``cursor`` on.  Whole extents only: without partial references a
        shared pcluster is just a block address in a full index, so the
        INCOMPAT_DEDUPE bit stays clear and kernels before 6.1 and
        fsck.erofs 1.5 read the image too."""
        assert ino.map_header is not None
        placed = []
        out = []
        blk = cursor
        for e, piece, digest in zip(res.placed, res.pieces, res.digests, strict=True):
            if not piece:  # inline tail: no block
                placed.append(dataclasses.replace(e, blkaddr=blk))
                continue
            key = (digest, e.llen, e.compressed, e.blocks)
            addr = self.shared_pclusters.get(key)
            if addr is None:
                addr = self.shared_pclusters[key] = blk
                out.append(piece)
                blk += e.blocks
            else:
                self.deduped += 1
            placed.append(dataclasses.replace(e, blkaddr=addr))
        ino.data_blocks = blk - cursor
        ino.lclusters = lcluster_entries(placed, ino.size, self.opts.blkszbits, ino.big)
        ino.trailer = full_index_bytes(ino.map_header, ino.lclusters)
        return b"".join(out)

    def _trailer(self, ino: Inode) -> bytes:
        """The layout-specific bytes after core and xattrs (their size does
        not depend on where the inode lands)."""
        if ino.layout == DataLayout.EROFS_INODE_FLAT_INLINE:
            return ino.inline
        if ino.map_header is not None:
            # erofs: an inline tail pcluster starts right after the index area
            return ino.trailer + ino.inline
        if ino.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
            return b"".join(
                (EROFS_NULL_ADDR if c is None else ino.startblk + c).to_bytes(4, "little")
                for c in ino.chunks
            )
        return b""

    def _trailer_size(self, ino: Inode) -> int:
        if ino.layout == DataLayout.EROFS_INODE_FLAT_INLINE:
            return len(ino.inline)
        if ino.map_header is not None:
            return len(ino.trailer) + len(ino.inline)
        if ino.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
            return 4 * len(ino.chunks)
        return 0

    # -- the whole build ------------------------------------------------

    def write(self, f: BinaryIO) -> BuildReport:
        opts, bs = self.opts, self.bs
        self._collect()
        cfgs, u1, incompat = self._compr_cfgs()
        head_blocks = -(-(EROFS_SUPER_OFFSET + SuperBlock.SIZE + len(cfgs)) // bs)
        cursor = head_blocks
        f.seek(cursor * bs)
        files = [i for i in self.inodes if i.node.is_reg]
        report = BuildReport(block_size=bs, inodes=len(self.inodes))
        packed = bytearray()
        for done, (ino, res) in enumerate(self._file_results(files), 1):
            self._place_file(ino, res, cursor)
            payload = self._dedupe(ino, res, cursor) if res.digests else res.payload
            f.write(payload)
            cursor += ino.data_blocks
            if res.fragment:
                self._add_fragment(ino, res.fragment, packed)
            if ino.map_header is not None:
                report.compressed_files += 1
            if ino.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
                report.chunked_files += 1
            if opts.progress is not None:
                opts.progress(done, len(files))
        if packed:
            cursor = self._write_packed(f, bytes(packed), cursor)
        meta_blk = cursor
        # directories and symlinks: sizes now, data once nids are known
        late: list[tuple[Inode, bytes]] = []
        for ino in self.inodes:
            n = ino.node
            if n.is_dir:
                ino.size = dirmod.dir_size(self._dir_entries(n), bs)
                data = bytes(ino.size)  # placeholder of the right size
            elif n.is_lnk:
                data = n.read_data()
            else:
                continue
            res = _flat(data, ino, opts, regular=False)
            ino.layout, ino.inline = res.layout, res.inline
            ino.data_blocks = len(res.payload) // bs
            late.append((ino, res.payload))
        shared = self.xattrs.area
        meta_blocks = self._layout_metadata(len(shared))
        root = self.of_node[id(self.tree.root)]
        if root.nid > 0xFFFF:
            raise BuildError("the shared xattr area is too large for the root inode's nid")
        cursor = meta_blk + meta_blocks
        for ino, _payload in late:
            ino.startblk = cursor
            cursor += ino.data_blocks
        total_blocks = cursor
        if total_blocks > 0xFFFFFFFF:
            raise BuildError("the image needs more than 2^32 blocks")
        # directory contents hold nids: known only now
        late_data = bytearray()
        for ino, payload in late:
            if ino.node.is_dir:
                raw = dirmod.dir_bytes(self._dir_entries(ino.node), bs)
                head = len(raw) - len(ino.inline)
                ino.inline = raw[head:]
                payload = raw[:head] + bytes(-head % bs)
            late_data += payload
        meta = bytearray(meta_blocks * bs)
        meta[: len(shared)] = shared
        for ino in self.inodes:
            ino.trailer = self._trailer(ino)
            raw = inodemod.encode(ino)
            off = ino.nid * EROFS_SLOTSIZE
            meta[off : off + len(raw)] = raw
        f.seek(meta_blk * bs)
        f.write(meta)
        f.write(late_data)
        f.truncate(total_blocks * bs)
        # superblock last: the checksum covers the rest of its block
        compat = EROFS_FEATURE_COMPAT_MTIME | EROFS_FEATURE_COMPAT_XATTR_FILTER
        if "nosbcrc" not in opts.extended:
            compat |= EROFS_FEATURE_COMPAT_SB_CHKSUM
        if any(i.layout == DataLayout.EROFS_INODE_CHUNK_BASED for i in self.inodes):
            incompat |= EROFS_FEATURE_INCOMPAT_CHUNKED_FILE
        if self.packed is not None:
            incompat |= EROFS_FEATURE_INCOMPAT_FRAGMENTS
        if any(i.map_header is not None and i.inline for i in self.inodes):
            incompat |= EROFS_FEATURE_INCOMPAT_ZTAILPACKING
        sb = SuperBlock(
            feature_compat=int(compat),
            blkszbits=opts.blkszbits,
            root_nid_2b=root.nid,
            inos=len(self.inodes),
            epoch=opts.build_time,
            fixed_nsec=0,
            blocks_lo=total_blocks,
            meta_blkaddr=meta_blk,
            xattr_blkaddr=meta_blk,
            uuid=self._uuid(),
            volume_name=opts.label.ljust(16, b"\0"),
            feature_incompat=int(incompat),
            u1=u1,
            packed_nid=self.packed.nid if self.packed is not None else 0,
        )
        first = bytearray(head_blocks * bs)
        first[EROFS_SUPER_OFFSET : EROFS_SUPER_OFFSET + SuperBlock.SIZE] = sb.pack()
        start = EROFS_SUPER_OFFSET + SuperBlock.SIZE
        first[start : start + len(cfgs)] = cfgs
        if compat & EROFS_FEATURE_COMPAT_SB_CHKSUM:
            region = first[
                EROFS_SUPER_OFFSET : EROFS_SUPER_OFFSET + sb_checksum_length(sb.blkszbits)
            ]
            crc = superblock_checksum(region)
            first[EROFS_SUPER_OFFSET + 4 : EROFS_SUPER_OFFSET + 8] = crc.to_bytes(4, "little")
        f.seek(0)
        f.write(first)
        report.blocks = total_blocks
        report.features = sorted(
            name
            for bit, name in (
                (EROFS_FEATURE_INCOMPAT_ZERO_PADDING, "0padding"),
                (EROFS_FEATURE_INCOMPAT_COMPR_CFGS, "compr_cfgs"),
                (EROFS_FEATURE_INCOMPAT_CHUNKED_FILE, "chunked_file"),
            )
            if incompat & bit
        )
        return report

    def _layout_metadata(self, shared_size: int) -> int:
        """Give every inode its nid; returns the metadata area's block count.

        Inodes that fit in one block go, in tree order, into the partly used
        block with the least room that holds them (best fit, ties to the
        lowest block), so inline tails do not leave most of a block empty;
        larger ones start at the end of the area."""
        bs, slots_per_block = self.bs, self.bs // EROFS_SLOTSIZE
        # free slots -> heap of blocks with exactly that many free slots at their end;
        # bit k of ``nonempty`` says room[k] has blocks
        room: list[list[int]] = [[] for _ in range(slots_per_block + 1)]
        nonempty = 0

        def offer(free: int, blk: int) -> None:
            nonlocal nonempty
            heapq.heappush(room[free], blk)
            nonempty |= 1 << free

        end = round_up(shared_size, EROFS_SLOTSIZE)
        end_block = -(-end // bs)
        if end % bs:
            offer((bs - end % bs) // EROFS_SLOTSIZE, end // bs)
        for ino in self.inodes:
            total = inodemod.trailer_offset(ino) + self._trailer_size(ino)
            need = -(-total // EROFS_SLOTSIZE)
            if need <= slots_per_block:
                fitting = nonempty >> need
                if fitting:
                    k = need + (fitting & -fitting).bit_length() - 1
                    blk = heapq.heappop(room[k])
                    if not room[k]:
                        nonempty &= ~(1 << k)
                else:
                    blk, k = end_block, slots_per_block
                    end_block += 1
                pos = blk * bs + (slots_per_block - k) * EROFS_SLOTSIZE
                if k > need:
                    offer(k - need, blk)
            else:
                pos = self._slot(ino, end_block * bs, total)
                stop = pos + need * EROFS_SLOTSIZE
                end_block = -(-stop // bs)
                if stop % bs:
                    offer((bs - stop % bs) // EROFS_SLOTSIZE, stop // bs)
            ino.nid = pos // EROFS_SLOTSIZE
        return end_block

    def _slot(self, ino: Inode, pos: int, total: int) -> int:
        """The first 32-byte slot at or after ``pos`` where ``ino`` may start."""
        bs = self.bs
        if ino.layout == DataLayout.EROFS_INODE_FLAT_INLINE:
            # erofs: an inline tail stays in its inode's block (mkfs keeps the whole inode there)
            return round_up(pos, bs) if pos % bs + total > bs else pos
        if ino.map_header is not None and ino.inline:
            # erofs: an inline tail pcluster must not cross a block boundary;
            # prefer slots where core and xattrs do not cross one either
            start = total - len(ino.inline)
            fits = [p for p in range(pos, pos + bs + EROFS_SLOTSIZE, EROFS_SLOTSIZE)
                    if (p + start) % bs + len(ino.inline) <= bs]  # fmt: skip
            whole = [p for p in fits if p % bs + ino.base_size <= bs]
            if not fits:
                raise BuildError(f"internal: no slot for the inline tail of {show(ino.node.path)}")
            return (whole or fits)[0]
        # cores and xattrs are kept in one block; index arrays and chunk tables may cross
        if pos % bs + ino.base_size > bs and ino.base_size <= bs:
            return round_up(pos, bs)
        return pos

    def _compr_cfgs(self) -> tuple[bytes, int, int]:
        """Config records after the superblock, the 0x54 field, incompat bits."""
        opts = self.opts
        codec = opts.codec
        if codec is None:
            return b"", 0, 0
        incompat = 0
        if not ("legacy-compress" in opts.extended and codec.algorithm == Z_EROFS_COMPRESSION_LZ4):
            incompat |= EROFS_FEATURE_INCOMPAT_ZERO_PADDING
        big = opts.pcluster_size > self.bs
        if codec.algorithm == Z_EROFS_COMPRESSION_LZ4 and not big:
            return b"", 0, incompat
        incompat |= EROFS_FEATURE_INCOMPAT_COMPR_CFGS | EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER
        if codec.algorithm == Z_EROFS_COMPRESSION_LZ4:
            rec = Lz4Cfgs(0xFFFF, opts.pcluster_size // self.bs).pack()
        elif codec.algorithm == Z_EROFS_COMPRESSION_ZSTD:
            rec = ZstdCfgs(0, codec.zstd_window_log - 10).pack()
        elif codec.algorithm == Z_EROFS_COMPRESSION_DEFLATE:
            rec = DeflateCfgs(15).pack()
        else:
            raise BuildError(f"internal: no cfg record for algorithm {codec.algorithm}")
        # erofs: each record is 4-byte aligned: le16 length, then the payload
        return COMPR_CFG_HEADER.pack(len(rec)) + rec, 1 << codec.algorithm, incompat

    def _uuid(self) -> bytes:
        opts = self.opts
        if opts.uuid is not None:
            return opts.uuid
        if not opts.fixed_time:
            return uuidlib.uuid4().bytes
        # reproducible builds: a UUID derived from the tree and the options
        what = (opts.codec, opts.pcluster_size, opts.block_size, sorted(opts.extended),
                opts.build_time, opts.label)  # fmt: skip
        h = hashlib.sha256(repr(what).encode())
        for ino in self.inodes:
            n = ino.node
            h.update(repr((n.path, n.mode, n.uid, n.gid, n.size, ino.mtime_ns, n.rdev,
                           n.target, n.nlink, sorted(n.xattrs.items()))).encode())  # fmt: skip
        raw = bytearray(h.digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4 layout, as a random UUID would have
        raw[8] = (raw[8] & 0x3F) | 0x80
        return bytes(raw)


def build_erofs(tree: Tree, opts: ErofsOptions, f: BinaryIO) -> BuildReport:
    """Write the image of ``tree`` to the seekable file ``f``."""
    if opts.pcluster_size > Z_EROFS_PCLUSTER_MAX_SIZE:
        raise BuildError(f"-C {opts.pcluster_size}: larger than 1 MiB")
    for name in UNIMPLEMENTED_OPTIONS:
        if name in opts.extended:
            raise UnsupportedFeatureError(f"-E {name}: not implemented by nommufs mkimage yet")
    try:
        return ErofsWriter(tree, opts).write(f)
    except OSError as e:
        raise BuildError(f"writing the image: {e.strerror or e}") from None
