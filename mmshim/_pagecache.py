"""The page cache: file pages kept in arena frames, evicted LRU under pressure.

Keys are ``(mapping_id, index)``: any hashable naming a file (an inode
number, say) and the page index in it.  The cache holds one reference on
each folio it contains; ``find``/``find_or_create`` hand the caller another,
which the caller drops with :meth:`PageCache.release` (or ``put_page``).
A folio is evictable when only the cache holds it and it is unlocked, clean
and not vmapped.  The cache registers itself as a shrinker of its arena, so
an allocation that would fail first evicts the least recently used folios.

The cache shares its arena's lock: the arena calls the shrinker with its
lock held, and the cache calls the arena with the cache's lock held, so one
lock is the only order that cannot deadlock.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from dataclasses import dataclass

from mmshim._arena import Arena
from mmshim._errors import BadPageStateError, MappingLeakError, MmshimError
from mmshim._page import Owner, Page, PG_dirty, PG_locked, PG_lru

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


class PageCache:
    """File pages of one or more files in an arena's frames, with LRU eviction."""

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self._lock = arena.lock
        self._pages: dict[Key, Page] = {}
        self._lru: collections.OrderedDict[int, _Entry] = collections.OrderedDict()
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._closed = False
        arena.register_shrinker(self.evict)

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
        self.arena.get_page(page)
        self._lru.move_to_end(page.head.pfn)
        return page

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
            key = (mapping_id, index)
            page = self._lookup(key)
            if page is not None:
                return page, False
            page = self.arena.alloc_pages(0, Owner.page_cache(mapping_id, index))
            page.flags |= PG_locked | PG_lru
            self._pages[key] = page
            self._lru[page.pfn] = _Entry(mapping_id, index, page)
            self.arena.get_page(page)
            return page, True

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
            if head.flags & PG_lru:
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
            head.flags |= PG_lru
            for i in range(nr):
                self._pages[(mapping_id, index + i)] = self.arena.page(head.pfn + i)
            self._lru[head.pfn] = _Entry(mapping_id, index, head)

    def release(self, page: Page) -> None:
        """Drop the caller's reference from ``find``/``find_or_create``."""
        self.arena.put_page(page)

    @staticmethod
    def _evictable(head: Page) -> bool:
        if head.refcount != 1 or head.flags & (PG_locked | PG_dirty):
            return False
        start = head.pfn
        return not any(head.arena.page(pfn).mapcount for pfn in range(start, start + head.nr_pages))

    def _remove(self, entry: _Entry) -> int:
        head = entry.head
        nr = head.nr_pages
        for i in range(nr):
            del self._pages[(entry.mapping_id, entry.index + i)]
        del self._lru[head.pfn]
        head.flags &= ~PG_lru
        self.arena.put_page(head)
        return nr

    def evict(self, nr: int) -> int:
        """Evict least recently used evictable folios until ``nr`` frames are freed.

        Returns the frames freed (possibly fewer, possibly more with large
        folios).  This is the shrinker the arena calls.
        """
        with self._lock:
            freed = 0
            folios = 0
            for entry in list(self._lru.values()):
                if freed >= nr:
                    break
                if self._evictable(entry.head):
                    freed += self._remove(entry)
                    folios += 1
            self._evictions += folios
            self.arena._note_evictions(folios)
            return freed

    def invalidate(self, mapping_id: Hashable) -> int:
        """Drop every evictable folio of one file; returns the pages still cached for it."""
        with self._lock:
            kept = 0
            for entry in list(self._lru.values()):
                if entry.mapping_id != mapping_id:
                    continue
                if self._evictable(entry.head):
                    self._remove(entry)
                else:
                    kept += entry.head.nr_pages
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
