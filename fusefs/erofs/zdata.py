"""Compressed file data through the simulated machine's memory (after the
kernel's ``fs/erofs/zdata.c``): every ``read()`` of a compressed file is
served from page-cache frames of the image's arena, and its pclusters are
decoded *into* those frames by the mount's strategy
(:mod:`fusefs.erofs.zutil`).

This module keeps what every strategy shares: which extents a page needs,
where a pcluster's bytes come from (data blocks, inline in the metadata, a
fragment of the packed inode), the decoder call, and the pages written only
in part by one extent, kept (with a reference) until the neighbouring
extent completes them.

An allocation the arena cannot satisfy raises ``OutOfMemoryError`` (ENOMEM)
naming the nid, what was being allocated and its order.  Every page taken is
unlocked and released, every mapping unmapped and every buffer freed, on
success and on failure alike.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Final

from fusefs.erofs import format as f
from fusefs.erofs.data import ENCODED, FRAGMENT, META, PARTIAL_REF, Map
from fusefs.erofs.decompress import decompress
from fusefs.erofs.inode import ErofsInode
from fusefs.erofs.super import ErofsSuper
from fusefs.erofs.zmap import ZMap
from fusefs.erofs.zutil import DecodeStrategy, Undo, make_strategy
from fusefs.errors import CorruptImageError, Extent, OutOfMemoryError
from fusefs.memory import ReadMemory
from fusefs.vfs import ImageBytes, Strategy
from mmshim import PAGE_SIZE, Page

PS: Final = PAGE_SIZE
PENDING_MAX: Final = 32
# bytes of a fragment extent one fill reads (from the page it starts at)
FRAGMENT_WINDOW: Final = 32 * PS


def _covers(ranges: list[tuple[int, int]], start: int, end: int) -> bool:
    """Do the half-open ``ranges`` cover ``[start, end)``?"""
    cur = start
    for a, b in sorted(ranges):
        if a > cur:
            break
        cur = max(cur, b)
    return cur >= end


def _alg_name(m: Map) -> str:
    """``lz4`` ... for an encoded extent, else its kind (``fragment``, ``plain``)."""
    return f.ALGORITHM_NAMES.get(m.algorithm, m.kind) if m.flags & ENCODED else m.kind


def _clip_fragment(m: Map, lo: int) -> Map:
    """The part of a fragment extent a fill starting at ``lo`` reads: a
    fragment is plain bytes of the packed inode, so it can be read in any
    piece, and a whole-file fragment is as long as the file claims to be
    (the kernel reads the packed inode page by page too)."""
    a = max(m.la, lo)
    b = min(m.end, lo + FRAGMENT_WINDOW)
    return m.clipped(a, b - a)


class ZData:
    """The compressed read path of one open image."""

    def __init__(
        self,
        mem: ReadMemory,
        image: ImageBytes,
        sbi: ErofsSuper,
        strategy: Strategy,
        read_fragment: Callable[[int, int], bytes],
    ) -> None:
        self.mem = mem
        self.image = image
        self.sbi = sbi
        self.read_fragment = read_fragment
        self.zero_padding = sbi.has(f.EROFS_FEATURE_INCOMPAT_ZERO_PADDING)
        # pages partly written by one extent, waiting for their neighbour
        self.pending: collections.OrderedDict[tuple[int, int], tuple[Page, list[tuple[int, int]]]]
        self.pending = collections.OrderedDict()
        self.pending_max = max(1, min(PENDING_MAX, mem.arena.nr_pages // 32))
        self.strategy: DecodeStrategy = make_strategy(strategy, mem, image, sbi)
        self._fragments: dict[int, bytes] = {}  # the fill's fragments, by extent start

    def fill(self, inode: ErofsInode, zmap: ZMap, p: int, p_end: int | None) -> tuple[Page, int]:
        """Decode the extents overlapping page ``p`` that it does not hold yet
        into the page cache; returns page ``p`` with a reference for the
        caller, and the index after the run of uptodate pages from ``p``.

        With ``p_end`` (a read that is not sequential), mapped strategies
        decode an extent only as far as the request (pages before ``p_end``)
        needs, as the kernel decodes a pcluster partially for a read that
        ends inside it; the rest of the extent is decoded (from its start
        again) when it is read."""
        nid = inode.nid
        self.mem.reclaim()
        limit = max(p_end, p + 1) * PS if p_end is not None else inode.size
        # Fragments first: reading one reads the packed inode, through this
        # same path and strategy (its buffers, its reclaim), so it must be
        # done before this fill takes any page or buffer of its own.  That
        # read may also push this page's own pending record out (pending is
        # bounded), and then the page needs again the extents the record
        # held: so what the page needs is decided after the fragments are
        # read, and any fragment it then needs besides is read too.
        fragments: dict[int, bytes] = {}
        while True:
            maps = self._extents_needed(inode, zmap, p)
            missing = [m for m in maps if m.flags & FRAGMENT and m.la not in fragments]
            if not missing:
                break
            for m in missing:
                fragments[m.la] = self.read_fragment(m.fragmentoff, m.llen)
        self._fragments = fragments
        try:
            page, upto = self.strategy.run(self, inode, maps, p, limit)
        except OutOfMemoryError as e:  # say which extents the failed decode was for
            e.extents = tuple(Extent(m.la, m.llen, m.plen, _alg_name(m)) for m in maps)
            raise
        finally:
            self._fragments = {}
        if not page.is_uptodate:
            self.mem.cache.release(page)
            raise CorruptImageError(f"page {p} was not filled", structure="erofs data", nid=nid)
        return page, upto

    def _extents_needed(self, inode: ErofsInode, zmap: ZMap, p: int) -> list[Map]:
        """The extents overlapping page ``p`` that its pending record (bytes
        already written by a neighbouring extent) does not cover."""
        lo, hi = p * PS, min((p + 1) * PS, inode.size)
        rec = self.pending.get((inode.nid, p))
        have = rec[1] if rec is not None else []
        maps = []
        pos = lo
        while pos < hi:
            m = zmap.map(pos)
            if m.flags & FRAGMENT:
                m = _clip_fragment(m, lo)
            if not have or not _covers(have, max(m.la, lo), min(m.end, hi)):
                maps.append(m)
            pos = m.end
        if not maps:
            raise CorruptImageError(
                f"page {p} maps to no data", structure="erofs data", nid=inode.nid
            )
        return maps

    # -- what the strategies share ---------------------------------------------------

    def source(
        self, undo: Undo, strategy: DecodeStrategy, inode: ErofsInode, m: Map
    ) -> memoryview:
        """The pcluster's bytes: inline ones from metadata, fragments from the
        packed inode, the rest in arena memory as the strategy reads them in."""
        if m.flags & META:  # the image, or the inode's record in the metabox
            return inode.meta.slice(m.pa, m.plen, structure="erofs inline pcluster", nid=inode.nid)
        if m.flags & FRAGMENT:
            return memoryview(self._fragments[m.la])  # read by fill()
        return strategy.read_input(undo, inode.nid, m)

    def decode(self, inode: ErofsInode, m: Map, src: memoryview, dst: memoryview) -> None:
        """Decode ``m`` into ``dst``: all of it, or the prefix ``dst`` is long."""
        bs = self.sbi.block_size
        pad_window = bs - m.pa % bs if m.flags & META else min(bs, m.plen)
        algorithm = f.Z_EROFS_COMPRESSION_SHIFTED if m.flags & FRAGMENT else m.algorithm
        decompress(
            algorithm,
            src,
            dst,
            cfg=self.sbi.compr,
            zero_padding=self.zero_padding,
            partial=bool(m.flags & PARTIAL_REF) or len(dst) < m.llen,
            pad_window=pad_window,
            la=m.la,
            block_size=bs,
            where=lambda: f"erofs inode nid {inode.nid} extent [{m.la}, {m.end}) @{m.pa:#x}",
        )
        counters = self.mem.counters
        counters.bytes_decompressed += len(dst)
        counters.pclusters_decoded += 1

    def end_complete(self, complete: list[Page], locked: list[Page]) -> list[Page]:
        """Mark ``complete`` uptodate as they are unlocked (``folio_end_read``),
        in one call; the pages of ``locked`` still to be unlocked."""
        self.mem.arena.end_read(complete, True)
        done = set(map(id, complete))
        return [pg for pg in locked if id(pg) not in done]

    @staticmethod
    def uptodate_run(pages: dict[int, Page], want: int) -> int:
        """The index after the run of uptodate ``pages`` that starts at ``want``."""
        q = want
        while (pg := pages.get(q)) is not None and pg.is_uptodate:
            q += 1
        return q

    def settle(
        self, inode: ErofsInode, touched: dict[int, Page], ranges: list[tuple[int, int]], want: int
    ) -> tuple[Page, list[Page]]:
        """After ``ranges`` were written into ``touched`` pages: which pages
        are complete (returned, for the caller to mark uptodate as it unlocks
        them), and which stay pending (with a reference, so the bytes already
        there are not lost to eviction) until the neighbouring extent fills
        them.  Also returns ``want`` with a new reference."""
        nid = inode.nid
        size = inode.size
        arena = self.mem.arena
        cache = self.mem.cache
        pending = self.pending
        complete: list[Page] = []
        for q, pg in touched.items():
            if pg.is_uptodate:
                continue
            qs = q * PS
            qe = min(qs + PS, size)
            key = (nid, q)
            rec = pending.get(key) if pending else None
            if rec is None:
                for a, b in ranges:
                    if a <= qs and b >= qe:
                        break
                else:
                    a = -1
                if a >= 0:  # the common case: a page inside one decoded extent
                    if qe - qs < PS:
                        self._zero_tail(inode, q, pg)
                    complete.append(pg)
                    continue
            cov = (rec[1] if rec is not None else []) + [
                (max(a, qs), min(b, qe)) for a, b in ranges if a < qe and b > qs
            ]
            if _covers(cov, qs, qe):
                self._zero_tail(inode, q, pg)
                complete.append(pg)
                if rec is not None:
                    del pending[key]
                    cache.release(rec[0])
            elif rec is not None:
                pending[key] = (rec[0], cov)
                pending.move_to_end(key)
            elif cov:
                arena.get_page(pg)
                pending[key] = (pg, cov)
        while len(pending) > self.pending_max:
            _key, (old, _cov) = pending.popitem(last=False)
            cache.release(old)
        page = touched[want]
        arena.get_page(page)
        return page, complete

    def _zero_tail(self, inode: ErofsInode, q: int, pg: Page) -> None:
        used = inode.size - q * PS
        if used < PS:
            v = self.mem.arena.page_view(pg)
            v[used:] = bytes(PS - used)
            v.release()

    def insert_folio(self, inode: ErofsInode, folio: Page, q0: int, a: int, b: int) -> bool:
        """Add a decoded folio to the page cache as is, when every page of it is valid."""
        nr = folio.nr_pages
        size = inode.size
        if not all(q * PS >= a and min((q + 1) * PS, size) <= b for q in range(q0, q0 + nr)):
            return False
        cache = self.mem.cache
        for q in range(q0, q0 + nr):
            pg = cache.find(inode.nid, q)
            if pg is not None:
                cache.release(pg)
                return False
        folio.set_uptodate()
        cache.add_folio(inode.nid, q0, folio)
        self.mem.counters.folios_added += 1
        return True

    def close(self) -> None:
        while self.pending:
            _key, (pg, _cov) = self.pending.popitem()
            self.mem.cache.release(pg)
        self.strategy.close()
