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

import contextlib
import dataclasses
import hashlib
import heapq
import os
import stat
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol

from fusefs.erofs.format import (
    CHUNK_BLOCKMAP,
    CHUNK_INDEX_SIZE,
    COMPR_CFG_HEADER,
    EROFS_CHUNK_FORMAT_48BIT,
    EROFS_CHUNK_FORMAT_INDEXES,
    EROFS_FEATURE_COMPAT_MTIME,
    EROFS_FEATURE_COMPAT_SB_CHKSUM,
    EROFS_FEATURE_COMPAT_XATTR_FILTER,
    EROFS_FEATURE_INCOMPAT_48BIT,
    EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER,
    EROFS_FEATURE_INCOMPAT_CHUNKED_FILE,
    EROFS_FEATURE_INCOMPAT_COMPR_CFGS,
    EROFS_FEATURE_INCOMPAT_FRAGMENTS,
    EROFS_FEATURE_INCOMPAT_ZERO_PADDING,
    EROFS_FEATURE_INCOMPAT_ZTAILPACKING,
    EROFS_NULL_ADDR,
    EROFS_NULL_ADDR_48,
    EROFS_SLOTSIZE,
    EROFS_SUPER_OFFSET,
    Z_EROFS_COMPRESSION_DEFLATE,
    Z_EROFS_COMPRESSION_LZ4,
    Z_EROFS_COMPRESSION_LZMA,
    Z_EROFS_COMPRESSION_ZSTD,
    Z_EROFS_PCLUSTER_MAX_SIZE,
    ChunkIndex,
    DataLayout,
    DeflateCfgs,
    Lz4Cfgs,
    LzmaCfgs,
    SuperBlock,
    ZstdCfgs,
    ftype_from_mode,
    round_up,
    sb_checksum_length,
)
from fusefs.erofs.hash import superblock_checksum
from mkimage.erofs import dir as dirmod
from mkimage.erofs import inode as inodemod
from mkimage.erofs.compress import MAX_EXTENT_BYTES
from mkimage.erofs.data import Cutter, FileResult, compresses, flat, prepare_file
from mkimage.erofs.inode import Inode
from mkimage.erofs.options import EXTENDED_OPTIONS, XATTR_TOLERANCE_DEFAULT, ErofsOptions
from mkimage.erofs.pool import ProcessPool, forkable
from mkimage.erofs.xattr import XattrTable
from mkimage.erofs.zmap import (
    full_index_bytes,
    lcluster_entries,
    rebase,
)
from mkimage.errors import BuildError
from mkimage.tree import BytesData, LinkKey, Node, Tree, show

__all__ = ["EXTENDED_OPTIONS", "BuildReport", "ErofsOptions", "ErofsWriter", "build_erofs"]


@dataclass(slots=True)
class BuildReport:
    """What was built (for the CLI's summary and for tests)."""

    blocks: int = 0
    block_size: int = 4096
    inodes: int = 0
    compressed_files: int = 0
    chunked_files: int = 0
    features: list[str] = field(default_factory=list)


# inodes per step of the work done while worker processes prepare the data
_IDLE_STEP = 256


class ErofsWriter:
    """Builds one image; :meth:`write` is the whole job."""

    def __init__(self, tree: Tree, opts: ErofsOptions) -> None:
        self.tree = tree
        self.opts = opts
        self.bs = opts.block_size
        # the superblock epoch compact mtimes count from; a 48BIT image keeps
        # the build time as seconds after it (mkfs.erofs 1.9's choice)
        self.epoch = max(0, opts.build_time - 0xFFFFFFFF) if opts.is_48bit else opts.build_time
        self.inodes: list[Inode] = []
        self.by_link: dict[LinkKey, Inode] = {}
        self.of_node: dict[int, Inode] = {}  # id(Node) -> inode
        self.parent: dict[int, Node] = {}
        self.shared_pclusters: dict[tuple[bytes, int, bool, int], int] = {}
        self.packed: Inode | None = None
        self.deduped = 0
        self.writeback: threading.Thread | None = None
        self.dir_inodes: dict[int, list[tuple[bytes, Inode, int]]] = {}  # see _dir_entries

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
        keep_xattrs = opts.xattr_tolerance >= 0  # mkfs.erofs -x -1: no xattrs at all
        with_xattrs = [i for i in self.inodes if i.node.xattrs] if keep_xattrs else []
        self.xattrs = XattrTable(
            ((show(i.node.path), i.node.xattrs) for i in with_xattrs),
            share_min=opts.xattr_tolerance + 1,
        )
        for ino in with_xattrs:  # the others' body is empty
            ino.xattr_body = self.xattrs.ibody(ino.node.xattrs, show(ino.node.path) or "/")
        for ino in self.inodes:
            self._choose_core(ino)

    def _choose_core(self, ino: Inode) -> None:
        opts = self.opts
        inodemod.choose_core(
            ino,
            self.epoch,
            force_compact="force-inode-compact" in opts.extended,
            force_extended="force-inode-extended" in opts.extended,
            relative=opts.is_48bit,
        )
        n = ino.node
        ino.nlink_1 = opts.is_48bit and not ino.extended and not n.is_dir and n.nlink == 1
        ino.dot_omitted = n.is_dir and "dot-omitted" in opts.extended

    def _dir_entries(self, node: Node) -> list[dirmod.DirEntry]:
        """The directory's entries with the nids there are now (kept by
        inode: a directory's are asked for twice, for its size and its data)."""
        me = self.of_node[id(node)]
        named = self.dir_inodes.get(me.ino)
        if named is None:
            parent = self.of_node[id(self.parent.get(id(node), node))]
            named = [(b"..", parent, 2)]
            if not me.dot_omitted:
                named.insert(0, (b".", me, 2))
            for c in node.children:
                named.append((c.name, self.of_node[id(c)], int(ftype_from_mode(c.mode))))
            self.dir_inodes[me.ino] = named
        return [(name, ino.nid, ftype) for name, ino, ftype in named]

    # -- data -----------------------------------------------------------

    def _file_results(
        self,
        files: list[Inode],
        out: BinaryIO,
        data_start: int,
        idle: Iterator[None],
        processes_until: contextlib.ExitStack,
    ) -> Iterator[tuple[Inode, FileResult]]:
        """Prepared files in tree order, computed by worker processes
        (:mod:`mkimage.erofs.pool`, which runs steps of ``idle`` while it
        waits for them) or, for -j 1 and tar sources, a pool of threads.
        The processes are waited for when ``processes_until`` closes: they
        may still be writing the last files' data while the writer lays
        out the metadata."""
        opts = self.opts
        workers = opts.workers or min(os.cpu_count() or 1, 8)
        if workers > 1 and forkable(files):
            # the workers write the data area themselves, from byte ``data_start`` of ``out``
            try:
                out.flush()
                fd: int | None = out.fileno()
            except (OSError, AttributeError, ValueError):
                fd = None
            processes = processes_until.enter_context(ProcessPool(files, opts, workers, fd))
            yield from processes.results(data_start, idle)
            placed = sum(i.data_blocks for i in files) * self.bs
            if processes.out_fd is not None and processes.end != data_start + placed:
                raise BuildError("internal: the workers' data area is not where it belongs")
            return
        # two pools: file tasks may wait for their segments, segment tasks never wait
        with (
            ThreadPoolExecutor(max_workers=workers) as pool,
            ThreadPoolExecutor(max_workers=workers) as segment_pool,
        ):
            cutter = Cutter(opts, segment_pool) if opts.codec is not None else None

            def task(ino: Inode) -> FileResult:
                return prepare_file(ino.node, ino, opts, cutter)

            def start(ino: Inode) -> Future[FileResult] | FileResult:
                # a file no compressor touches costs less here than a trip to the pool
                if compresses(ino.node.size, opts):
                    return pool.submit(task, ino)
                return task(ino)

            pending: deque[tuple[Inode, Future[FileResult] | FileResult]] = deque()
            it = iter(files)
            try:
                for ino in it:
                    pending.append((ino, start(ino)))
                    if len(pending) >= 4 * workers:
                        break
                while pending:
                    ino, fut = pending.popleft()
                    res = fut.result() if isinstance(fut, Future) else fut
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append((nxt, start(nxt)))
                    yield ino, res
            finally:
                for _, fut in pending:
                    if isinstance(fut, Future):
                        fut.cancel()

    def _place_file(self, ino: Inode, res: FileResult, cursor: int) -> None:
        ino.layout = res.layout
        ino.startblk = cursor
        ino.data_blocks = res.data_bytes // self.bs
        ino.inline = res.inline
        if res.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
            ino.chunks = res.chunks
        elif ino.map_header is not None:
            ino.trailer = rebase(ino.trailer, ino.rebase_at, compact=ino.compact, delta=cursor)

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

    def _write_packed(self, f: _Sink, data: bytes, cursor: int) -> int:
        """The packed inode (not in any directory): the fragments, compressed
        like any file; returns the next free block."""
        opts = dataclasses.replace(
            self.opts, extended=self.opts.extended - {"fragments", "all-fragments"}
        )
        mtime = opts.build_time * 10**9
        node = Node(path=b"(packed inode)", mode=stat.S_IFREG | 0o600, uid=0, gid=0,
                    mtime_ns=mtime, size=len(data), data=BytesData(data))  # fmt: skip
        ino = Inode(node, len(self.inodes) + 1, node.mtime_ns, size=len(data))
        self._choose_core(ino)
        res = prepare_file(node, ino, opts, Cutter(opts, None) if opts.codec else None)
        self._place_file(ino, res, cursor)
        payload = self._dedupe(ino, res, cursor) if res.digests else res.payload
        f.write(payload)
        self.inodes.append(ino)
        self.packed = ino
        return cursor + ino.data_blocks

    def _dedupe(self, ino: Inode, res: FileResult, cursor: int) -> bytes:
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
                placed.append(e._replace(blkaddr=blk))
                continue
            key = (digest, e.llen, e.compressed, e.blocks)
            addr = self.shared_pclusters.get(key)
            if addr is None:
                addr = self.shared_pclusters[key] = blk
                out.append(piece)
                blk += e.blocks
            else:
                self.deduped += 1
            placed.append(e._replace(blkaddr=addr))
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
            # erofs: a hole is all ones in the address width (48 bits with EROFS_CHUNK_FORMAT_48BIT)
            indexes = bool(ino.chunkformat & EROFS_CHUNK_FORMAT_INDEXES)
            wide = bool(ino.chunkformat & EROFS_CHUNK_FORMAT_48BIT)
            null = EROFS_NULL_ADDR_48 if wide else EROFS_NULL_ADDR
            out = []
            for c in ino.chunks:
                blk = null if c is None else ino.startblk + c
                if c is not None and blk >= null:
                    raise BuildError(f"{show(ino.node.path)}: chunk at block {blk} (use -E 48bit)")
                out.append(
                    ChunkIndex(blk >> 32, 0, blk & 0xFFFFFFFF).pack()
                    if indexes
                    else CHUNK_BLOCKMAP.pack(blk)
                )
            return b"".join(out)
        return b""

    def _trailer_size(self, ino: Inode) -> int:
        if ino.layout == DataLayout.EROFS_INODE_FLAT_INLINE:
            return len(ino.inline)
        if ino.map_header is not None:
            return len(ino.trailer) + len(ino.inline)
        if ino.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
            indexes = ino.chunkformat & EROFS_CHUNK_FORMAT_INDEXES
            return (CHUNK_INDEX_SIZE if indexes else CHUNK_BLOCKMAP.size) * len(ino.chunks)
        return 0

    # -- the whole build ------------------------------------------------

    def write(self, out: BinaryIO) -> BuildReport:
        with contextlib.ExitStack() as processes:  # worker processes, once started
            return self._write(out, processes)

    def _write(self, out: BinaryIO, processes: contextlib.ExitStack) -> BuildReport:
        opts, bs = self.opts, self.bs
        f: _Sink = _Offset(out, opts.offset) if opts.offset else out
        self._collect()
        cfgs, u1, incompat = self._compr_cfgs()
        head_blocks = -(-(EROFS_SUPER_OFFSET + SuperBlock.SIZE + len(cfgs)) // bs)
        cursor = head_blocks
        f.seek(cursor * bs)
        files = [i for i in self.inodes if i.node.is_reg]
        report = BuildReport(block_size=bs, inodes=len(self.inodes))
        packed = bytearray()
        encoded: dict[int, bytes] = {}  # ino -> its bytes, for regular files
        start = opts.offset + cursor * bs
        # what does not depend on the files' data, done while workers prepare it
        late: list[tuple[Inode, bytes | memoryview]] = []  # directories and symlinks
        idle = self._late_sizes(late)
        results = self._file_results(files, out, start, idle, processes)
        for done, (ino, res) in enumerate(results, 1):
            self._place_file(ino, res, cursor)
            payload = self._dedupe(ino, res, cursor) if res.digests else res.payload
            if payload:  # empty too when a worker process wrote it
                f.write(payload)
            cursor += ino.data_blocks
            if res.fragment:
                self._add_fragment(ino, res.fragment, packed)
            if ino.map_header is not None:
                report.compressed_files += 1
            if ino.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
                report.chunked_files += 1
            # final once placed (only the nid is to come): encoded now, while
            # the workers are still busy, not after them
            encoded[ino.ino] = inodemod.encode(ino, self._trailer(ino))
            if opts.progress is not None:
                opts.progress(done, len(files))
        f.seek(cursor * bs)  # past what worker processes wrote themselves
        for _ in idle:  # what the wait for workers left (all of it without them)
            pass
        if opts.durable:
            self.writeback = self._write_back_early(out)
        if packed:
            cursor = self._write_packed(f, bytes(packed), cursor)
        meta_blk = cursor
        shared = self.xattrs.area
        meta_blocks = self._layout_metadata(len(shared), encoded)
        root = self.of_node[id(self.tree.root)]
        if root.nid > 0xFFFF and not opts.is_48bit:
            # erofs: without 48BIT the root's nid has 16 bits (rootnid_2b)
            raise BuildError("the shared xattr area is too large for the root inode's nid")
        cursor = meta_blk + meta_blocks
        for ino, _payload in late:
            ino.startblk = cursor
            cursor += ino.data_blocks
        total_blocks = cursor
        if total_blocks > 0xFFFFFFFF and not (opts.is_48bit and root.nid):
            raise BuildError("the image needs more than 2^32 blocks (-E 48bit has 48)")
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
            ready = encoded.get(ino.ino)
            body = inodemod.encode(ino, self._trailer(ino)) if ready is None else ready
            off = ino.nid * EROFS_SLOTSIZE
            meta[off : off + len(body)] = body
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
        # 48BIT: the root's nid in rootnid_8b, and rootnid_2b becomes blocks_hi
        # (while rootnid_8b is 0 the kernel still reads rootnid_2b as the nid)
        wide = opts.is_48bit and root.nid > 0
        if opts.is_48bit:
            incompat |= EROFS_FEATURE_INCOMPAT_48BIT
        sb = SuperBlock(
            feature_compat=int(compat),
            blkszbits=opts.blkszbits,
            root_nid_2b=total_blocks >> 32 if wide else root.nid,
            inos=len(self.inodes),
            epoch=self.epoch,
            fixed_nsec=0,
            blocks_lo=total_blocks & 0xFFFFFFFF,
            meta_blkaddr=meta_blk,
            xattr_blkaddr=meta_blk,
            uuid=self._uuid(meta, late_data),
            volume_name=opts.label.ljust(16, b"\0"),
            feature_incompat=int(incompat),
            u1=u1,
            packed_nid=self.packed.nid if self.packed is not None else 0,
            build_time=opts.build_time - self.epoch if opts.is_48bit else 0,
            rootnid_8b=root.nid if wide else 0,
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
        self.join_writeback()
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

    def _late_sizes(self, late: list[tuple[Inode, bytes | memoryview]]) -> Iterator[None]:
        """Directories and symlinks into ``late``: sizes and layouts now (a
        few at each step), data once nids are known."""
        bs, opts = self.bs, self.opts
        for k, ino in enumerate(self.inodes, 1):
            if k % _IDLE_STEP == 0:
                yield
            n = ino.node
            if n.is_dir:
                ino.size = dirmod.dir_size(self._dir_entries(n), bs)
                data = bytes(ino.size)  # placeholder of the right size
            elif n.is_lnk:
                data = n.read_data()
            else:
                continue
            res = flat(data, ino, opts, regular=False)
            ino.layout, ino.inline = res.layout, res.inline
            ino.data_blocks = len(res.payload) // bs
            late.append((ino, res.payload))

    def join_writeback(self) -> None:
        """Wait for :meth:`_write_back_early` (the file must outlive it)."""
        if self.writeback is not None:
            self.writeback.join()
            self.writeback = None

    @staticmethod
    def _write_back_early(out: BinaryIO) -> threading.Thread | None:
        """Start writing the data area back to disk while the metadata is
        laid out, so that the fsync of a durable OUT has little left to do."""
        try:
            out.flush()
            fd = out.fileno()
        except (OSError, AttributeError, ValueError):
            return None

        def sync() -> None:
            with contextlib.suppress(OSError):  # the final fsync says what failed
                os.fdatasync(fd)

        thread = threading.Thread(target=sync, name="mkimage-writeback", daemon=True)
        thread.start()
        return thread

    def _layout_metadata(self, shared_size: int, encoded: dict[int, bytes]) -> int:
        """Give every inode its nid; returns the metadata area's block count
        (``encoded``: the bytes of the inodes encoded already, by ino).

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
            raw = encoded.get(ino.ino)
            if raw is not None:
                total = len(raw)
            else:
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
        if opts.codecs == (codec,) and codec.algorithm == Z_EROFS_COMPRESSION_LZ4 and not big:
            return b"", 0, incompat
        incompat |= EROFS_FEATURE_INCOMPAT_COMPR_CFGS | EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER
        records = bytearray()
        # erofs: one record per algorithm of the bitmap, in ascending id order,
        # each 4-byte aligned: le16 length, then the payload
        for c in sorted(opts.codecs, key=lambda c: c.algorithm):
            if c.algorithm == Z_EROFS_COMPRESSION_LZ4:
                rec = Lz4Cfgs(0xFFFF, opts.pcluster_size // self.bs).pack()
            elif c.algorithm == Z_EROFS_COMPRESSION_LZMA:
                rec = LzmaCfgs(c.lzma_dict_size(opts.pcluster_size), 0).pack()
            elif c.algorithm == Z_EROFS_COMPRESSION_ZSTD:
                rec = ZstdCfgs(0, c.zstd_window_log - 10).pack()
            elif c.algorithm == Z_EROFS_COMPRESSION_DEFLATE:
                rec = DeflateCfgs(c.deflate_window_bits).pack()
            else:
                raise BuildError(f"internal: no cfg record for algorithm {c.algorithm}")
            records += COMPR_CFG_HEADER.pack(len(rec)) + rec
            records += bytes(-len(records) % 4)
        bitmap = sum(1 << c.algorithm for c in opts.codecs)
        return bytes(records), bitmap, incompat

    def _uuid_options(self) -> tuple[object, ...]:
        """What of the options a reproducible build's UUID depends on: plain
        values only, whose repr is the same however the objects holding them
        print (a compiled Codec shows its algorithm as 3, an interpreted one
        as the enum member)."""
        opts = self.opts
        codecs = [(c.name, c.level, c.dict_size) for c in opts.codecs]
        what: tuple[object, ...] = (codecs[:1], opts.pcluster_size, opts.block_size,
                                    sorted(opts.extended), opts.build_time, opts.label)  # fmt: skip
        if opts.alt_codecs or opts.max_extent_bytes != MAX_EXTENT_BYTES or opts.chunk_size:
            what += (codecs[1:], opts.max_extent_bytes, opts.chunk_size)
        if opts.xattr_tolerance != XATTR_TOLERANCE_DEFAULT:
            what += (opts.xattr_tolerance,)
        return what

    def _uuid(self, *metadata: bytes | bytearray) -> bytes:
        """``-U``, else a random UUID, else (``-T``: a reproducible build)
        one derived from the options and ``metadata``, the image's
        metadata and directory blocks: every inode (the packed one too),
        name, xattr and symlink is in them, and nothing that depends on
        how the build ran."""
        opts = self.opts
        if opts.uuid is not None:
            return opts.uuid
        if not opts.fixed_time:
            import uuid  # only here: with platform, 6 ms of every build's start-up

            return uuid.uuid4().bytes
        h = hashlib.sha256(repr(self._uuid_options()).encode())
        for part in metadata:
            h.update(part)
        raw = bytearray(h.digest()[:16])
        raw[6] = (raw[6] & 0x0F) | 0x40  # version 4 layout, as a random UUID would have
        raw[8] = (raw[8] & 0x3F) | 0x80
        return bytes(raw)


class _Sink(Protocol):
    """What the writer does to its output file."""

    def seek(self, pos: int, /) -> int: ...
    def write(self, data: bytes | bytearray | memoryview, /) -> int: ...
    def truncate(self, size: int, /) -> int: ...


class _Offset:
    """``f`` with every position moved ``base`` bytes on (``--offset``)."""

    def __init__(self, f: BinaryIO, base: int) -> None:
        self.f = f
        self.base = base
        f.seek(base)

    def seek(self, pos: int) -> int:
        return self.f.seek(self.base + pos) - self.base

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.f.write(data)

    def truncate(self, size: int) -> int:
        return self.f.truncate(self.base + size) - self.base


def build_erofs(tree: Tree, opts: ErofsOptions, f: BinaryIO) -> BuildReport:
    """Write the image of ``tree`` to the seekable file ``f``."""
    if opts.pcluster_size > Z_EROFS_PCLUSTER_MAX_SIZE:
        raise BuildError(f"-C {opts.pcluster_size}: larger than 1 MiB")
    writer = ErofsWriter(tree, opts)
    try:
        return writer.write(f)
    except OSError as e:
        raise BuildError(f"writing the image: {e.strerror or e}") from None
    finally:
        writer.join_writeback()
