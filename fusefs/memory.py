"""The simulated machine's memory behind one open image, for every format.

An open image reads file data through one :class:`ReadMemory`: an
``mmshim`` arena (the board's RAM), a page cache in it, the read path's own
counters, and the translation of an allocation the arena cannot satisfy
into :class:`~fusefs.errors.OutOfMemoryError` naming the file and what was
being allocated.  EROFS and cramfs both use it, so their
``memory_stats()`` have the same keys and mean the same thing.

:func:`filemap_read` is the page-cache read loop both formats share (the
kernel's ``filemap_read``): pages already uptodate are copied out in runs,
and a miss asks the format's ``fill`` to read the page in (and whatever
follows it that the fill chooses to read ahead).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields

from fusefs.errors import Allocation, FsError, OutOfMemoryError, Shortage
from fusefs.vfs import MemoryConfig
from mmshim import PAGE_SIZE, Arena, MmshimError, Owner, Page, PageCache, VmapError

PS = PAGE_SIZE
# pages looked up at once by filemap_read while every page hits (doubling from 1)
_WINDOW_MAX = 64


@dataclass(slots=True)
class ReadCounters:
    """What the read path did besides what the arena counts itself."""

    bytes_decompressed: int = 0  # bytes produced by decoders (plain pclusters included)
    copy_bytes: int = 0  # memory-to-memory copies a strategy needed (cramfs: flash -> frames)
    pclusters_decoded: int = 0  # EROFS pclusters (cramfs: compressed blocks) decoded
    folios_added: int = 0  # high-order folios inserted into the page cache as they are
    percpu_grows: int = 0  # times the percpu-buffer strategy had to grow its buffers
    flash_bytes_direct: int = 0  # read() served straight from flash (cramfs xip_read=direct)
    blocks_read: int = 0  # page-cache pages read in


class ReadMemory:
    """The arena, page cache and counters one open image reads through."""

    def __init__(self, memory: MemoryConfig, *, fmt: str) -> None:
        self.fmt = fmt
        self.arena = Arena(memory.arena_bytes, memory.mm, name=f"nommufs-{fmt}")
        self.cache = PageCache(self.arena)
        self.counters = ReadCounters()
        # reclaim in batches below a watermark (the kernel's kswapd does the
        # same): one pass over the LRU frees many frames instead of one
        self.low_watermark = max(8, self.arena.nr_pages // 32)
        self.reclaim_batch = max(32, self.arena.nr_pages // 16)

    def reclaim(self) -> None:
        """Evict a batch of clean page-cache pages when free frames run low."""
        if self.arena.frames_free < self.low_watermark:
            self.cache.evict(self.reclaim_batch)

    # -- allocations, with the arena's ENOMEM said as the reader's -------------------

    def allocation(self, what: str, order: int, blocks: int, err: MemoryError) -> Allocation:
        """What failed, as data: ``blocks`` blocks of ``order`` asked for ``what``,
        and the arena's free frames and largest free block at the failure."""
        st = self.arena.stats
        if isinstance(err, VmapError) and err.reason == "no-bounce-buffer":
            what, order, blocks = f"bounce buffer for {what}", err.order, 1
        contiguous = order > 0
        if isinstance(err, VmapError) and err.reason == "not-contiguous":
            shortage: Shortage = "not-contiguous"
            contiguous = True
        elif st.frames_free >= blocks << order and contiguous:
            shortage = "fragmented"
        else:
            shortage = "no-memory"
        return Allocation(what, order, blocks, contiguous, shortage, st.frames_free,
                          st.largest_free_order, self.arena.nr_pages, self.arena.mode)  # fmt: skip

    def _oom(
        self, who: str, what: str, order: int, err: MemoryError, blocks: int = 1
    ) -> OutOfMemoryError:
        detail = self.allocation(what, order, blocks, err)
        who = f"{who}: " if who else ""
        return OutOfMemoryError(
            f"{self.fmt}: {who}cannot allocate {what} (order {order}): {err}", allocation=detail
        )

    def alloc(self, order: int, owner: Owner, who: str, what: str) -> Page:
        """``alloc_pages(order)``; ENOMEM names ``who`` (``nid 36``) and ``what``."""
        try:
            return self.arena.alloc_pages(order, owner)
        except MemoryError as e:
            raise self._oom(who, what, order, e) from None

    def alloc_bulk(self, nr: int, owner: Owner, who: str, what: str) -> list[Page]:
        """``alloc_pages_bulk``: ``nr`` order-0 pages, all or none."""
        try:
            return self.arena.alloc_pages_bulk(nr, owner)
        except MemoryError as e:
            raise self._oom(who, what, 0, e, nr) from None

    def grab(self, mapping_id: Hashable, index: int, who: str) -> tuple[Page, bool]:
        """The page-cache page at ``index`` with a reference, and whether this
        call created it (locked, for the caller to fill)."""
        try:
            return self.cache.get_or_create(mapping_id, index)
        except MemoryError as e:
            raise self._oom(who, f"page cache page {index}", 0, e) from None

    def grab_range(
        self, mapping_id: Hashable, start: int, nr: int, who: str
    ) -> list[tuple[Page, bool]]:
        """Page-cache pages ``start .. start + nr - 1`` with a reference each,
        created where missing (locked, for the caller to fill)."""
        try:
            return self.cache.get_or_create_range(mapping_id, start, nr)
        except MemoryError as e:
            raise self._oom(
                who, f"page cache pages {start}..{start + nr - 1}", 0, e, nr
            ) from None

    # -- what it cost ----------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """Arena occupancy and counters, the page cache's and the read path's:
        the same keys for every format."""
        st = self.arena.stats
        out: dict[str, int] = {}
        for fld in fields(st):
            value = getattr(st, fld.name)
            if isinstance(value, int):
                out[fld.name] = value
        for kind, frames in st.frames_by_owner.items():
            out[f"frames_{kind}"] = frames
        out["page_cache_frames"] = st.frames_by_owner.get("page_cache", 0)
        cc = self.cache.counters
        out["cache_hits"] = cc.hits
        out["cache_misses"] = cc.misses
        out["cache_evictions"] = cc.evictions
        for fld in fields(self.counters):
            out[fld.name] = getattr(self.counters, fld.name)
        return out

    def close(self) -> None:
        """Drop the page cache and the arena; a reference or mapping still held is
        a bug of the reader, said as an FsError naming what leaked."""
        if self.arena.closed:
            return
        try:
            self.cache.close()
            self.arena.close()
        except MmshimError as e:
            raise FsError(f"{self.fmt}: closing the arena: {e}") from None


class SequentialReads:
    """Where the last read of each recently read file ended (the kernel's
    ``file_ra_state``, reduced to what the readers need).  A read is
    sequential when it starts at 0, or where the last one ended or up to a
    readahead window after it: the kernel's readahead sends a sequential
    reader's requests up to a window ahead, and a FUSE daemon's worker
    threads may take them slightly out of order."""

    def __init__(self, files: int = 64, window: int = 1 << 20) -> None:
        self.files = files
        self.window = window
        self._next: collections.OrderedDict[Hashable, int] = collections.OrderedDict()

    def note(self, mapping_id: Hashable, offset: int, end: int) -> bool:
        """Record a read of ``[offset, end)``; True if it is sequential."""
        nxt = self._next
        last = nxt.get(mapping_id)
        sequential = offset == 0 or (last is not None and 0 <= offset - last <= self.window)
        nxt[mapping_id] = end
        nxt.move_to_end(mapping_id)
        if len(nxt) > self.files:
            nxt.popitem(last=False)
        return sequential


Fill = Callable[[int], tuple[Page, int]]


def filemap_read(mem: ReadMemory, mapping_id: Hashable, offset: int, end: int, fill: Fill) -> bytes:
    """Bytes ``[offset, end)`` of a file through the page cache.

    ``fill(p)`` reads page ``p`` in (and may read ahead): it returns page
    ``p`` with a reference for this loop, and the index after the last page
    it made uptodate.  Pages are looked up in runs under one lock: a run is
    what the last fill made uptodate (present unless evicted since), or else
    a window that starts at one page and doubles while every page hits, so a
    cold read looks each page up once.  One bytes object per page, joined
    once: nothing is allocated ahead of the pages actually read, so a
    hostile i_size costs nothing."""
    cache = mem.cache
    page_view = mem.arena.page_view
    parts: list[bytes] = []
    p, p1 = offset // PS, (end - 1) // PS + 1
    known, window = 0, 1
    while p < p1:
        if known:
            nr = min(known, p1 - p)
        else:
            nr = min(window, p1 - p)
            window = min(window * 2, _WINDOW_MAX)
        found = cache.find_range(mapping_id, p, nr)
        known = 0
        missed = False
        try:
            for page in found:
                if page is None or not page.is_uptodate:
                    missed = True
                    window = 1
                    break
                base = p * PS
                view = page_view(page)
                parts.append(view[max(offset - base, 0) : min(end - base, PS)].tobytes())
                view.release()
                p += 1
        finally:
            cache.release_pages([pg for pg in found if pg is not None])
        if not missed:
            continue
        page, upto = fill(p)
        try:
            base = p * PS
            view = page_view(page)
            parts.append(view[max(offset - base, 0) : min(end - base, PS)].tobytes())
            view.release()
        finally:
            cache.release(page)
        p += 1
        known = upto - p
    return b"".join(parts)
