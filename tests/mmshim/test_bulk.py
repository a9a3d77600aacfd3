"""Batch calls: the same frames, evictions and counters as the single calls they replace.

Each equivalence test runs one script on two arenas in lockstep, doing the
step under test with the batch call on one and with single calls on the
other, and compares everything observable after every step: frames chosen,
per-frame metadata, stats, the page cache's contents, LRU order and counters.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmshim import (
    PAGE_SIZE,
    AllocError,
    Arena,
    BadPageStateError,
    MmshimError,
    Owner,
    Page,
    PageCache,
    TailPageError,
)
from mmshim._page import F_LOCKED

from ..compiled import interpreted
from .conftest import MakeArena


def arena_state(arena: Arena, *, alloc_calls: bool = True) -> object:
    st_ = arena.stats
    if not alloc_calls:
        st_ = dataclasses.replace(st_, alloc_calls=0)
    frames = [
        (p._flags, p.refcount, p.mapcount, p._order, p.head.pfn, p.owner) for p in arena._pages
    ]
    return st_, frames, arena._buddy.free_blocks()


def cache_state(cache: PageCache) -> object:
    return (
        cache.counters,
        [(k, p.pfn) for k, p in cache._pages.items()],
        list(cache._lru),
        # Each file's folios in order (invalidate frees them in that order), but
        # not the files' order: nothing reads it, and a run allocated in bulk
        # may empty a file's dict and recreate it where single calls kept it.
        {f: list(d) for f, d in cache._files.items()},
    )


def range_by_single_calls(
    cache: PageCache, mapping_id: int, start: int, nr: int
) -> list[tuple[Page, bool]]:
    """``get_or_create_range`` as it was before it allocated in bulk: a loop of single calls."""
    got: list[tuple[Page, bool]] = []
    try:
        for i in range(start, start + nr):
            got.append(cache.get_or_create(mapping_id, i))
    except BaseException:
        for page, created in reversed(got):
            page.head.refcount -= 1
            if created:
                page._flags &= ~F_LOCKED
                cache._remove(cache._lru[page.pfn])
        raise
    return got


# -- alloc_pages_bulk / free_pages_bulk ------------------------------------------


def fragment(arena: Arena, pattern: list[int]) -> list[Page]:
    """Allocate blocks of the given orders, free every other one: a fragmented arena."""
    blocks = []
    for order in pattern:
        try:
            blocks.append(arena.alloc_pages(order))
        except AllocError:
            break
    for b in blocks[::2]:
        arena.free_pages(b)
    return blocks[1::2]


@settings(max_examples=60, deadline=None)
@given(
    pattern=st.lists(st.integers(0, 3), max_size=20),
    batches=st.lists(st.integers(0, 20), min_size=1, max_size=6),
    cached=st.integers(0, 24),
)
def test_alloc_pages_bulk_takes_the_frames_single_calls_take(
    pattern: list[int], batches: list[int], cached: int
) -> None:
    """Fragmented arenas with page cache pages to reclaim: bulk == singles, failures too."""
    twins = []
    for _ in range(2):
        arena = Arena(32 * PAGE_SIZE, "mmu")
        cache = PageCache(arena)
        kept = fragment(arena, pattern)
        for i in range(min(cached, arena.frames_free)):
            p = cache.find_or_create("f", i)
            p.set_uptodate()
            p.unlock()
            cache.release(p)
        twins.append((arena, cache, kept))
    (a, ca, _), (b, cb, _) = twins
    held_a: list[Page] = []
    held_b: list[Page] = []
    for nr in batches:
        calls_a, calls_b = a.stats.alloc_calls, b.stats.alloc_calls
        err_a: AllocError | None = None
        try:
            got_a = a.alloc_pages_bulk(nr, Owner.DECOMPRESS)
        except AllocError as e:
            got_a, err_a = [], e
        got_b: list[Page] = []
        err_b: AllocError | None = None
        try:
            for _ in range(nr):
                got_b.append(b.alloc_pages(0, Owner.DECOMPRESS))
        except AllocError as e:
            err_b = e
            for p in reversed(got_b):
                b.free_pages(p)
            got_b = []
        assert [p.pfn for p in got_a] == [p.pfn for p in got_b]
        assert (err_a is None) == (err_b is None)
        if err_a is not None and err_b is not None:
            assert str(err_a) == str(err_b) and err_a.frames_free == err_b.frames_free
        assert a.stats.alloc_calls == calls_a + 1  # one call, however many pages
        if err_b is None:
            assert b.stats.alloc_calls == calls_b + nr
        assert arena_state(a, alloc_calls=False) == arena_state(b, alloc_calls=False)
        assert cache_state(ca) == cache_state(cb)
        held_a += got_a
        held_b += got_b
    a.free_pages_bulk(held_a)
    for p in held_b:
        b.free_pages(p)
    assert arena_state(a, alloc_calls=False) == arena_state(b, alloc_calls=False)
    for arena, cache, kept in twins:
        for k in kept:
            arena.free_pages(k)
        arena.check_invariants()
        cache.close()
        arena.close()


def test_alloc_pages_bulk_is_all_or_nothing(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    cache = PageCache(arena)
    for i in range(2):  # two evictable cache pages
        p = cache.find_or_create("f", i)
        p.set_uptodate()
        p.unlock()
        cache.release(p)
    held = arena.alloc_pages(2)  # four frames nobody can have
    before = arena.stats
    with pytest.raises(AllocError) as e:
        arena.alloc_pages_bulk(5)  # 2 free + 2 reclaimed: the fifth fails
    assert e.value.order == 0 and e.value.frames_free == 0
    after = arena.stats
    assert after.frames_free == before.frames_free + 2  # the evicted pages stay evicted
    assert after.frames_by_owner["other"] == before.frames_by_owner["other"]
    assert after.alloc_calls == before.alloc_calls + 1
    assert after.alloc_failures == before.alloc_failures + 1
    assert after.evictions == before.evictions + 2 and len(cache) == 0
    assert after.frames_peak == 8
    arena.free_pages(held)
    cache.close()


def test_alloc_pages_bulk_counts_and_empty_batch(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    assert arena.alloc_pages_bulk(0) == [] and arena.stats.alloc_calls == 1
    pages = arena.alloc_pages_bulk(3, Owner.PERCPU)
    assert [p.pfn for p in pages] == [0, 1, 2]
    assert all(p.refcount == 1 and p.owner == Owner.PERCPU and p.order == 0 for p in pages)
    s = arena.stats
    assert (s.alloc_calls, s.frames_peak, s.largest_alloc_order) == (2, 3, 0)
    assert s.frames_by_owner["percpu"] == 3
    with pytest.raises(ValueError):
        arena.alloc_pages_bulk(-1)
    arena.free_pages_bulk(pages)
    assert arena.stats.frames_free == 16


def test_bulk_calls_notify_observers_after_every_page(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    seen: list[int] = []
    arena.add_observer(lambda a: seen.append(a.stats.frames_used))
    pages = arena.alloc_pages_bulk(3)
    arena.free_pages_bulk(pages)
    with pytest.raises(AllocError):
        arena.alloc_pages_bulk(9)
    assert seen == [1, 2, 3, 2, 1, 0, *range(1, 9), *range(7, -1, -1)]


def test_free_pages_bulk_detects_double_free_tail_pages_and_folios(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    a, b = arena.alloc_pages_bulk(2)
    with pytest.raises(BadPageStateError, match="double free"):
        arena.free_pages_bulk([a, b, a])
    assert a.is_free and b.is_free  # those before the bad one are freed, as in a loop
    folio = arena.alloc_pages(1)
    with pytest.raises(TailPageError):
        arena.free_pages_bulk([arena.page(folio.pfn + 1)])
    with pytest.raises(BadPageStateError, match="folio has order 1"):
        arena.free_pages_bulk([folio])
    assert folio.refcount == 1
    arena.free_pages(folio)
    c = arena.alloc_pages(0)
    arena.lock_page(c)
    with pytest.raises(BadPageStateError, match="flags"):
        arena.free_pages_bulk([c])
    assert c.refcount == 1 and not c.is_free
    arena.unlock_page(c)
    arena.free_pages_bulk([c])
    with pytest.raises(BadPageStateError, match="double free"):
        arena.free_pages_bulk([c])
    other = make_arena(4)
    d = other.alloc_pages(0)
    with pytest.raises(ValueError, match="another arena"):
        arena.free_pages_bulk([d])
    other.free_pages(d)


# -- end_read ----------------------------------------------------------------------


def test_end_read_marks_uptodate_and_unlocks(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    cache = PageCache(arena)
    got = cache.get_or_create_range("f", 0, 3)
    arena.end_read([p for p, _ in got[:2]], True)
    arena.end_read([got[2][0]], False)
    assert [(p.is_uptodate, p.is_locked) for p, _ in got] == [
        (True, False),
        (True, False),
        (False, False),
    ]
    with pytest.raises(BadPageStateError, match="not locked"):
        arena.end_read([got[0][0]], True)
    cache.release_pages(p for p, _ in got)
    q = arena.alloc_pages(0)
    arena.free_pages(q)
    with pytest.raises(BadPageStateError, match="page is free"):
        arena.end_read([q], True)
    cache.close()


def test_end_read_stops_at_the_first_page_not_locked(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    a, b, c = arena.alloc_pages_bulk(3)
    arena.lock_page(a)
    arena.lock_page(c)
    with pytest.raises(BadPageStateError, match=f"end_read\\(pfn {b.pfn}\\): not locked"):
        arena.end_read([a, b, c], True)
    assert a.is_uptodate and not a.is_locked
    assert not b.is_uptodate and c.is_locked and not c.is_uptodate
    arena.end_read([c], True)
    arena.free_pages_bulk([a, b, c])


def test_end_read_on_a_tail_page_ends_the_folio_read(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    folio = arena.alloc_pages(2)
    arena.lock_page(folio)
    arena.end_read([arena.page(folio.pfn + 3)], True)
    assert folio.is_uptodate and not folio.is_locked
    arena.free_pages(folio)


def test_end_read_wakes_a_waiter(make_arena: MakeArena) -> None:
    import threading

    arena = make_arena(8)
    page = arena.alloc_pages(0)
    arena.lock_page(page)
    woke = threading.Event()

    def waiter() -> None:
        page.wait_unlocked()
        woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    while not arena._page_lock_waiters:
        woke.wait(0.001)
    arena.end_read([page], True)
    t.join(5)
    assert woke.is_set()
    arena.free_pages(page)


# -- get_or_create_range allocating in bulk ----------------------------------------

range_ops = st.lists(
    st.one_of(
        st.tuples(st.just("range"), st.integers(0, 1), st.integers(0, 40), st.integers(1, 16)),
        st.tuples(st.just("finish"), st.integers(0, 100), st.booleans(), st.just(0)),
        st.tuples(st.just("release"), st.integers(0, 100), st.just(0), st.just(0)),
        st.tuples(st.just("alloc"), st.integers(0, 2), st.just(0), st.just(0)),
        st.tuples(st.just("free"), st.integers(0, 100), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(nr_frames=st.sampled_from([8, 16, 24]), script=range_ops, observe=st.booleans())
def test_get_or_create_range_evicts_and_allocates_as_single_calls_did(
    nr_frames: int, script: list[tuple[str, int, int, int]], observe: bool
) -> None:
    """With ``observe``, the single-call twin also has an observer, which keeps its
    allocations off the page cache's frame donor: reclaim then frees and reallocates."""
    arenas = [Arena(nr_frames * PAGE_SIZE, "mmu") for _ in range(2)]
    if observe:
        arenas[1].add_observer(lambda a: None)
    caches = [PageCache(a) for a in arenas]
    # Per twin: ranges got and not yet released, other allocations held.
    reads: list[list[list[tuple[Page, bool]]]] = [[], []]
    held: list[list[Page]] = [[], []]
    try:
        for op, x, y, z in script:
            if op == "range":
                results: list[object] = []
                for t, fn in enumerate(
                    (caches[0].get_or_create_range, lambda *a: range_by_single_calls(caches[1], *a))
                ):
                    try:
                        got = fn(x, y, z)
                    except AllocError as e:
                        results.append(str(e))
                    else:
                        reads[t].append(got)
                        results.append([(p.pfn, c) for p, c in got])
                assert results[0] == results[1]
            elif op == "finish" and reads[0]:
                for t in range(2):
                    got = reads[t][x % len(reads[t])]
                    created = [p for p, c in got if c and p.is_locked]
                    arenas[t].end_read(created, bool(y))
            elif op == "release" and reads[0]:
                for t in range(2):
                    got = reads[t].pop(x % len(reads[t]))
                    for p, c in got:
                        if c and p.is_locked:
                            p.unlock()
                    caches[t].release_pages(p for p, _ in got)
            elif op == "alloc":
                pfns: list[int | None] = []
                for t in range(2):
                    try:
                        held[t].append(arenas[t].alloc_pages(x))
                        pfns.append(held[t][-1].pfn)
                    except AllocError:
                        pfns.append(None)
                assert pfns[0] == pfns[1]
            elif op == "free" and held[0]:
                for t in range(2):
                    arenas[t].free_pages(held[t].pop(x % len(held[t])))
            assert arena_state(arenas[0]) == arena_state(arenas[1])
            assert cache_state(caches[0]) == cache_state(caches[1])
        for t in range(2):
            for got in reads[t]:
                for p, c in got:
                    if c and p.is_locked:
                        p.unlock()
                caches[t].release_pages(p for p, _ in got)
            for h in held[t]:
                arenas[t].free_pages(h)
            arenas[t].check_invariants()
    finally:
        for cache in caches:
            cache.close()
        for arena in arenas:
            arena.close()


def test_range_reclaim_may_evict_the_page_after_a_run(make_arena: MakeArena) -> None:
    """The page after a run of misses is looked up only after the run is allocated.

    Here index 1 is cached and the least recently used page: allocating index 0
    evicts it, so index 1 is a miss too, and the call creates both; looking
    index 1 up first would have kept it and evicted index 5 instead.
    """
    arena = make_arena(4)
    cache = PageCache(arena)
    for i in (1, 5, 6, 7):
        p = cache.find_or_create("f", i)
        arena.end_read([p], True)
        cache.release(p)
    got = cache.get_or_create_range("f", 0, 2)
    assert [c for _, c in got] == [True, True]
    assert sorted(k[1] for k in cache._pages) == [0, 1, 6, 7]
    assert cache.counters.misses == 4 + 2 and cache.counters.evictions == 2
    arena.end_read([p for p, _ in got], True)
    cache.release_pages(p for p, _ in got)
    cache.close()


def test_range_failure_counts_only_the_lookups_made(make_arena: MakeArena) -> None:
    arena = make_arena(4)
    cache = PageCache(arena)
    held = arena.alloc_pages_bulk(2)
    before = arena.stats
    with pytest.raises(AllocError):
        cache.get_or_create_range("f", 0, 6)  # 0 and 1 fit, 2 fails, 3..5 never looked up
    after = arena.stats
    assert cache.counters.misses == 3 and len(cache) == 0
    assert after.alloc_calls == before.alloc_calls + 3
    assert after.alloc_failures == before.alloc_failures + 1
    assert after.frames_free == 2
    arena.free_pages_bulk(held)
    cache.close()


@interpreted  # counts calls of a PageCache method
def test_frame_donor_takes_the_frame_reclaim_would_free(
    make_arena: MakeArena, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full arena: the page cache hands its LRU page's frame to the allocation
    directly; the same frame, owners and counters as evicting, freeing and
    allocating (which an observer forces), and a large folio or nothing
    evictable falls back to that ordinary reclaim."""
    donated: list[Page | None] = []
    real = PageCache._evict_one_page

    def counting(self: PageCache) -> Page | None:
        donated.append(real(self))
        return donated[-1]

    monkeypatch.setattr(PageCache, "_evict_one_page", counting)
    twins = []
    for observe in (False, True):
        arena = make_arena(8)
        cache = PageCache(arena)
        if observe:
            arena.add_observer(lambda a: None)
        folio = arena.alloc_pages(1)
        cache.add_folio("f", 0, folio)  # the oldest: evicted first, as a folio
        arena.free_pages(folio)
        for i in range(2, 8):
            p = cache.find_or_create("f", i)
            arena.end_read([p], True)
            cache.release(p)
        twins.append((arena, cache))
    results = []
    for arena, cache in twins:
        busy = cache.find("f", 2)  # referenced: skipped
        got = [arena.alloc_pages(0, Owner.DECOMPRESS) for _ in range(4)]
        got += arena.alloc_pages_bulk(3, Owner.DECOMPRESS)
        with pytest.raises(AllocError):
            arena.alloc_pages(0)  # only the busy page is left
        results.append(([p.pfn for p in got], arena_state(arena), cache_state(cache)))
        assert all(p.owner == Owner.DECOMPRESS and p.flags == 0 for p in got)
        assert arena.stats.evictions == 6 and arena.stats.frames_by_owner["page_cache"] == 1
        assert busy is not None
        cache.release(busy)
        arena.free_pages_bulk(got)
        cache.close()
    assert results[0] == results[1]
    assert results[0][0] == [0, 1, 3, 4, 5, 6, 7]
    # without the observer: the folio first (declined), five pages, then nothing
    assert [p.pfn if p else None for p in donated] == [None, 3, 4, 5, 6, 7, None]


# -- contig_view -------------------------------------------------------------------


def test_contig_view_checks_every_page(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    pages = arena.alloc_pages_exact(4)
    view = arena.contig_view(pages)
    assert len(view) == 4 * PAGE_SIZE
    view[PAGE_SIZE] = 7
    assert arena.page_view(pages[1])[0] == 7
    folio = arena.alloc_pages(2)
    tails = [arena.page(folio.pfn + i) for i in range(1, 4)]
    assert len(arena.contig_view(tails)) == 3 * PAGE_SIZE
    with pytest.raises(ValueError, match="not consecutive"):
        arena.contig_view([pages[0], pages[2]])
    with pytest.raises(ValueError, match="not consecutive"):
        arena.contig_view([])
    arena.free_pages(pages[3])
    with pytest.raises(BadPageStateError, match="contig_view"):
        arena.contig_view(pages)
    arena.free_pages_bulk(pages[:3])
    arena.free_pages(folio)


def test_cache_on_a_closed_arena_still_finds_but_cannot_allocate() -> None:
    arena = Arena(8 * PAGE_SIZE, "mmu")
    cache = PageCache(arena)
    page = cache.find_or_create("f", 0)  # held: close() reports it, the cache keeps it
    with pytest.raises(MmshimError):
        arena.close()
    got = cache.get_or_create_range("f", 0, 1)
    assert got == [(page, False)]
    for call in (lambda: cache.get_or_create_range("f", 0, 3), lambda: cache.get_or_create("f", 1)):
        with pytest.raises(MmshimError, match="closed"):
            call()
    assert cache.counters.misses == 1 + 2 and page.refcount == 3
