"""The page cache: file pages kept in arena frames, evicted LRU under pressure.

Keys are ``(mapping_id, index)``: any hashable naming a file (an inode
number, say) and the page index in it.  The cache holds one reference on
each folio it contains; ``find``/``find_or_create`` hand the caller another,
which the caller drops with :meth:`PageCache.release` (or ``put_page``).
A folio is evictable when only the cache holds it and it is unlocked, clean
and not vmapped.  The cache registers itself as a shrinker of its arena, so
an allocation that would fail first evicts the least recently used folios
(and, as the arena's frame donor, hands an evicted order-0 page's frame
straight to the allocation that needed it, which is where the buddy
allocator would have put it anyway).

The cache shares its arena's lock: the arena calls the shrinker with its
lock held, and the cache calls the arena with the cache's lock held, so one
lock is the only order that cannot deadlock.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Final

from mmshim._arena import Arena
from mmshim._errors import BadPageStateError, MappingLeakError, MmshimError
from mmshim._page import F_DIRTY, F_FREE, F_LOCKED, F_LRU, Owner, Page

Key = tuple[Hashable, int]


@dataclass(frozen=True, slots=True)
class CacheCounters:
    """Lookups that found a page, lookups that did not, folios evicted."""

    hits: int
    misses: int
    evictions: int


@dataclass(slots=True)
class _Entry:
    mapping_id: Hashable
    index: int
    head: Page


_BUSY: Final = F_LOCKED | F_DIRTY


class PageCache:
    """File pages of one or more files in an arena's frames, with LRU eviction."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self._lock = arena.lock
        self._pages: dict[Key, Page] = {}
        # One entry per folio, keyed by its head's pfn, least recently used first.
        self._lru: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        # The same entries per file, so that invalidate() visits one file only.
        self._files: dict[Hashable, dict[int, _Entry]] = {}
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._closed = False
        arena.register_shrinker(self.evict)
        arena._register_frame_donor(self.evict, self._evict_one_page)

    def __len__(self) -> int:
        """Pages (indexes) cached; a folio of order k counts 2**k."""
        with self._lock:
            return len(self._pages)

    @property
    def counters(self) -> CacheCounters:
        with self._lock:
            return CacheCounters(self._hits, self._misses, self._evictions)

    def _check_open(self) -> None:
        if self._closed:
            raise MmshimError("page cache is closed")

    def _lookup(self, key: Key) -> Page | None:
        page = self._pages.get(key)
        if page is None:
            self._misses += 1
            return None
        self._hits += 1
        head = page.head
        if head._flags & F_FREE or head.refcount <= 0:
            self.arena.get_page(page)  # raises, naming the page
        head.refcount += 1  # get_page: the cache's own reference keeps the folio live
        self._lru.move_to_end(head.pfn)
        return page

    def _insert(self, mapping_id: Hashable, index: int, head: Page) -> None:
        entry = _Entry(mapping_id, index, head)
        self._lru[head.pfn] = entry
        file = self._files.get(mapping_id)
        if file is None:
            file = self._files[mapping_id] = {}
        file[head.pfn] = entry

    def find(self, mapping_id: Hashable, index: int) -> Page | None:
        """The cached page at ``index`` with a reference for the caller, or None.

        Inside a large folio this is the folio's page for that index (a tail
        page); the reference is on the folio.  The page may still be locked
        by whoever is reading it in: wait with ``page.wait_unlocked()``.
        """
        with self._lock:
            self._check_open()
            return self._lookup((mapping_id, index))

    def find_or_create(self, mapping_id: Hashable, index: int) -> Page:
        """The page at ``index``, creating it on a miss; the caller gets a reference.

        A new page is order-0, locked and not uptodate: the caller fills it,
        calls ``page.set_uptodate()`` and ``page.unlock()``.  A page found is
        returned as it is (possibly still locked by the thread reading it
        in); threads that need to know whether they created the page use
        :meth:`get_or_create`.  Raises :class:`~mmshim.AllocError` when the
        arena has no frame even after eviction.
        """
        return self.get_or_create(mapping_id, index)[0]

    def get_or_create(self, mapping_id: Hashable, index: int) -> tuple[Page, bool]:
        """Like :meth:`find_or_create`, also saying whether this call created the page.

        The creator holds the new page's lock and must fill it and unlock it;
        anyone else waits with ``page.wait_unlocked()`` and then checks
        ``page.is_uptodate`` (false if the reader failed).
        """
        with self._lock:
            self._check_open()
            return self._get_or_create(mapping_id, index)

    def _get_or_create(self, mapping_id: Hashable, index: int) -> tuple[Page, bool]:
        page = self._pages.get((mapping_id, index))
        if page is not None:  # a hit: _lookup inline
            self._hits += 1
            head = page.head
            if head._flags & F_FREE or head.refcount <= 0:
                self.arena.get_page(page)  # raises, naming the page
            head.refcount += 1
            self._lru.move_to_end(head.pfn)
            return page, False
        got: list[tuple[Page, bool]] = []
        self._get_or_create_into(got, mapping_id, index, index + 1)
        return got[0]

    # -- batches: one lock and one call for a run of pages ----------------------

    def find_range(self, mapping_id: Hashable, start: int, nr: int) -> list[Page | None]:
        """:meth:`find` of ``start .. start + nr - 1``: a page with a reference, or None, each."""
        with self._lock:
            self._check_open()
            # _lookup inline
            get = self._pages.get
            move_to_end = self._lru.move_to_end
            found: list[Page | None] = []
            hits = misses = 0
            try:
                for i in range(start, start + nr):
                    page = get((mapping_id, i))
                    if page is None:
                        misses += 1
                    else:
                        hits += 1
                        head = page.head
                        if head._flags & F_FREE or head.refcount <= 0:
                            self.arena.get_page(page)  # raises, naming the page
                        head.refcount += 1
                        move_to_end(head.pfn)
                    found.append(page)
            finally:
                self._hits += hits
                self._misses += misses
            return found

    def get_or_create_range(
        self, mapping_id: Hashable, start: int, nr: int
    ) -> list[tuple[Page, bool]]:
        """:meth:`get_or_create` of ``start .. start + nr - 1``, in order.

        The caller gets a reference on each page and the lock of each page it
        created, as with single calls.  If an allocation fails part way
        (:class:`~mmshim.AllocError`), the pages this call created are taken
        out of the cache again, the references it took are dropped, and the
        error is raised: the cache is as it was, bar LRU order and counters.

        Each run of consecutive missing pages comes from one bulk allocation
        (:meth:`~mmshim.Arena.alloc_pages_bulk`'s internals), which picks the
        frames the single calls would have picked, in index order.  Reclaim
        cannot tell the difference either: the pages of the run allocated so
        far are locked and referenced, so unevictable, whether or not they
        are in the LRU yet; and the page after the run is looked up only
        once the run is allocated, so it may still be evicted by the run's
        reclaim, as before.  (A missing page cannot appear meanwhile: reclaim
        only removes.)  ``alloc_calls`` still counts one call per page, as
        the kernel's readahead allocates folio by folio.
        """
        with self._lock:
            self._check_open()
            got: list[tuple[Page, bool]] = []
            try:
                self._get_or_create_into(got, mapping_id, start, start + nr)
            except BaseException:
                for page, created in reversed(got):
                    page.head.refcount -= 1  # the caller's: the cache's own stays
                    if created:
                        page._flags &= ~F_LOCKED
                        self._remove(self._lru[page.pfn])
                raise
            return got

    def _get_or_create_into(
        self, got: list[tuple[Page, bool]], mapping_id: Hashable, i: int, end: int
    ) -> None:
        # _lookup and _insert inline: this is the read path's per-page loop.
        pages = self._pages
        lru = self._lru
        arena = self.arena
        while i < end:
            page = pages.get((mapping_id, i))
            if page is not None:
                self._hits += 1
                head = page.head
                if head._flags & F_FREE or head.refcount <= 0:
                    arena.get_page(page)  # raises, naming the page
                head.refcount += 1
                lru.move_to_end(head.pfn)
                got.append((page, False))
                i += 1
                continue
            j = i + 1
            while j < end and (mapping_id, j) not in pages:
                j += 1
            if arena._closed:  # the lookup missed, then alloc_pages raises
                self._misses += 1
                arena._check_open()
            new, err = arena._alloc_order0(
                [Owner.page_cache(mapping_id, k) for k in range(i, j)], count_each=True
            )
            if err is not None:
                self._misses += len(new) + 1
                arena._unwind_order0(new)
                raise err
            self._misses += j - i
            file = self._files.get(mapping_id)  # (after reclaim, which may drop it)
            if file is None:
                file = self._files[mapping_id] = {}
            for k, page in enumerate(new, i):
                page._flags = F_LOCKED | F_LRU
                page.refcount = 2  # the allocation's is the cache's; the caller's
                pages[(mapping_id, k)] = page
                entry = _Entry(mapping_id, k, page)
                lru[page.pfn] = entry
                file[page.pfn] = entry
                got.append((page, True))
            i = j

    def release_pages(self, pages: Iterable[Page]) -> None:
        """:meth:`release` of each page (the kernel's ``release_pages``)."""
        arena = self.arena
        with self._lock:
            for page in pages:  # put_page inline
                head = page.head
                if page._arena is not arena or head._flags & F_FREE or head.refcount <= 0:
                    arena._live_head(page, "put_page")  # raises
                if head.refcount > 1:
                    head.refcount -= 1
                elif arena._put(head) and arena._observers:
                    arena._notify()

    def add_folio(self, mapping_id: Hashable, index: int, head: Page) -> None:
        """Insert a folio covering ``index .. index + 2**order - 1`` (the cache takes a reference).

        The caller keeps its own reference.  (The kernel also wants ``index``
        aligned to the folio's size; this cache does not insist.)
        """
        with self._lock:
            self._check_open()
            if head.arena is not self.arena:
                raise ValueError(f"{head!r} belongs to another arena")
            if head.is_tail:
                raise BadPageStateError(
                    f"add_folio(pfn {head.pfn}): a tail page, not a folio head", pfn=head.pfn
                )
            if head._flags & F_LRU:
                raise BadPageStateError(
                    f"add_folio(pfn {head.pfn}): already in a page cache", pfn=head.pfn
                )
            nr = head.nr_pages
            taken = [i for i in range(index, index + nr) if (mapping_id, i) in self._pages]
            if taken:
                raise MmshimError(
                    f"add_folio({mapping_id!r}, {index}): index {taken[0]} is already cached"
                )
            self.arena.get_page(head)
            self.arena.set_owner(head, Owner.page_cache(mapping_id, index))
            head._flags |= F_LRU
            for i in range(nr):
                self._pages[(mapping_id, index + i)] = self.arena.page(head.pfn + i)
            self._insert(mapping_id, index, head)

    def release(self, page: Page) -> None:
        """Drop the caller's reference from ``find``/``find_or_create``."""
        self.arena.put_page(page)

    @staticmethod
    def _evictable(head: Page) -> bool:
        if head.refcount != 1 or head._flags & _BUSY:
            return False
        if not head._order:
            return not head.mapcount
        start = head.pfn
        frames = head._arena._pages[start : start + (1 << head._order)]
        return not any(p.mapcount for p in frames)

    def _remove(self, entry: _Entry) -> int:
        head = entry.head
        nr = 1 << head._order
        mapping_id, index = entry.mapping_id, entry.index
        if nr == 1:
            del self._pages[(mapping_id, index)]
        else:
            for i in range(nr):
                del self._pages[(mapping_id, index + i)]
        del self._lru[head.pfn]
        file = self._files[mapping_id]
        del file[head.pfn]
        if not file:
            del self._files[mapping_id]
        head._flags &= ~F_LRU
        arena = self.arena
        # put_page without its checks: the cache's reference keeps the folio live
        if arena._put(head) and arena._observers:
            arena._notify()
        return nr

    def evict(self, nr: int) -> int:
        """Evict least recently used evictable folios until ``nr`` frames are freed.

        Returns the frames freed (possibly fewer, possibly more with large
        folios).  This is the shrinker the arena calls.  It costs what it
        looks at: the folios it evicts and the busy ones older than them.
        """
        with self._lock:
            freed = 0
            victims: list[_Entry] = []
            if nr > 0:
                # Choose first, remove after: the LRU cannot change under the
                # iteration, and nothing is copied.  Removing one folio does
                # not change whether another is evictable.
                for entry in self._lru.values():
                    if self._evictable(entry.head):
                        victims.append(entry)
                        freed += 1 << entry.head._order
                        if freed >= nr:
                            break
            for entry in victims:
                self._remove(entry)
            self._evictions += len(victims)
            self.arena._note_evictions(len(victims))
            return freed

    def _evict_one_page(self) -> Page | None:
        """``evict(1)`` for an allocation that will take the frame: the arena's frame donor.

        Evicts and counts what ``evict(1)`` would, but only if that is one
        order-0 page, and hands its frame over instead of freeing it
        (refcount 1, the cache's, now the allocation's; flags cleared; owner
        still the cache's for the arena to move).  Otherwise changes nothing
        and returns None.
        """
        for entry in self._lru.values():
            head = entry.head
            if head.refcount == 1 and not head._flags & _BUSY:  # _evictable, inline
                if not head._order:
                    if not head.mapcount:
                        break
                elif self._evictable(head):
                    return None  # a large folio: ordinary reclaim frees it
        else:
            return None
        mapping_id = entry.mapping_id
        del self._pages[(mapping_id, entry.index)]
        del self._lru[head.pfn]
        file = self._files[mapping_id]
        del file[head.pfn]
        if not file:
            del self._files[mapping_id]
        head._flags = 0  # PG_lru and PG_uptodate go, as freeing and allocating would
        self._evictions += 1
        self.arena._evictions += 1
        return head

    def invalidate(self, mapping_id: Hashable) -> int:
        """Drop every evictable folio of one file; returns the pages still cached for it."""
        with self._lock:
            kept = 0
            file = self._files.get(mapping_id)
            if not file:
                return 0
            for entry in list(file.values()):
                if self._evictable(entry.head):
                    self._remove(entry)
                else:
                    kept += 1 << entry.head._order
            return kept

    def close(self) -> None:
        """Drop every folio and unregister; raise :class:`MappingLeakError` for those still used.

        A folio someone still holds a reference on, or that is locked, dirty
        or vmapped, stays cached and is named in the error.
        """
        with self._lock:
            if self._closed:
                return
            leaks = []
            for entry in list(self._lru.values()):
                if self._evictable(entry.head):
                    self._remove(entry)
                else:
                    h = entry.head
                    leaks.append(
                        f"page cache ({entry.mapping_id!r}, {entry.index}) at pfn {h.pfn}: "
                        f"refcount {h.refcount}, flags {h.flags!r}"
                    )
            if leaks:
                raise MappingLeakError("PageCache.close()", leaks)
            self.arena.unregister_shrinker(self.evict)
            self._closed = True
