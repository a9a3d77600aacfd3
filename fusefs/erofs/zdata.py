"""File data through the simulated machine's memory: every ``read()`` is served
from page-cache frames of an ``mmshim`` arena, and compressed pclusters are
decoded *into* those frames (after the kernel's ``fs/erofs/zdata.c`` and
``data.c``).

What reading costs depends on the per-mount strategy (``--decompress``):

``vmap``
    The output pages of a pcluster are order-0 page-cache frames, as the
    allocator hands them out; they are ``vmap()``-ed and the decoder writes
    through the mapping (EROFS with an MMU).  A multi-page compressed input
    is ``vm_map_ram()``-ed too.  The arena's mode decides what that means:
    ``mmu`` aliases the frames (no copy), ``nommu-contig`` fails with ENOMEM
    unless the frames happen to be physically contiguous, ``nommu-bounce``
    copies through an arena bounce buffer (``bounce_bytes``).
``bounce``
    The posted nommu patch, whatever the arena mode: contiguous pages are
    used in place; scattered ones are copied into a contiguous bounce
    allocation from the arena at map time and copied back at unmap
    (``copy_bytes`` counts both directions).  So it differs from ``vmap``
    under ``mmu`` (where vmap would alias) and under ``nommu-contig``
    (where vmap would fail): it works as long as one contiguous block of the
    extent's size can be found.
``contig-folio``
    The reviewers' advice: the output of the pclusters that cover a page is
    one high-order folio (``alloc_pages(order)``), decoded into directly, no
    vmap.  When that folio is exactly the file's pages (a small file in one
    extent, say) it is inserted into the page cache as is (``folios_added``);
    otherwise the complete pages are copied into order-0 page-cache frames
    (``copy_bytes``) and the folio freed.  Compressed input is a folio too.
    Under fragmentation the high-order allocation fails: ENOMEM, no fallback.
``percpu-buffer``
    One contiguous output buffer and one input buffer reserved from the arena
    when the image is opened (sized for the largest pcluster, and for a few
    times that of decoded output; grown, like the kernel's global buffers,
    when an extent needs more: ``percpu_grows``).  Compressed data is read
    into the input buffer, decoded into the output buffer and copied out
    page by page into order-0 page-cache frames (``copy_bytes``).

Uncompressed files (and uncompressed extents) are read into order-0 page
cache frames by copying from the image (the "disk read"; not counted in
``copy_bytes``).  Metadata — directories, symlinks, xattrs, indexes, inline
pclusters — is read from the mapped image directly, as the kernel's meta
buffers are.

An allocation the arena cannot satisfy raises ``OutOfMemoryError`` (ENOMEM)
naming the nid, what was being allocated and its order.  Every page taken is
unlocked and released, every mapping unmapped and every buffer freed, on
success and on failure alike.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

from fusefs.erofs import format as f
from fusefs.erofs.data import Extent
from fusefs.erofs.decompress import decompress
from fusefs.erofs.inode import ErofsInode
from fusefs.erofs.super import ErofsSuper
from fusefs.erofs.zmap import ZExtent, ZKind, ZMap
from fusefs.errors import CorruptImageError, FsError, OutOfMemoryError
from fusefs.vfs import ImageBytes, MemoryConfig
from mmshim import PAGE_SIZE, Arena, MmshimError, Owner, Page, PageCache, is_contiguous

PS = PAGE_SIZE
PENDING_MAX = 32
# files whose next sequential offset is remembered (the kernel's file_ra_state)
SEQ_TRACK = 64
# pages of an uncompressed file read in one go (a readahead window of 64 KiB)
PLAIN_BATCH = 16


def _covers(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Do the half-open ``ranges`` cover ``[start, end)``?"""
    cur = start
    for a, b in sorted(ranges):
        if a > cur:
            break
        cur = max(cur, b)
    return cur >= end


def order_for(nr_pages: int) -> int:
    """The smallest order whose folio holds ``nr_pages`` frames."""
    return max(nr_pages - 1, 0).bit_length()


@dataclass(slots=True)
class ReadCounters:
    bytes_decompressed: int = 0  # bytes produced by decoding pclusters (plain ones included)
    copy_bytes: int = 0  # memory-to-memory copies the strategy needed
    pclusters_decoded: int = 0
    folios_added: int = 0
    percpu_grows: int = 0


class PageReader:
    """Owns the arena and the page cache of one open image."""

    def __init__(self, image: ImageBytes, sbi: ErofsSuper, memory: MemoryConfig) -> None:
        self.image = image
        self.sbi = sbi
        self.memory = memory
        self.strategy = memory.decompress
        self.arena = Arena(memory.arena_bytes, memory.mm, name="nommufs-erofs")
        self.cache = PageCache(self.arena)
        self.counters = ReadCounters()
        self.percpu_out: Page | None = None
        self.percpu_in: Page | None = None
        self.read_fragment: Callable[[int, int], bytes] | None = None
        # pages partly written by one extent, waiting for their neighbour
        self.pending: collections.OrderedDict[tuple[int, int], tuple[Page, list[tuple[int, int]]]]
        self.pending = collections.OrderedDict()
        self.pending_max = max(1, min(PENDING_MAX, self.arena.nr_pages // 32))
        # nid -> where the last read of it ended: a read from there (or from
        # 0) is sequential and decodes whole extents, others decode the prefix
        # of an extent that the request needs
        self.next_offset: collections.OrderedDict[int, int] = collections.OrderedDict()
        # reclaim in batches below a watermark (the kernel's kswapd does the
        # same): one pass over the LRU frees many frames instead of one
        self.low_watermark = max(8, self.arena.nr_pages // 32)
        self.reclaim_batch = max(32, self.arena.nr_pages // 16)
        sb = sbi.sb
        compressed = bool(
            sb.feature_incompat
            & (f.EROFS_FEATURE_INCOMPAT_ZERO_PADDING | f.EROFS_FEATURE_INCOMPAT_COMPR_CFGS)
            or sb.u1  # lz4_max_distance: mkfs sets it whenever it compresses
        )
        if self.strategy == "percpu-buffer" and compressed:
            try:
                # lz4's cfg names the largest pcluster; other algorithms start
                # from one block and grow the buffers when a pcluster needs it
                max_pcluster = self.sbi.compr.lz4_max_pclusterblks * self.sbi.block_size
                max_pcluster = max(min(max_pcluster, f.Z_EROFS_PCLUSTER_MAX_SIZE), PS)
                self.percpu_in = self._alloc(
                    order_for(-(-max_pcluster // PS)),
                    Owner.PERCPU,
                    None,
                    "percpu input buffer at mount",
                )
                out_bytes = min(max(4 * max_pcluster, 64 << 10), 4 << 20)
                self.percpu_out = self._alloc(
                    order_for(out_bytes // PS), Owner.PERCPU, None, "percpu output buffer at mount"
                )
            except BaseException:
                self.close()
                raise

    # -- allocation helpers ------------------------------------------------------

    def _alloc(self, order: int, owner: Owner, nid: int | None, what: str) -> Page:
        try:
            return self.arena.alloc_pages(order, owner)
        except MemoryError as e:
            who = f"nid {nid}: " if nid is not None else ""
            raise OutOfMemoryError(
                f"erofs: {who}cannot allocate {what} (order {order}): {e}"
            ) from None

    def _page(self, nid: int, index: int) -> Page:
        try:
            return self.cache.find_or_create(nid, index)
        except MemoryError as e:
            raise OutOfMemoryError(
                f"erofs: nid {nid}: cannot allocate page cache page {index} (order 0): {e}"
            ) from None

    def _grow(self, which: str, nr_pages: int, nid: int) -> Page:
        cur = self.percpu_out if which == "out" else self.percpu_in
        if cur is not None and cur.nr_pages >= nr_pages:
            return cur
        if cur is not None:
            self.arena.free_pages(cur)
        if which == "out":
            self.percpu_out = None
        else:
            self.percpu_in = None
        page = self._alloc(order_for(nr_pages), Owner.PERCPU, nid, f"percpu {which}put buffer")
        self.counters.percpu_grows += 1
        if which == "out":
            self.percpu_out = page
        else:
            self.percpu_in = page
        return page

    # -- reading -----------------------------------------------------------------

    def read(
        self,
        inode: ErofsInode,
        offset: int,
        size: int,
        mapper: Callable[[int], Extent] | None,
        zmap: ZMap | None,
    ) -> bytes:
        """Bytes ``[offset, offset + size)`` of a file (short at EOF), through the page cache."""
        end = min(offset + size, inode.size)
        if offset >= end:
            return b""
        nid = inode.nid
        cache, page_view = self.cache, self.arena.page_view
        sequential = offset == 0 or self.next_offset.get(nid) == offset
        self.next_offset[nid] = end
        self.next_offset.move_to_end(nid)
        if len(self.next_offset) > SEQ_TRACK:
            self.next_offset.popitem(last=False)
        # one bytes object per page, joined once: nothing is allocated ahead
        # of the pages actually read, so a hostile i_size costs nothing
        parts: list[bytes] = []
        p, p1 = offset // PS, (end - 1) // PS + 1
        # Pages are looked up in runs under one lock.  A run is what the last
        # fill made uptodate (present unless evicted since), or else a window
        # that starts at one page and doubles while every page hits, so a
        # cold read looks up each page once, as page-by-page lookups would.
        known, window = 0, 1
        while p < p1:
            if known:
                nr = min(known, p1 - p)
            else:
                nr = min(window, p1 - p)
                window = min(window * 2, 64)
            found = cache.find_range(nid, p, nr)
            known = 0
            missed = False
            try:
                for page in found:
                    if page is None or not page.is_uptodate:
                        missed = True
                        window = 1
                        break
                    base = p * PS
                    with page_view(page) as view:
                        parts.append(view[max(offset - base, 0) : min(end - base, PS)].tobytes())
                    p += 1
            finally:
                cache.release_pages([pg for pg in found if pg is not None])
            if not missed:
                continue
            if zmap is not None:
                page, upto = self._fill_compressed(inode, zmap, p, p1 if not sequential else None)
            else:
                assert mapper is not None
                page, upto = self._fill_plain(inode, mapper, p, p1)
            try:
                base = p * PS
                with page_view(page) as view:
                    parts.append(view[max(offset - base, 0) : min(end - base, PS)].tobytes())
            finally:
                cache.release(page)
            p += 1
            known = upto - p
        return b"".join(parts)

    def _reclaim(self) -> None:
        """Evict a batch of clean page-cache pages when free frames run low."""
        if self.arena.frames_free < self.low_watermark:
            self.cache.evict(self.reclaim_batch)

    def _fill_plain(
        self, inode: ErofsInode, mapper: Callable[[int], Extent], p: int, p_end: int
    ) -> tuple[Page, int]:
        """Read page ``p`` and the following ones (up to the request's end, at
        most ``PLAIN_BATCH`` pages, as readahead would) of an uncompressed
        file from the image; returns page ``p`` with a reference for the
        caller, and the index after the last page read."""
        nid = inode.nid
        self._reclaim()
        got = self._pages(nid, p, max(1, min(p_end - p, PLAIN_BATCH)))
        locked = [pg for pg, created in got if created]  # new pages come locked
        ext: Extent | None = None
        try:
            for q, (page, _created) in enumerate(got, p):
                if page.is_uptodate:
                    continue
                if not page.is_locked:
                    page.lock()
                    locked.append(page)
                ext = self._copy_plain(inode, mapper, q, page, ext)
                page.set_uptodate()
        except BaseException:
            self.cache.release_pages([pg for pg, _created in got])
            raise
        finally:
            for pg in locked:
                pg.unlock()
        self.cache.release_pages([pg for pg, _created in got[1:]])
        return got[0][0], p + len(got)

    def _copy_plain(
        self,
        inode: ErofsInode,
        mapper: Callable[[int], Extent],
        q: int,
        page: Page,
        ext: Extent | None,
    ) -> Extent | None:
        """Copy page ``q`` from the image; ``ext`` is the last extent mapped
        (reused while it covers the page), the one used last is returned."""
        with self.arena.page_view(page) as view:
            pos, end = q * PS, min((q + 1) * PS, inode.size)
            while pos < end:
                if ext is None or not ext.la <= pos < ext.la + ext.llen:
                    ext = mapper(pos)
                stop = min(ext.la + ext.llen, end)
                if stop <= pos:
                    raise CorruptImageError(
                        f"empty extent at {pos}", structure="erofs map", nid=inode.nid
                    )
                if ext.pa is None:
                    view[pos - q * PS : stop - q * PS] = bytes(stop - pos)
                else:
                    src = ext.pa + pos - ext.la
                    self.image.check(src, stop - pos, structure="erofs data", nid=inode.nid)
                    view[pos - q * PS : stop - q * PS] = self.image.view[src : src + stop - pos]
                pos = stop
            if end - q * PS < PS:
                view[end - q * PS :] = bytes(PS - (end - q * PS))
        return ext

    # -- compressed files ----------------------------------------------------------

    def _fill_compressed(
        self, inode: ErofsInode, zmap: ZMap, p: int, p_end: int | None = None
    ) -> tuple[Page, int]:
        """Decode the extents overlapping page ``p`` that it does not hold yet
        into the page cache; returns page ``p`` with a reference for the
        caller, and the index after the run of uptodate pages from ``p``.

        With ``p_end`` (a read that is not sequential), ``vmap``/``bounce``
        decode an extent only as far as the request (pages before ``p_end``)
        needs, as the kernel decodes a pcluster partially for a read that
        ends inside it; the rest of the extent is decoded (from its start
        again) when it is read."""
        nid = inode.nid
        self._reclaim()
        lo, hi = p * PS, min((p + 1) * PS, inode.size)
        rec = self.pending.get((nid, p))
        have = rec[1] if rec is not None else []
        extents = []
        pos = lo
        while pos < hi:
            e = zmap.map(pos)
            if not _covers(have, max(e.la, lo), min(e.end, hi)):
                extents.append(e)
            pos = e.end
        if not extents:
            raise CorruptImageError(f"page {p} maps to no data", structure="erofs data", nid=nid)
        if self.strategy in ("vmap", "bounce"):
            limit = max(p_end, p + 1) * PS if p_end is not None else inode.size
            page, upto = self._run_mapped(inode, extents, p, limit)
        else:
            page, upto = self._run_buffered(inode, extents, p)
        if not page.is_uptodate:
            self.cache.release(page)
            raise CorruptImageError(f"page {p} was not filled", structure="erofs data", nid=nid)
        return page, upto

    @staticmethod
    def _uptodate_run(pages: dict[int, Page], want: int) -> int:
        """The index after the run of uptodate ``pages`` that starts at ``want``."""
        q = want
        while (pg := pages.get(q)) is not None and pg.is_uptodate:
            q += 1
        return q

    def _settle(
        self, inode: ErofsInode, touched: dict[int, Page], ranges: list[tuple[int, int]], want: int
    ) -> Page:
        """After ``ranges`` were written into ``touched`` pages: complete pages
        become uptodate, partly written ones stay pending (with a reference,
        so the bytes already there are not lost to eviction) until the
        neighbouring extent fills them.  Returns ``want`` with a new reference."""
        nid = inode.nid
        size = inode.size
        for q, pg in touched.items():
            if pg.is_uptodate:
                continue
            qs, qe = q * PS, min((q + 1) * PS, size)
            key = (nid, q)
            if key not in self.pending and any(a <= qs and b >= qe for a, b in ranges):
                # the common case: a page inside one decoded extent
                if qe - qs < PS:
                    self._zero_tail(inode, q, pg)
                pg.set_uptodate()
                continue
            rec = self.pending.get(key)
            cov = (rec[1] if rec is not None else []) + [
                (max(a, qs), min(b, qe)) for a, b in ranges if a < qe and b > qs
            ]
            if _covers(cov, qs, qe):
                self._zero_tail(inode, q, pg)
                pg.set_uptodate()
                if rec is not None:
                    del self.pending[key]
                    self.cache.release(rec[0])
            elif rec is not None:
                self.pending[key] = (rec[0], cov)
                self.pending.move_to_end(key)
            elif cov:
                self.arena.get_page(pg)
                self.pending[key] = (pg, cov)
        while len(self.pending) > self.pending_max:
            _key, (old, _cov) = self.pending.popitem(last=False)
            self.cache.release(old)
        page = touched[want]
        self.arena.get_page(page)
        return page

    def _complete(self, inode: ErofsInode, q: int, a: int, b: int) -> bool:
        """Is page ``q`` wholly inside the decoded range ``[a, b)`` (or beyond EOF)?"""
        return q * PS >= a and min((q + 1) * PS, inode.size) <= b

    def _input(self, stack: ExitStack, inode: ErofsInode, e: ZExtent) -> memoryview:
        """The pcluster's bytes in arena frames (or metadata, for inline ones)."""
        nid = inode.nid
        if e.kind is ZKind.INLINE:
            return self.image.slice(e.pa, e.plen, structure="erofs inline pcluster", nid=nid)
        if e.kind is ZKind.FRAGMENT:
            assert self.read_fragment is not None
            return memoryview(self.read_fragment(e.fragmentoff, e.llen))
        self.image.check(e.pa, e.plen, structure="erofs pcluster", nid=nid)
        disk = self.image.view  # the "device": copied from, never kept
        nin = -(-e.plen // PS)
        if self.strategy == "percpu-buffer":
            buf = self._grow("in", nin, nid)
            view = self.arena.folio_view(buf)
            stack.callback(view.release)
            view[: e.plen] = disk[e.pa : e.pa + e.plen]
            return view[: e.plen]
        if self.strategy == "contig-folio":
            folio = self._alloc(order_for(nin), Owner.DECOMPRESS, nid, "compressed input folio")
            stack.callback(self.arena.free_pages, folio)
            view = self.arena.folio_view(folio)
            stack.callback(view.release)
            view[: e.plen] = disk[e.pa : e.pa + e.plen]
            return view[: e.plen]
        pages: list[Page] = []
        stack.callback(self.arena.free_pages_exact, pages)  # order-0 pages, one lock
        page_view = self.arena.page_view
        for i in range(nin):
            pg = self._alloc(0, Owner.DECOMPRESS, nid, "compressed input page")
            pages.append(pg)
            n = min(PS, e.plen - i * PS)
            with page_view(pg) as v:
                v[:n] = disk[e.pa + i * PS : e.pa + i * PS + n]
        if nin == 1:
            v = self.arena.page_view(pages[0])
            stack.callback(v.release)
            return v[: e.plen]
        view = self._map(stack, pages, nid, "compressed input", ram=True)
        return view[: e.plen]

    def _map(
        self, stack: ExitStack, pages: list[Page], nid: int, what: str, *, ram: bool = False
    ) -> memoryview:
        """A virtually contiguous view of ``pages`` per the strategy; undone by ``stack``."""
        if self.strategy == "bounce" and not is_contiguous(pages):
            return self._bounce(stack, pages, nid, what)
        try:
            m = self.arena.vm_map_ram(pages) if ram else self.arena.vmap(pages)
        except MemoryError as e:
            raise OutOfMemoryError(
                f"erofs: nid {nid}: cannot vmap {len(pages)} pages of {what} "
                f"(order 0, {self.arena.mode}): {e}"
            ) from None
        stack.callback(self.arena.vm_unmap_ram if ram else self.arena.vunmap, m)
        return m.view

    def _bounce(self, stack: ExitStack, pages: list[Page], nid: int, what: str) -> memoryview:
        n = len(pages)
        buf = self._alloc(order_for(n), Owner.BOUNCE, nid, f"bounce buffer for {what}")
        stack.callback(self.arena.free_pages, buf)
        view = self.arena.folio_view(buf)[: n * PS]

        def copy_back() -> None:
            for i, pg in enumerate(pages):
                v = self.arena.page_view(pg)
                v[:] = view[i * PS : (i + 1) * PS]
                v.release()
            self.counters.copy_bytes += n * PS
            view.release()

        for i, pg in enumerate(pages):  # the patch copies in at map time
            v = self.arena.page_view(pg)
            view[i * PS : (i + 1) * PS] = v
            v.release()
        self.counters.copy_bytes += n * PS
        stack.callback(copy_back)
        return view

    def _decode(self, inode: ErofsInode, e: ZExtent, src: memoryview, dst: memoryview) -> None:
        """Decode ``e`` into ``dst``: all of it, or the prefix ``dst`` is long."""
        bs = self.sbi.block_size
        pad_window = bs - e.pa % bs if e.kind is ZKind.INLINE else min(bs, e.plen)
        decompress(
            e.fmt,
            src,
            dst,
            cfg=self.sbi.compr,
            zero_padding=self.sbi.has(f.EROFS_FEATURE_INCOMPAT_ZERO_PADDING),
            partial=e.partial or len(dst) < e.llen,
            pad_window=pad_window,
            la=e.la,
            block_size=bs,
            where=f"erofs inode nid {inode.nid} extent [{e.la}, {e.end}) @{e.pa:#x}",
        )
        self.counters.bytes_decompressed += len(dst)
        self.counters.pclusters_decoded += 1

    def _pages(self, nid: int, start: int, nr: int) -> list[tuple[Page, bool]]:
        """Page-cache pages ``start .. start + nr - 1``, created where missing
        (locked, for the caller to fill), with a reference each."""
        try:
            return self.cache.get_or_create_range(nid, start, nr)
        except MemoryError as e:
            raise OutOfMemoryError(
                f"erofs: nid {nid}: cannot allocate page cache pages {start}..{start + nr - 1}"
                f" (order 0): {e}"
            ) from None

    def _run_mapped(
        self, inode: ErofsInode, extents: list[ZExtent], want: int, limit: int
    ) -> tuple[Page, int]:
        """``vmap`` / ``bounce``: decode each pcluster through a mapping of its output pages."""
        nid = inode.nid
        held: dict[int, Page] = {}
        locked: list[Page] = []
        ranges: list[tuple[int, int]] = []
        try:
            for e in extents:
                # the decoded prefix ends at a page boundary (limit) or the extent's end
                stop = min(e.end, max(limit, e.la + 1))
                ranges.append((e.la, stop))
                q0, q1 = e.la // PS, -(-stop // PS)
                # extents come in file order: only the first page can be shared
                # with the previous extent
                start = q0 + 1 if q0 in held else q0
                if start < q1:
                    for q, (pg, created) in enumerate(self._pages(nid, start, q1 - start), start):
                        held[q] = pg
                        if created:
                            locked.append(pg)  # new pages come locked
                        elif not pg.is_uptodate:
                            if not pg.is_locked:
                                pg.lock()
                            locked.append(pg)
                pages = [held[q] for q in range(q0, q1)]
                with ExitStack() as stack:
                    src = self._input(stack, inode, e)
                    with ExitStack() as out_stack:
                        view = self._map(out_stack, pages, nid, "decompressed output")
                        off = e.la - q0 * PS
                        self._decode(inode, e, src, view[off : off + stop - e.la])
            page = self._settle(inode, held, ranges, want)
            return page, self._uptodate_run(held, want)
        finally:
            for pg in locked:
                pg.unlock()
            self.cache.release_pages(held.values())

    def _zero_tail(self, inode: ErofsInode, q: int, pg: Page) -> None:
        used = inode.size - q * PS
        if used < PS:
            v = self.arena.page_view(pg)
            v[used:] = bytes(PS - used)
            v.release()

    def _run_buffered(
        self, inode: ErofsInode, extents: list[ZExtent], want: int
    ) -> tuple[Page, int]:
        """``contig-folio`` / ``percpu-buffer``: decode into one contiguous buffer, then
        insert it as a folio or copy the decoded bytes out into order-0 pages."""
        nid = inode.nid
        a, b = extents[0].la, extents[-1].end
        q0, q1 = a // PS, -(-b // PS)
        n = q1 - q0
        with ExitStack() as stack:
            if self.strategy == "contig-folio":
                folio = self._alloc(
                    order_for(n), Owner.DECOMPRESS, nid, "decompressed output folio"
                )
                own = [True]

                def drop() -> None:
                    if own[0]:
                        self.arena.free_pages(folio)

                stack.callback(drop)
            else:
                folio = self._grow("out", n, nid)
            view = self.arena.folio_view(folio)
            stack.callback(view.release)
            for e in extents:
                with ExitStack() as in_stack:
                    src = self._input(in_stack, inode, e)
                    off = e.la - q0 * PS
                    self._decode(inode, e, src, view[off : off + e.llen])
            end_in_buf = b - q0 * PS
            if b >= inode.size:  # erofs: bytes past EOF read as zeros
                view[end_in_buf : folio.nr_pages * PS] = bytes(folio.nr_pages * PS - end_in_buf)
            contiguous = all(x.end == y.la for x, y in itertools.pairwise(extents))
            if (
                self.strategy == "contig-folio"
                and contiguous
                and self._insert_folio(inode, folio, q0, a, b)
            ):
                own[0] = False
                self.arena.free_pages(folio)  # the page cache holds its own reference now
                page = self.cache.find(nid, want)
                assert page is not None
                return page, q0 + folio.nr_pages
            ranges = [(e.la, e.end) for e in extents]
            touched: dict[int, Page] = {}
            try:
                for q in range(q0, q1):
                    qs, qe = q * PS, min((q + 1) * PS, inode.size)
                    parts = [(max(x, qs), min(y, qe)) for x, y in ranges if x < qe and y > qs]
                    if not parts:
                        continue
                    pg = self._page(nid, q)
                    touched[q] = pg
                    if pg.is_uptodate:
                        continue
                    if not pg.is_locked:
                        pg.lock()
                    try:
                        v = self.arena.page_view(pg)
                        for x, y in parts:
                            v[x - qs : y - qs] = view[x - q0 * PS : y - q0 * PS]
                            self.counters.copy_bytes += y - x
                        v.release()
                    finally:
                        pg.unlock()
                page = self._settle(inode, touched, ranges, want)
                return page, self._uptodate_run(touched, want)
            finally:
                for pg in touched.values():
                    self.cache.release(pg)

    def _insert_folio(self, inode: ErofsInode, folio: Page, q0: int, a: int, b: int) -> bool:
        """Add the decoded folio to the page cache as is, when every page of it is valid."""
        nr = folio.nr_pages
        if not all(self._complete(inode, q, a, b) for q in range(q0, q0 + nr)):
            return False
        for q in range(q0, q0 + nr):
            pg = self.cache.find(inode.nid, q)
            if pg is not None:
                self.cache.release(pg)
                return False
        folio.set_uptodate()
        self.cache.add_folio(inode.nid, q0, folio)
        self.counters.folios_added += 1
        return True

    # -- lifetime ----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        st = self.arena.stats
        out: dict[str, int] = {}
        for name in st.__dataclass_fields__:
            value = getattr(st, name)
            if isinstance(value, int):
                out[name] = value
        for kind, frames in st.frames_by_owner.items():
            out[f"frames_{kind}"] = frames
        cc = self.cache.counters
        out["cache_hits"] = cc.hits
        out["cache_misses"] = cc.misses
        out["cache_evictions"] = cc.evictions
        out["bytes_decompressed"] = self.counters.bytes_decompressed
        out["copy_bytes"] = self.counters.copy_bytes
        out["pclusters_decoded"] = self.counters.pclusters_decoded
        out["folios_added"] = self.counters.folios_added
        out["percpu_grows"] = self.counters.percpu_grows
        return out

    def close(self) -> None:
        if self.arena.closed:
            return
        while self.pending:
            _key, (pg, _cov) = self.pending.popitem()
            self.cache.release(pg)
        for buf in (self.percpu_in, self.percpu_out):
            if buf is not None:
                self.arena.free_pages(buf)
        self.percpu_in = self.percpu_out = None
        try:
            self.cache.close()
            self.arena.close()
        except MmshimError as e:
            # a reference or mapping still held is a bug here; say so as an
            # FsError (nothing else leaves the library) naming what leaked
            raise FsError(f"erofs: closing the arena: {e}") from None
