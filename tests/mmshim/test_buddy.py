"""The buddy allocator: random alloc/free never overlap, stay inside, and coalesce."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmshim import (
    MAX_ORDER,
    PAGE_SIZE,
    AllocError,
    Arena,
    BadPageStateError,
    Page,
    TailPageError,
)
from mmshim._buddy import BuddyAllocator

from .conftest import MakeArena

# An op is (name, a, b): ("alloc", order, _); ("get"|"put"|"free_tail", k, sub):
# on the k-th live folio (mod count), through its page ``sub`` (mod size),
# which may be a tail page.
ops = st.lists(
    st.tuples(
        st.sampled_from(["alloc", "alloc", "get", "put", "put", "free_tail"]),
        st.integers(0, 1000),
        st.integers(0, 1000),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(nr_frames=st.sampled_from([16, 64, 100, 128]), script=ops)
def test_random_alloc_free_never_overlap_and_coalesce(
    nr_frames: int, script: list[tuple[str, int, int]]
) -> None:
    arena = Arena(nr_frames * PAGE_SIZE, "mmu")
    initial_blocks = arena._buddy.free_blocks()
    live: list[Page] = []
    refs: dict[int, int] = {}  # head pfn -> references the model expects
    owned: dict[int, Page] = {}  # pfn -> head holding it
    try:
        for op, a, b in script:
            if op == "alloc":
                order = a % 6
                try:
                    head = arena.alloc_pages(order)
                except AllocError:
                    assert arena.stats.largest_free_order < order
                    continue
                assert head.pfn % (1 << order) == 0, "buddy blocks are naturally aligned"
                assert head.pfn + (1 << order) <= nr_frames, "never beyond the arena"
                for pfn in range(head.pfn, head.pfn + (1 << order)):
                    assert pfn not in owned, f"pfn {pfn} handed out twice"
                    owned[pfn] = head
                live.append(head)
                refs[head.pfn] = 1
            elif live:
                head = live[a % len(live)]
                nr = head.nr_pages  # once free, the head carries its merged block's order
                page = arena.page(head.pfn + b % nr)
                if op == "get":
                    arena.get_page(page)
                    refs[head.pfn] += 1
                elif op == "free_tail":
                    if page.is_tail:
                        with pytest.raises(TailPageError):
                            arena.free_pages(page)
                elif page is head:
                    arena.free_pages(head)
                    refs[head.pfn] -= 1
                else:
                    arena.put_page(page)  # a tail's reference is its head's
                    refs[head.pfn] -= 1
                assert head.refcount == refs[head.pfn] and page.refcount == (
                    refs[head.pfn] if page is head else 0
                )
                if refs[head.pfn] == 0:
                    assert head.is_free
                    live.remove(head)
                    del refs[head.pfn]
                    for pfn in range(head.pfn, head.pfn + nr):
                        del owned[pfn]
            stats = arena.stats
            assert stats.frames_used == len(owned)
            assert stats.frames_free + stats.frames_used == nr_frames
            assert stats.frames_peak >= stats.frames_used
            arena.check_invariants()
        for head in live:
            for _ in range(refs[head.pfn]):
                arena.put_page(head)
        assert arena._buddy.free_blocks() == initial_blocks
        assert arena.stats.frames_free == nr_frames
    finally:
        arena.close()


def test_all_freed_power_of_two_arena_is_one_block(make_arena: MakeArena) -> None:
    arena = make_arena(64)
    pages = [arena.alloc_pages(0) for _ in range(64)]
    assert arena.stats.frames_free == 0 and arena.stats.largest_free_order == -1
    for p in pages[::2] + pages[1::2]:  # worst order for merging
        arena.free_pages(p)
    assert arena._buddy.free_blocks() == [(0, 6)]
    assert arena.stats.largest_free_order == 6
    assert arena.page(0).order == 6 and arena.page(0).is_free


def test_lowest_address_first_and_splitting(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    a = arena.alloc_pages(0)
    b = arena.alloc_pages(1)
    c = arena.alloc_pages(0)
    assert (a.pfn, b.pfn, c.pfn) == (0, 2, 1)
    assert arena.stats.free_blocks_by_order[:4] == (0, 0, 1, 1)  # [4..8) and [8..16)
    for p in (a, b, c):
        arena.free_pages(p)


def test_arena_larger_than_max_order_is_tiled_and_still_allocates(make_arena: MakeArena) -> None:
    nr = (1 << MAX_ORDER) * 2 + 3
    arena = make_arena(nr)
    assert arena.stats.largest_free_order == MAX_ORDER
    big = arena.alloc_pages(MAX_ORDER)
    with pytest.raises(AllocError):
        arena.alloc_pages(MAX_ORDER + 1)
    arena.free_pages(big)
    assert arena._buddy.free_blocks() == [(0, MAX_ORDER), (1024, MAX_ORDER), (2048, 1), (2050, 0)]


def test_failure_is_memoryerror_and_counted(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    held = arena.alloc_pages(3)
    with pytest.raises(MemoryError) as info:
        arena.alloc_pages(0)
    assert isinstance(info.value, AllocError) and info.value.errno == 12
    s = arena.stats
    assert (s.alloc_failures, s.alloc_calls, s.largest_alloc_order) == (1, 2, 3)
    arena.free_pages(held)


def test_double_free_and_wrong_order_raise_without_damage(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    p = arena.alloc_pages(1)
    with pytest.raises(BadPageStateError, match="order"):
        arena.free_pages(p, order=0)
    arena.free_pages(p, order=1)
    with pytest.raises(BadPageStateError, match="double free"):
        arena.free_pages(p)
    with pytest.raises(BadPageStateError):
        arena.put_page(p)
    with pytest.raises(BadPageStateError):
        arena.get_page(p)
    arena.check_invariants()
    assert arena.stats.frames_free == 8


def test_refcount_keeps_folio_until_last_put(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    p = arena.alloc_pages(0)
    arena.get_page(p)
    arena.free_pages(p)  # drops the allocation's reference only
    assert not p.is_free and p.refcount == 1
    arena.put_page(p)
    assert p.is_free


def test_peak_and_reset(make_arena: MakeArena) -> None:
    arena = make_arena(32)
    a = arena.alloc_pages(3)
    b = arena.alloc_pages(2)
    arena.free_pages(a)
    assert arena.stats.frames_peak == 12
    arena.reset_peak()
    assert arena.stats.frames_peak == 4
    arena.free_pages(b)


def test_owner_accounting(make_arena: MakeArena) -> None:
    from mmshim import Owner

    arena = make_arena(32)
    d = arena.alloc_pages(2, Owner.DECOMPRESS)
    c = arena.alloc_pages(0, Owner.PERCPU)
    by = arena.stats.frames_by_owner
    assert by == {
        "free": 27,
        "page_cache": 0,
        "bounce": 0,
        "decompress": 4,
        "percpu": 1,
        "other": 0,
    }
    assert arena.page(d.pfn + 3).owner is Owner.DECOMPRESS
    arena.free_pages(d)
    arena.free_pages(c)
    assert arena.stats.frames_by_owner["free"] == 32


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Arena(4095)
    with pytest.raises(ValueError):
        Arena(4096, "mmu-ish")
    with pytest.raises(ValueError):
        Arena(4096, tail_pages="maybe")
    with pytest.raises(ValueError):
        BuddyAllocator(0, 3)


def test_two_arenas_do_not_interfere(make_arena: MakeArena) -> None:
    a, b = make_arena(4), make_arena(4)
    pa = a.alloc_pages(2)
    pb = b.alloc_pages(0)
    a.page_view(pa)[:2] = b"aa"
    b.page_view(pb)[:2] = b"bb"
    assert bytes(a.page_view(pa)[:2]) == b"aa" and bytes(b.page_view(pb)[:2]) == b"bb"
    with pytest.raises(ValueError, match="another arena"):
        b.free_pages(pa)
    assert a.stats.frames_free == 0 and b.stats.frames_free == 3
    a.free_pages(pa)
    b.free_pages(pb)


def test_alloc_pages_exact_splits_and_frees_the_excess(make_arena: MakeArena) -> None:
    arena = make_arena(16, "nommu-contig")
    pages = arena.alloc_pages_exact(5)
    assert [p.pfn for p in pages] == [0, 1, 2, 3, 4]
    assert all(p.refcount == 1 and p.order == 0 and not p.is_tail for p in pages)
    s = arena.stats
    assert (s.frames_used, s.largest_alloc_order) == (5, 3)
    arena.contig_view(pages)[4 * PAGE_SIZE] = 9
    assert arena.page_view(pages[4])[0] == 9
    with pytest.raises(ValueError):
        arena.contig_view([pages[0], pages[2]])
    with arena.vmap(pages) as m:  # contiguous: fine even without an MMU
        assert m.view[4 * PAGE_SIZE] == 9
    arena.free_pages(pages[2])  # each page stands alone
    arena.free_pages_exact(pages[:2] + pages[3:])
    assert arena._buddy.free_blocks() == [(0, 4)]


def test_negative_order_is_a_programming_error(make_arena: MakeArena) -> None:
    arena = make_arena(4)
    with pytest.raises(ValueError):
        arena.alloc_pages(-1)
    with pytest.raises(AllocError):
        arena.alloc_pages(MAX_ORDER + 1)


def test_buddy_heaps_do_not_pile_up_stale_entries() -> None:
    import random

    rng = random.Random(7)
    buddy = BuddyAllocator(1024, MAX_ORDER)
    held: list[tuple[int, int]] = []
    for _ in range(20000):
        if held and (rng.random() < 0.5 or buddy.nr_free < 16):
            pfn, order = held.pop(rng.randrange(len(held)))
            buddy.free(pfn, order)
        else:
            order = rng.choice((0, 0, 0, 1, 2))
            got = buddy.alloc(order)
            assert got is not None
            held.append((got, order))
        for order, (heap, free) in enumerate(zip(buddy._heaps, buddy._free, strict=True)):
            # bounded by the blocks there can be, not by the operations so far
            assert set(heap) >= free and len(heap) <= 2 * (1024 >> order) + 65
    for pfn, order in held:
        buddy.free(pfn, order)
    assert buddy.free_blocks() == [(0, MAX_ORDER)] and buddy.nr_free == 1024


def test_freeing_a_locked_or_cached_page_is_refused(make_arena: MakeArena) -> None:
    from mmshim import PageCache

    arena = make_arena(8)
    for order in (0, 1):
        p = arena.alloc_pages(order)
        p.lock()
        with pytest.raises(
            BadPageStateError, match=r"flags <PageFlags\.[\w|]*PG_locked[\w|]*: \d+> still set"
        ):
            arena.free_pages(p)
        assert not p.is_free and p.refcount == 1
        p.unlock()
        arena.free_pages(p)
        assert p.is_free
    cache = PageCache(arena)
    page = cache.find_or_create(1, 0)
    page.unlock()
    cache.release(page)
    with pytest.raises(BadPageStateError, match="PG_lru"):
        arena.put_page(page)  # the cache's own reference: a bug the arena names
    assert page.refcount == 1 and not page.is_free
    cache.close()
    assert page.is_free


@settings(max_examples=200, deadline=None)
@given(
    nr_frames=st.sampled_from([16, 100, 128, 1500]),
    script=st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=40),
    nr=st.integers(1, 40),
)
def test_alloc0_run_is_successive_alloc0_calls(
    nr_frames: int, script: list[tuple[bool, int]], nr: int
) -> None:
    """From any state with no free order-0 block, one run == its alloc(0) calls in a row."""
    twins = [BuddyAllocator(nr_frames, MAX_ORDER) for _ in range(2)]
    held: list[tuple[int, int]] = []
    for alloc, order in script:  # the same history on both
        if alloc or not held:
            pfns = {b.alloc(order) for b in twins}
            assert len(pfns) == 1
            pfn = pfns.pop()
            if pfn is not None:
                held.append((pfn, order))
        else:
            pfn, order = held.pop(order % len(held))
            for b in twins:
                b.free(pfn, order)
    run, single = twins
    while run.free_counts()[0]:  # use up the order-0 blocks: alloc0_run's precondition
        assert run.alloc(0) == single.alloc(0)
    while run.nr_free and not run.free_counts()[0]:
        first, taken, rest = run.alloc0_run(nr)
        assert 1 <= taken <= nr
        assert [single.alloc(0) for _ in range(taken)] == list(range(first, first + taken))
        assert run.free_blocks() == single.free_blocks() and run.nr_free == single.nr_free
        assert set(rest) <= set(run.free_blocks())
        nr = max(1, nr - taken)
