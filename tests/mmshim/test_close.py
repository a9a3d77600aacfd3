"""Arena.close(): every mapping and reference still held is named; the arena closes anyway."""

from __future__ import annotations

import threading

import pytest

from mmshim import PAGE_SIZE, Arena, MappingLeakError, MmshimError, Owner, PageCache


def test_close_names_every_leak() -> None:
    arena = Arena(32 * PAGE_SIZE, "nommu-bounce")
    a, _, b = arena.alloc_pages(0), arena.alloc_pages(0), arena.alloc_pages(0, Owner.PERCPU)
    arena.alloc_pages(2, Owner.DECOMPRESS)
    m = arena.vmap([a, b])  # scattered: bounced
    cache = PageCache(arena)
    held = cache.find_or_create(7, 0)
    held.unlock()
    with pytest.raises(MappingLeakError) as info:
        arena.close()
    leaks = info.value.leaks
    text = str(info.value)
    assert "vmap bounce of 2 pages [pfn 0,2] bounce@pfn 8" in text
    assert "order-0 folio at pfn 0 (other, refcount 1" in text
    assert "order-0 folio at pfn 2 (percpu" in text
    assert "order-2 folio at pfn 4 (decompress" in text
    assert "order-1 folio at pfn 8 (bounce" in text
    assert "page_cache(7, 0), refcount 2" in text
    assert len(leaks) == 7  # the mapping, five folios (pfn 1 too), the cached page
    assert arena.closed and not m.mapped
    with pytest.raises(MmshimError, match="closed"):
        arena.alloc_pages(0)
    arena.close()  # closing twice is harmless


def test_clean_close_and_views_outliving_the_arena_are_safe() -> None:
    arena = Arena(4 * PAGE_SIZE)
    p = arena.alloc_pages(0)
    view = arena.page_view(p)
    view[0] = 1
    arena.free_pages(p)
    arena.close()
    view[0] = 2  # the arena's memory lives until the last view goes: no crash
    assert view[0] == 2


def test_arena_as_context_manager_checks_on_exit() -> None:
    with pytest.raises(MappingLeakError, match="pfn 0"), Arena(4 * PAGE_SIZE) as arena:
        arena.alloc_pages(0)


def test_check_invariants_notices_corrupt_metadata() -> None:
    arena = Arena(8 * PAGE_SIZE)
    p = arena.alloc_pages(1)
    arena.check_invariants()
    arena.page(p.pfn + 1).refcount = 1  # a tail page must have refcount 0
    with pytest.raises(MmshimError, match="pfn 1: tail of the folio at pfn 0"):
        arena.check_invariants()
    arena.page(p.pfn + 1).refcount = 0
    arena.free_pages(p)
    arena.close()


def test_threads_share_an_arena() -> None:
    """Four workers read the same 40 pages through one cache and vmap scratch pages."""
    # 36 frames: fewer than the 40 cached pages, so eviction happens whatever the
    # thread timing; the workers never hold more than 4 x 8 frames at once, so
    # every order-0 allocation can still succeed after reclaim.
    arena = Arena(36 * PAGE_SIZE, "nommu-bounce")
    cache = PageCache(arena)
    errors: list[BaseException] = []
    created = [0]

    def worker(n: int) -> None:
        try:
            for i in range(150):
                index = (i * 7 + n) % 40
                page, mine = cache.get_or_create("file", index)
                if mine:
                    arena.page_view(page)[:4] = index.to_bytes(4, "little")
                    page.set_uptodate()
                    page.unlock()
                    with arena.lock:
                        created[0] += 1
                else:
                    page.wait_unlocked()
                assert page.is_uptodate
                assert bytes(arena.page_view(page)[:4]) == index.to_bytes(4, "little")
                cache.release(page)
                pages = [arena.alloc_pages(0, Owner.DECOMPRESS) for _ in range(4)]
                try:
                    with arena.vmap(pages[::-1]) as m:
                        m.view[:4] = n.to_bytes(4, "little")
                    assert bytes(arena.page_view(pages[-1])[:4]) == n.to_bytes(4, "little")
                except MemoryError:
                    pass  # no bounce buffer at this moment: allowed
                for q in pages:
                    arena.free_pages(q)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    arena.check_invariants()
    s = arena.stats
    assert s.vmap_calls == 600 and s.frames_by_owner["decompress"] == 0
    assert created[0] == cache.counters.misses and s.evictions > 0
    arena.close()
