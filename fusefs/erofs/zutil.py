"""How a pcluster is decoded into memory: the four strategies of ``--decompress``,
one object each, chosen once when the image is opened (the kernel keeps its
destination mapping in ``decompressor.c`` and its global buffers in
``zutil.c``, apart from the page-cache logic of ``zdata.c``).

Two families:

*Mapped* strategies decode each pcluster straight into its page-cache
frames through a virtually contiguous view of them:

``vmap``
    What EROFS does with an MMU (``z_erofs_lz4_decompress``): a one-page
    output is ``kmap_local``-ed, physically contiguous output pages are used
    at their own address (``page_address``), anything else is
    ``vm_map_ram``-ed.  The arena's mode decides what that last step means:
    ``mmu`` aliases the frames (no copy), ``nommu-contig`` fails with ENOMEM,
    ``nommu-bounce`` copies through an arena bounce buffer (``bounce_bytes``).
    Under ``nommu-contig`` it never gets that far: the mount fails, as the
    kernel's does, on the vmap of the global buffer.
``bounce``
    The posted nommu patch, whatever the arena mode: contiguous pages are
    used in place; scattered ones are copied into a contiguous bounce
    allocation from the arena at map time and copied back at unmap
    (``copy_bytes`` counts both directions).

A multi-page compressed input is ``vm_map_ram``-ed (the kernel does so
whenever the input spans pages), so under ``nommu-contig`` scattered input
pages fail too.

*Buffered* strategies decode the pclusters that cover a page into one
contiguous buffer, then hand the bytes to the page cache:

``contig-folio``
    The reviewers' advice: the output is one high-order folio
    (``alloc_pages(order)``), decoded into directly.  When that folio is
    exactly the file's pages it is inserted into the page cache as is
    (``folios_added``); otherwise the complete pages are copied into
    order-0 page-cache frames (``copy_bytes``) and the folio freed.
    Compressed input is a folio too.  Under fragmentation the high-order
    allocation fails: ENOMEM, no fallback.
``percpu-buffer``
    One contiguous output buffer and one input buffer reserved from the
    arena when the image is opened (sized for the largest pcluster, and for
    a few times that of decoded output; grown, like the kernel's global
    buffers, when an extent needs more: ``percpu_grows``).  Compressed data
    is read into the input buffer, decoded into the output buffer and copied
    out page by page into order-0 page-cache frames (``copy_bytes``).
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar, Final

from fusefs.erofs import format as f
from fusefs.erofs.data import Map
from fusefs.erofs.super import ErofsSuper
from fusefs.errors import OutOfMemoryError
from fusefs.memory import ReadMemory
from fusefs.vfs import ImageBytes
from fusefs.vfs import Strategy as StrategyName
from mmshim import PAGE_SIZE, Owner, Page, is_contiguous

if TYPE_CHECKING:
    from fusefs.erofs.inode import ErofsInode
    from fusefs.erofs.zdata import ZData

PS: Final = PAGE_SIZE

# What a decode step took, given back last first by :func:`undo_all` (an
# ExitStack costs more than the pcluster's own bookkeeping).
# Each entry is a function and its arguments.
Undo = list[tuple[Callable[..., object], *tuple[object, ...]]]


def undo_all(undo: Undo) -> None:
    """Run ``undo`` last first, every step even when one raises."""
    err: BaseException | None = None
    while undo:
        fn, *args = undo.pop()
        try:
            fn(*args)
        except BaseException as e:  # keep undoing; the first error wins
            err = err or e
    if err is not None:
        raise err


def order_for(nr_pages: int) -> int:
    """The smallest order whose folio holds ``nr_pages`` frames."""
    return max(nr_pages - 1, 0).bit_length()


class DecodeStrategy(abc.ABC):
    """One way of giving a pcluster's decoder contiguous memory."""

    name: ClassVar[StrategyName]

    def __init__(self, mem: ReadMemory, image: ImageBytes, sbi: ErofsSuper) -> None:
        self.mem = mem
        self.image = image
        self.sbi = sbi

    def close(self) -> None:
        """Give back what the strategy reserved at mount (most reserve nothing)."""
        return None

    @abc.abstractmethod
    def read_input(self, undo: Undo, nid: int, m: Map) -> memoryview:
        """Pcluster ``m`` read from the "device" into arena memory, viewed
        contiguously; what it took is given back by ``stack``."""

    @abc.abstractmethod
    def run(
        self, zd: ZData, inode: ErofsInode, maps: list[Map], want: int, limit: int
    ) -> tuple[Page, int]:
        """Decode ``maps`` (in file order, together covering page ``want``)
        into the page cache; return page ``want`` with a reference for the
        caller and the index after the run of uptodate pages from it.
        ``limit``: a mapped strategy may stop decoding there (a partial read)."""

    def _read_disk(self, nid: int, m: Map, buffers: list[memoryview]) -> None:
        """Read the pcluster from the "device" into ``buffers`` (its bio)."""
        self.image.read_into(m.pa, buffers, structure="erofs pcluster", nid=nid)


def _vm_map_ram(
    mem: ReadMemory, undo: Undo, pages: list[Page], nid: int, what: str
) -> memoryview:
    """``vm_map_ram`` of ``pages`` per the arena's mode; undone by ``stack``."""
    arena = mem.arena
    try:
        m = arena.vm_map_ram(pages)
    except MemoryError as e:
        raise OutOfMemoryError(
            f"erofs: nid {nid}: cannot vmap {len(pages)} pages of {what} "
            f"(order 0, {arena.mode}): {e}",
            allocation=mem.allocation(f"vmap of {what}", 0, len(pages), e),
        ) from None
    undo.append((arena.vm_unmap_ram, m))
    return m.view


class MappedStrategy(DecodeStrategy):
    """Decode each pcluster into its own page-cache frames, through a view of them."""

    def _map(self, undo: Undo, pages: list[Page], nid: int, what: str) -> memoryview:
        """A virtually contiguous view of ``pages`` (scattered: per strategy)."""
        arena = self.mem.arena
        if len(pages) == 1:  # kmap_local_page
            view = arena.page_view(pages[0])
        elif is_contiguous(pages):  # page_address: the frames are one run
            view = arena.contig_view(pages)
        else:
            return self._map_scattered(undo, pages, nid, what)
        undo.append((view.release,))
        return view

    @abc.abstractmethod
    def _map_scattered(
        self, undo: Undo, pages: list[Page], nid: int, what: str
    ) -> memoryview: ...

    def read_input(self, undo: Undo, nid: int, m: Map) -> memoryview:
        # order-0 frames, as the kernel's bio pages
        mem = self.mem
        nin = -(-m.plen // PS)
        pages = mem.alloc_bulk(nin, Owner.DECOMPRESS, f"nid {nid}", "compressed input page")
        undo.append((mem.arena.free_pages_bulk, pages))
        page_view = mem.arena.page_view
        if nin == 1:
            view = page_view(pages[0])
            undo.append((view.release,))
            self._read_disk(nid, m, [view[: m.plen]])
            return view[: m.plen]
        views = [page_view(pg) for pg in pages]
        try:
            tail = m.plen - (nin - 1) * PS
            self._read_disk(nid, m, [*views[:-1], views[-1][:tail]])
        finally:
            for v in views:
                v.release()
        return self._map_input(undo, pages, nid)[: m.plen]

    def _map_input(self, undo: Undo, pages: list[Page], nid: int) -> memoryview:
        # erofs: an input of more than one page is always vm_map_ram-ed
        return _vm_map_ram(self.mem, undo, pages, nid, "compressed input")

    def run(
        self, zd: ZData, inode: ErofsInode, maps: list[Map], want: int, limit: int
    ) -> tuple[Page, int]:
        nid = inode.nid
        who = f"nid {nid}"
        held: dict[int, Page] = {}
        locked: list[Page] = []
        ranges: list[tuple[int, int]] = []
        mem = self.mem
        try:
            for m in maps:
                # the decoded prefix ends at a page boundary (limit) or the extent's end
                stop = min(m.la + m.llen, max(limit, m.la + 1))
                ranges.append((m.la, stop))
                q0, q1 = m.la // PS, -(-stop // PS)
                # extents come in file order: only the first page can be shared
                # with the previous extent
                start = q0 + 1 if q0 in held else q0
                if start < q1:
                    got = mem.grab_range(nid, start, q1 - start, who)
                    for q, (pg, created) in enumerate(got, start):
                        held[q] = pg
                        if created:
                            locked.append(pg)  # new pages come locked
                        elif not pg.is_uptodate:
                            if not pg.is_locked:
                                pg.lock()
                            locked.append(pg)
                pages = [held[q] for q in range(q0, q1)]
                undo: Undo = []
                try:
                    src = zd.source(undo, self, inode, m)
                    out: Undo = []
                    try:
                        view = self._map(out, pages, nid, "decompressed output")
                        off = m.la - q0 * PS
                        zd.decode(inode, m, src, view[off : off + stop - m.la])
                    finally:
                        undo_all(out)
                finally:
                    undo_all(undo)
            page, complete = zd.settle(inode, held, ranges, want)
            locked = zd.end_complete(complete, locked)
            return page, zd.uptodate_run(held, want)
        finally:
            mem.arena.end_read(locked, False)  # the rest: unlocked, not uptodate
            mem.cache.release_pages(held.values())


class VmapStrategy(MappedStrategy):
    name = "vmap"

    def __init__(self, mem: ReadMemory, image: ImageBytes, sbi: ErofsSuper) -> None:
        super().__init__(mem, image, sbi)
        # erofs (decompressor.c z_erofs_load_lz4_config -> zutil.c
        # z_erofs_gbuf_growsize): every mount of a kernel with EROFS_FS_ZIP
        # whose image may use LZ4 (an uncompressed one too) vmap()s the global
        # buffer of lz4 max_pclusterblks pages, and vmap() of a stock kernel
        # without an MMU is BUG() (mm/nommu.c), contiguous pages or not.
        if mem.arena.mode == "nommu-contig" and sbi.compr.available_algs & (
            1 << f.Z_EROFS_COMPRESSION_LZ4
        ):
            raise OutOfMemoryError(
                "erofs: z_erofs_gbuf_growsize: cannot vmap the "
                f"{sbi.compr.lz4_max_pclusterblks}-page global decompression buffer at "
                "mount (nommu-contig): without an MMU vmap() is BUG() (mm/nommu.c), so a "
                "kernel with EROFS_FS_ZIP mounts no EROFS image"
            )

    def _map_scattered(
        self, undo: Undo, pages: list[Page], nid: int, what: str
    ) -> memoryview:
        return _vm_map_ram(self.mem, undo, pages, nid, what)


class BounceStrategy(MappedStrategy):
    name = "bounce"

    def _map_scattered(
        self, undo: Undo, pages: list[Page], nid: int, what: str
    ) -> memoryview:
        """The posted patch's vmap: copy in at map time, back at unmap."""
        mem = self.mem
        arena = mem.arena
        n = len(pages)
        buf = mem.alloc(order_for(n), Owner.BOUNCE, f"nid {nid}", f"bounce buffer for {what}")
        undo.append((arena.free_pages, buf))
        view = arena.folio_view(buf)[: n * PS]
        page_view = arena.page_view

        def copy_back() -> None:
            for i, pg in enumerate(pages):
                v = page_view(pg)
                v[:] = view[i * PS : (i + 1) * PS]
                v.release()
            mem.counters.copy_bytes += n * PS
            view.release()

        for i, pg in enumerate(pages):
            v = page_view(pg)
            view[i * PS : (i + 1) * PS] = v
            v.release()
        mem.counters.copy_bytes += n * PS
        undo.append((copy_back,))
        return view

    def _map_input(self, undo: Undo, pages: list[Page], nid: int) -> memoryview:
        if is_contiguous(pages):
            return _vm_map_ram(self.mem, undo, pages, nid, "compressed input")
        return self._map_scattered(undo, pages, nid, "compressed input")


class BufferedStrategy(DecodeStrategy):
    """Decode into one contiguous buffer, then give the bytes to the page cache."""

    @abc.abstractmethod
    def _input_buffer(self, undo: Undo, nid: int, nr_pages: int) -> Page:
        """A contiguous buffer of at least ``nr_pages`` frames for compressed input."""

    @abc.abstractmethod
    def _output_buffer(self, undo: Undo, nid: int, nr_pages: int) -> tuple[Page, bool]:
        """A contiguous buffer of at least ``nr_pages`` frames, and whether it
        may become page-cache pages as it is."""

    def read_input(self, undo: Undo, nid: int, m: Map) -> memoryview:
        buf = self._input_buffer(undo, nid, -(-m.plen // PS))
        view = self.mem.arena.folio_view(buf)
        undo.append((view.release,))
        self._read_disk(nid, m, [view[: m.plen]])
        return view[: m.plen]

    def run(
        self, zd: ZData, inode: ErofsInode, maps: list[Map], want: int, limit: int
    ) -> tuple[Page, int]:
        nid = inode.nid
        mem = self.mem
        arena = mem.arena
        a, b = maps[0].la, maps[-1].end
        q0, q1 = a // PS, -(-b // PS)
        undo: Undo = []
        try:
            folio, insertable = self._output_buffer(undo, nid, q1 - q0)
            view = arena.folio_view(folio)
            undo.append((view.release,))
            for m in maps:
                step: Undo = []
                try:
                    src = zd.source(step, self, inode, m)
                    off = m.la - q0 * PS
                    zd.decode(inode, m, src, view[off : off + m.llen])
                finally:
                    undo_all(step)
            end_in_buf = b - q0 * PS
            if b >= inode.size:  # erofs: bytes past EOF read as zeros
                view[end_in_buf : folio.nr_pages * PS] = bytes(folio.nr_pages * PS - end_in_buf)
            contiguous = all(x.end == y.la for x, y in itertools.pairwise(maps))
            if insertable and contiguous and zd.insert_folio(inode, folio, q0, a, b):
                page = mem.cache.find(nid, want)
                assert page is not None
                return page, q0 + folio.nr_pages
            ranges = [(m.la, m.end) for m in maps]
            touched: dict[int, Page] = {}
            locked: list[Page] = []
            try:
                for q in range(q0, q1):
                    qs, qe = q * PS, min((q + 1) * PS, inode.size)
                    parts = [(max(x, qs), min(y, qe)) for x, y in ranges if x < qe and y > qs]
                    if not parts:
                        continue
                    pg, _created = mem.grab(nid, q, f"nid {nid}")
                    touched[q] = pg
                    if pg.is_uptodate:
                        continue
                    if not pg.is_locked:
                        pg.lock()
                    locked.append(pg)
                    v = arena.page_view(pg)
                    for x, y in parts:
                        v[x - qs : y - qs] = view[x - q0 * PS : y - q0 * PS]
                        mem.counters.copy_bytes += y - x
                    v.release()
                page, complete = zd.settle(inode, touched, ranges, want)
                locked = zd.end_complete(complete, locked)
                return page, zd.uptodate_run(touched, want)
            finally:
                arena.end_read(locked, False)
                mem.cache.release_pages(touched.values())
        finally:
            undo_all(undo)


class ContigFolioStrategy(BufferedStrategy):
    name = "contig-folio"

    def _input_buffer(self, undo: Undo, nid: int, nr_pages: int) -> Page:
        mem = self.mem
        folio = mem.alloc(order_for(nr_pages), Owner.DECOMPRESS, f"nid {nid}",
                          "compressed input folio")  # fmt: skip
        undo.append((mem.arena.free_pages, folio))
        return folio

    def _output_buffer(self, undo: Undo, nid: int, nr_pages: int) -> tuple[Page, bool]:
        mem = self.mem
        folio = mem.alloc(order_for(nr_pages), Owner.DECOMPRESS, f"nid {nid}",
                          "decompressed output folio")  # fmt: skip
        # the page cache takes its own reference when the folio is inserted
        undo.append((mem.arena.free_pages, folio))
        return folio, True


class PercpuBufferStrategy(BufferedStrategy):
    name = "percpu-buffer"

    def __init__(self, mem: ReadMemory, image: ImageBytes, sbi: ErofsSuper) -> None:
        super().__init__(mem, image, sbi)
        self.buffers: dict[str, Page] = {}
        sb = sbi.sb
        compressed = bool(
            sb.feature_incompat
            & (f.EROFS_FEATURE_INCOMPAT_ZERO_PADDING | f.EROFS_FEATURE_INCOMPAT_COMPR_CFGS)
            or sb.u1  # lz4_max_distance: mkfs sets it whenever it compresses
        )
        if not compressed:
            return
        # lz4's cfg names the largest pcluster; other algorithms start from
        # one block and grow the buffers when a pcluster needs it
        max_pcluster = sbi.compr.lz4_max_pclusterblks * sbi.block_size
        max_pcluster = max(min(max_pcluster, f.Z_EROFS_PCLUSTER_MAX_SIZE), PS)
        self.buffers["in"] = mem.alloc(
            order_for(-(-max_pcluster // PS)), Owner.PERCPU, "", "percpu input buffer at mount"
        )
        try:
            out_bytes = min(max(4 * max_pcluster, 64 << 10), 4 << 20)
            self.buffers["out"] = mem.alloc(
                order_for(out_bytes // PS), Owner.PERCPU, "", "percpu output buffer at mount"
            )
        except BaseException:
            self.close()
            raise

    def _grow(self, which: str, nr_pages: int, nid: int) -> Page:
        mem = self.mem
        cur = self.buffers.get(which)
        if cur is not None and cur.nr_pages >= nr_pages:
            return cur
        if cur is not None:
            del self.buffers[which]
            mem.arena.free_pages(cur)
        page = mem.alloc(order_for(nr_pages), Owner.PERCPU, f"nid {nid}",
                         f"percpu {which}put buffer")  # fmt: skip
        mem.counters.percpu_grows += 1
        self.buffers[which] = page
        return page

    def _input_buffer(self, undo: Undo, nid: int, nr_pages: int) -> Page:
        return self._grow("in", nr_pages, nid)

    def _output_buffer(self, undo: Undo, nid: int, nr_pages: int) -> tuple[Page, bool]:
        return self._grow("out", nr_pages, nid), False

    def close(self) -> None:
        while self.buffers:
            _which, buf = self.buffers.popitem()
            self.mem.arena.free_pages(buf)


STRATEGIES: Final[dict[str, type[DecodeStrategy]]] = {
    cls.name: cls
    for cls in (VmapStrategy, BounceStrategy, ContigFolioStrategy, PercpuBufferStrategy)
}


def make_strategy(
    name: StrategyName, mem: ReadMemory, image: ImageBytes, sbi: ErofsSuper
) -> DecodeStrategy:
    """The strategy ``--decompress name`` asks for, ready for this image."""
    return STRATEGIES[name](mem, image, sbi)
