"""The page cache: lookups, LRU eviction under pressure, what may not be evicted."""

from __future__ import annotations

import pytest

from mmshim import AllocError, Arena, MappingLeakError, MmshimError, Owner, Page, PageCache

from ..compiled import interpreted
from .conftest import MakeArena


def read_in(cache: PageCache, ino: int | str, index: int) -> Page:
    """What a filesystem's readpage does: find or create, fill, mark uptodate, unlock."""
    page = cache.find_or_create(ino, index)
    if not page.is_uptodate:
        assert page.is_locked
        cache.arena.page_view(page)[:8] = f"{ino!s:>3}:{index:04}".encode()[:8]
        page.set_uptodate()
        page.unlock()
    return page


def cached(cache: PageCache, ino: int, index: int) -> bool:
    page = cache.find(ino, index)
    if page is not None:
        cache.release(page)
    return page is not None


def test_find_or_create_and_find(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    cache = PageCache(arena)
    p = cache.find_or_create("ino1", 0)
    assert p.is_locked and not p.is_uptodate and p.refcount == 2
    assert p.owner == Owner.page_cache("ino1", 0)
    p.set_uptodate()
    p.unlock()
    cache.release(p)
    q = cache.find("ino1", 0)
    assert q is p and q.refcount == 2
    cache.release(q)
    assert cache.find("ino1", 1) is None
    assert cache.counters == (cache.counters.__class__(hits=1, misses=2, evictions=0))
    assert len(cache) == 1 and arena.stats.frames_by_owner["page_cache"] == 1
    cache.close()
    assert arena.stats.frames_free == 16


def test_eviction_under_pressure_is_lru_and_skips_busy_pages(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    cache = PageCache(arena)
    pages = [read_in(cache, 1, i) for i in range(8)]
    for p in pages:
        cache.release(p)
    held = cache.find(1, 0)  # referenced: not evictable
    assert held is not None
    locked = cache.find(1, 1)
    assert locked is not None
    locked.lock()
    cache.release(locked)
    dirty = cache.find(1, 2)
    assert dirty is not None
    dirty.set_dirty()
    cache.release(dirty)
    mapped = cache.find(1, 3)
    assert mapped is not None
    m = arena.vmap([mapped])
    cache.release(mapped)
    _ = cache.find(1, 5)  # touched: moves to the LRU's young end
    assert _ is not None
    cache.release(_)
    assert arena.stats.frames_free == 0

    # LRU, oldest first: 4 6 7 0 1 2 3 5.  Two frames are wanted: 4 and 6 go
    # first but are no buddy pair, so reclaim goes on with 7 and 5 (0..3 are busy).
    new = arena.alloc_pages(1, Owner.DECOMPRESS)
    assert arena.stats.evictions == cache.counters.evictions == 4
    evicted = {i for i in range(8) if not cached(cache, 1, i)}
    assert evicted == {4, 5, 6, 7} and new.pfn == 4

    arena.free_pages(new)
    arena.vunmap(m)
    locked.unlock()
    dirty.clear_dirty()
    cache.release(held)
    cache.close()


def test_pressure_with_nothing_evictable_fails(make_arena: MakeArena) -> None:
    arena = make_arena(4)
    cache = PageCache(arena)
    held = [read_in(cache, 9, i) for i in range(4)]  # caller keeps every reference
    with pytest.raises(AllocError):
        arena.alloc_pages(0)
    with pytest.raises(MemoryError):
        cache.find_or_create(9, 99)
    assert arena.stats.alloc_failures == 2 and arena.stats.evictions == 0
    for p in held:
        cache.release(p)
    fresh = arena.alloc_pages(0)  # now evicts
    assert arena.stats.evictions == 1
    arena.free_pages(fresh)


def test_cache_churn_in_a_small_arena(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    cache = PageCache(arena)
    for rnd in range(3):
        for i in range(40):
            p = read_in(cache, 1, i)
            assert bytes(arena.page_view(p)[:8]) == f"  1:{i:04}".encode(), rnd
            cache.release(p)
    assert len(cache) == 8
    assert cache.counters.misses == 120 and cache.counters.evictions == 112
    arena.check_invariants()


def test_add_folio_covers_its_indexes(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    cache = PageCache(arena)
    folio = arena.alloc_pages(2, Owner.DECOMPRESS)
    arena.folio_view(folio)[:] = bytes(range(4)) * 4096
    cache.add_folio("f", 8, folio)
    assert arena.stats.frames_by_owner["page_cache"] == 4 and folio.refcount == 2
    arena.free_pages(folio)  # the caller's reference; the cache keeps its own
    p = cache.find("f", 10)
    assert p is not None and p.is_tail and p.pfn == folio.pfn + 2 and folio.refcount == 2
    cache.release(p)
    other = arena.alloc_pages(0)
    with pytest.raises(MmshimError, match="already cached"):
        cache.add_folio("f", 10, other)
    arena.free_pages(other)
    assert len(cache) == 4
    assert cache.evict(1) == 4 and folio.is_free and len(cache) == 0


def test_invalidate_one_file(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    cache = PageCache(arena)
    for ino in (1, 2):
        for i in range(3):
            cache.release(read_in(cache, ino, i))
    keep = cache.find(1, 0)
    assert keep is not None
    assert cache.invalidate(1) == 1 and len(cache) == 4
    cache.release(keep)
    cache.close()


def test_close_names_pages_still_held(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    cache = PageCache(arena)
    p = read_in(cache, "bin/sh", 3)
    with pytest.raises(MappingLeakError, match=r"'bin/sh', 3\) at pfn 0: refcount 2"):
        cache.close()
    cache.release(p)
    cache.close()


def test_arena_close_drops_the_cache_first() -> None:
    arena = Arena(8 * 4096)
    cache = PageCache(arena)
    for i in range(8):
        cache.release(read_in(cache, 1, i))
    arena.close()  # clean pages only the cache holds are not leaks


def count_evictable(monkeypatch: pytest.MonkeyPatch) -> list[Page]:
    """Record every folio head the cache asks ``_evictable`` about."""
    looked: list[Page] = []
    real = PageCache._evictable

    def counting(head: Page) -> bool:
        looked.append(head)
        return real(head)

    monkeypatch.setattr(PageCache, "_evictable", staticmethod(counting))
    return looked


@interpreted  # counts calls of a PageCache method
def test_evict_looks_only_at_what_it_evicts(
    make_arena: MakeArena, monkeypatch: pytest.MonkeyPatch
) -> None:
    arena = make_arena(256)
    cache = PageCache(arena)
    busy = read_in(cache, 1, 0)  # the oldest folio stays held: looked at, skipped
    for i in range(1, 200):
        cache.release(read_in(cache, 1, i))
    looked = count_evictable(monkeypatch)
    assert cache.evict(3) == 3
    assert [p.pfn for p in looked] == [0, 1, 2, 3] and len(cache) == 197
    assert not any(cached(cache, 1, i) for i in (1, 2, 3))
    looked.clear()
    assert cache.evict(0) == 0 and not looked
    monkeypatch.undo()
    cache.release(busy)
    cache.close()


@interpreted  # counts calls of a PageCache method
def test_invalidate_looks_only_at_that_file(
    make_arena: MakeArena, monkeypatch: pytest.MonkeyPatch
) -> None:
    arena = make_arena(64)
    cache = PageCache(arena)
    for i in range(40):
        cache.release(read_in(cache, "big", i))
    for i in range(3):
        cache.release(read_in(cache, "small", i))
    looked = count_evictable(monkeypatch)
    assert cache.invalidate("small") == 0 and len(looked) == 3 and len(cache) == 40
    assert cache.invalidate("nothing") == 0 and len(looked) == 3
    monkeypatch.undo()
    folio = arena.alloc_pages(2)
    cache.add_folio("small", 0, folio)  # a file emptied by invalidate can come back
    assert cache.invalidate("small") == 4  # the caller still holds the folio
    arena.free_pages(folio)
    assert cache.invalidate("small") == 0 and folio.is_free
    cache.close()


def test_lru_order_after_hits_decides_eviction(make_arena: MakeArena) -> None:
    arena = make_arena(4)
    cache = PageCache(arena)
    for i in range(4):
        cache.release(read_in(cache, 1, i))
    for i in (0, 2):  # touched: 1 and 3 are now the oldest
        assert cached(cache, 1, i)
    cache.release(read_in(cache, 1, 4))
    cache.release(read_in(cache, 1, 5))
    assert [i for i in range(6) if cached(cache, 1, i)] == [0, 2, 4, 5]
    cache.close()


def test_ranges_are_single_calls_in_a_row(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    cache = PageCache(arena)
    cache.release(read_in(cache, "f", 1))
    folio = arena.alloc_pages(1)
    cache.add_folio("f", 4, folio)
    arena.free_pages(folio)
    got = cache.get_or_create_range("f", 0, 6)
    assert [created for _, created in got] == [True, False, True, True, False, False]
    assert got[5][0].is_tail and folio.refcount == 3  # the cache's, and one per index
    for page, created in got:
        if created:
            assert page.is_locked and page.refcount == 2 and not page.is_uptodate
            page.set_uptodate()
            page.unlock()
    cache.release_pages(p for p, _ in got)
    assert folio.refcount == 1 and all(p.head.refcount == 1 for p, _ in got)
    found = cache.find_range("f", 3, 4)
    assert [p is not None for p in found] == [True, True, True, False]
    assert found[0] is got[3][0] and found[2] is got[5][0]
    cache.release_pages(p for p in found if p is not None)
    assert cache.counters.hits == 3 + 3 and cache.counters.misses == 1 + 3 + 1
    assert len(cache) == 6
    cache.close()


def test_range_that_runs_out_of_memory_undoes_itself(make_arena: MakeArena) -> None:
    arena = make_arena(4)
    cache = PageCache(arena)
    cache.release(read_in(cache, "f", 1))
    held = arena.alloc_pages(1)  # two frames the cache cannot have
    before = arena.stats
    with pytest.raises(AllocError):
        cache.get_or_create_range("f", 0, 4)  # 0 takes the last frame, 2 finds none
    after = arena.stats
    assert after.frames_free == before.frames_free == 1
    assert after.frames_by_owner == before.frames_by_owner
    assert len(cache) == 1 and cache.find_range("f", 0, 3)[::2] == [None, None]
    page = cache.find("f", 1)
    assert page is not None and page.refcount == 3 and page.is_uptodate and not page.is_locked
    cache.release_pages([page, page])
    arena.free_pages(held)
    cache.close()


def test_page_cache_owner_is_an_ordinary_owner() -> None:
    from mmshim import OwnerKind

    fast = Owner.page_cache("ino", 7)
    plain = Owner(OwnerKind.PAGE_CACHE, "ino", 7)
    assert fast == plain and hash(fast) == hash(plain) and repr(fast) == repr(plain)
    assert str(fast) == "page_cache('ino', 7)" and fast != Owner.page_cache("ino", 8)
    assert repr(fast) == (
        "Owner(kind=<OwnerKind.PAGE_CACHE: 'page_cache'>, mapping_id='ino', index=7)"
    )
    assert fast != (OwnerKind.PAGE_CACHE, "ino", 7) and {fast: 1}[plain] == 1
