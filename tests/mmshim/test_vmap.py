"""vmap under the three MMU semantics of DESIGN.md."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmshim import (
    PAGE_SIZE,
    Arena,
    Mapping,
    MappingKind,
    MmshimError,
    Owner,
    Page,
    VmapError,
)

from .conftest import MakeArena


def scattered(arena: Arena, nr: int) -> tuple[list[Page], list[Page]]:
    """Allocate 2*nr order-0 pages and return every other one (scattered) and the rest."""
    pages = [arena.alloc_pages(0) for _ in range(2 * nr)]
    return pages[::2], pages[1::2]


def fill(arena: Arena, pages: list[Page]) -> None:
    for i, p in enumerate(pages):
        arena.page_view(p)[:] = bytes([i + 1]) * PAGE_SIZE


def free_all(arena: Arena, *groups: list[Page]) -> None:
    for group in groups:
        for p in group:
            arena.free_pages(p)


def test_mmu_scattered_aliases_both_ways_without_copy(make_arena: MakeArena) -> None:
    arena = make_arena(64, "mmu")
    pages, gaps = scattered(arena, 16)
    fill(arena, pages)
    with arena.vmap(pages) as m:
        assert m.kind is MappingKind.REMAP and len(m.view) == 16 * PAGE_SIZE
        # what the frames hold is what the view shows, at each page's place
        for i in range(16):
            assert m.view[i * PAGE_SIZE] == i + 1
        # view -> frame, at once
        m.view[5 * PAGE_SIZE + 7 : 5 * PAGE_SIZE + 12] = b"hello"
        assert bytes(arena.page_view(pages[5])[7:12]) == b"hello"
        # frame -> view, at once
        arena.page_view(pages[11])[100:105] = b"world"
        assert bytes(m.view[11 * PAGE_SIZE + 100 : 11 * PAGE_SIZE + 105]) == b"world"
        # the gaps between the frames are untouched
        assert all(arena.page_view(g)[0] == 0 for g in gaps)
    assert not m.mapped
    s = arena.stats
    assert (s.bounce_bytes, s.bounce_vmaps, s.lost_writes, s.vmap_calls) == (0, 0, 0, 1)
    assert s.frames_used == 32, "no frame was spent on the mapping"
    assert bytes(arena.page_view(pages[5])[7:12]) == b"hello", "nothing copied back over it"
    free_all(arena, pages, gaps)


def test_mmu_contiguous_is_one_mapping(make_arena: MakeArena) -> None:
    arena = make_arena(16, "mmu")
    head = arena.alloc_pages(2)
    pages = [arena.page(head.pfn + i) for i in range(4)]
    with arena.vmap(pages) as m:
        m.view[PAGE_SIZE * 3] = 0xAB
        assert arena.folio_view(head)[PAGE_SIZE * 3] == 0xAB
    assert arena.stats.bounce_bytes == 0
    arena.free_pages(head)


@pytest.mark.parametrize("mode", ["nommu-contig", "nommu-bounce"])
def test_nommu_contiguous_pages_are_their_own_memory(make_arena: MakeArena, mode: str) -> None:
    arena = make_arena(16, mode)
    pages = [arena.alloc_pages(0) for _ in range(4)]  # pfn 0..3
    used = arena.stats.frames_used
    with arena.vmap(pages) as m:
        assert m.kind is MappingKind.DIRECT
        assert arena.stats.frames_used == used
        m.view[PAGE_SIZE + 1] = 7
        assert arena.page_view(pages[1])[1] == 7
        arena.page_view(pages[2])[2] = 9
        assert m.view[2 * PAGE_SIZE + 2] == 9
    assert arena.stats.bounce_bytes == 0 and arena.stats.vmap_failures == 0
    free_all(arena, pages)


@settings(max_examples=40, deadline=None)
@given(order=st.lists(st.integers(0, 11), min_size=1, max_size=12, unique=True))
def test_nommu_contig_fails_exactly_on_non_contiguous(order: list[int]) -> None:
    arena = Arena(16 * PAGE_SIZE, "nommu-contig")
    try:
        pages = [arena.alloc_pages(0) for _ in range(12)]
        chosen = [pages[i] for i in order]
        contiguous = all(b == a + 1 for a, b in itertools.pairwise(order))
        if contiguous:
            with arena.vmap(chosen) as m:
                assert m.kind is MappingKind.DIRECT
            assert arena.stats.vmap_failures == 0
        else:
            with pytest.raises(VmapError) as info:
                arena.vmap(chosen)
            assert isinstance(info.value, MemoryError) and info.value.errno == 12
            assert arena.stats.vmap_failures == 1 and arena.stats.vmaps_live == 0
        assert arena.stats.vmap_calls == 1
        assert all(p.mapcount == 0 for p in pages)
        free_all(arena, pages)
    finally:
        arena.close()


def test_bounce_copies_in_and_out_and_counts(make_arena: MakeArena) -> None:
    arena = make_arena(64, "nommu-bounce")
    pages, gaps = scattered(arena, 16)
    fill(arena, pages)
    with arena.vmap(pages) as m:
        assert m.kind is MappingKind.BOUNCE and m.bounce is not None
        assert m.bounce.order == 4 and m.bounce.owner is Owner.BOUNCE
        assert arena.stats.frames_by_owner["bounce"] == 16
        assert arena.stats.bounce_bytes == 16 * PAGE_SIZE  # copied in
        assert [m.view[i * PAGE_SIZE] for i in range(16)] == list(range(1, 17))
        m.view[3 * PAGE_SIZE : 3 * PAGE_SIZE + 4] = b"data"
        # not shared: the frame does not see the write until vunmap
        assert bytes(arena.page_view(pages[3])[:4]) == b"\x04" * 4
    assert bytes(arena.page_view(pages[3])[:4]) == b"data"  # copied back
    s = arena.stats
    assert s.bounce_bytes == 2 * 16 * PAGE_SIZE and s.bounce_vmaps == 1 and s.lost_writes == 0
    assert s.frames_by_owner["bounce"] == 0 and s.frames_used == 32
    assert s.frames_peak == 48, "the bounce buffer came from the arena"
    free_all(arena, pages, gaps)


def test_bounce_detects_a_lost_write(make_arena: MakeArena) -> None:
    arena = make_arena(64, "nommu-bounce")
    pages, gaps = scattered(arena, 16)
    fill(arena, pages)
    m = arena.vmap(pages)
    arena.page_view(pages[7])[0:6] = b"shared"  # someone writes the page itself
    arena.page_view(pages[9])[0:1] = bytes([10])  # same byte as before: nothing lost
    assert bytes(m.view[7 * PAGE_SIZE : 7 * PAGE_SIZE + 6]) == b"\x08" * 6  # not seen
    arena.vunmap(m)
    assert m.lost_writes == 1 and arena.stats.lost_writes == 1
    assert bytes(arena.page_view(pages[7])[0:6]) == b"\x08" * 6, "the write is gone"
    free_all(arena, pages, gaps)


def test_bounce_fails_in_fragmented_arena_with_enough_free_frames(make_arena: MakeArena) -> None:
    arena = make_arena(64, "nommu-bounce")
    pages = [arena.alloc_pages(0) for _ in range(64)]
    for p in pages[1::2]:  # free every other frame: 32 free, none adjacent
        arena.free_pages(p)
    held = pages[::2]
    cluster = held[:16]
    s = arena.stats
    assert s.frames_free == 32 and s.largest_free_order == 0
    with pytest.raises(VmapError, match="bounce"):
        arena.vmap(cluster)
    s = arena.stats
    assert (s.vmap_failures, s.alloc_failures, s.largest_alloc_order) == (1, 1, 4)
    assert s.frames_free == 32 and s.vmaps_live == 0
    assert all(p.mapcount == 0 for p in cluster)
    free_all(arena, held)


def test_bounce_of_three_pages_takes_an_order_two_block(make_arena: MakeArena) -> None:
    arena = make_arena(16, "nommu-bounce")
    pages, gaps = scattered(arena, 3)
    with arena.vmap(pages) as m:
        assert m.bounce is not None and m.bounce.order == 2
        assert len(m.view) == 3 * PAGE_SIZE
    free_all(arena, pages, gaps)


def test_same_page_twice(make_arena: MakeArena) -> None:
    for mode in ("mmu", "nommu-bounce"):
        arena = make_arena(16, mode)
        a, b = arena.alloc_pages(0), arena.alloc_pages(0)
        arena.page_view(a)[0] = 1
        with arena.vmap([a, b, a]) as m:
            assert m.view[0] == 1 and m.view[2 * PAGE_SIZE] == 1
            assert a.mapcount == 2
        assert arena.stats.lost_writes == 0
        free_all(arena, [a, b])


def test_vm_map_ram_pairs_with_vm_unmap_ram(make_arena: MakeArena) -> None:
    arena = make_arena(16, "mmu")
    pages, gaps = scattered(arena, 4)
    m = arena.vm_map_ram(pages)
    with pytest.raises(MmshimError, match="vm_unmap_ram"):
        arena.vunmap(m)
    m.view[0] = 5
    arena.vm_unmap_ram(m)
    assert arena.page_view(pages[0])[0] == 5
    with pytest.raises(MmshimError, match="not a live mapping"):
        arena.vm_unmap_ram(m)
    with arena.vm_map_ram(pages) as m2:  # the context manager knows which
        assert m2.via_map_ram
    free_all(arena, pages, gaps)


def test_freeing_a_vmapped_page_is_refused(make_arena: MakeArena) -> None:
    arena = make_arena(16, "mmu")
    pages, gaps = scattered(arena, 2)
    with arena.vmap(pages):
        with pytest.raises(MmshimError, match="vmap"):
            arena.free_pages(pages[0])
        assert not pages[0].is_free
    free_all(arena, pages, gaps)


def test_vmap_of_a_free_page_or_nothing_is_refused(make_arena: MakeArena) -> None:
    arena = make_arena(16, "mmu")
    p = arena.alloc_pages(0)
    arena.free_pages(p)
    with pytest.raises(MmshimError, match="free"):
        arena.vmap([p])
    with pytest.raises(ValueError):
        arena.vmap([])


@pytest.mark.parametrize("mode", ["mmu", "nommu-contig", "nommu-bounce"])
def test_stale_view_after_unmap_never_reaches_the_frames(make_arena: MakeArena, mode: str) -> None:
    arena = make_arena(16, mode)
    pages = [arena.alloc_pages(0) for _ in range(2)]
    with arena.vmap(pages) as m:
        stale = m.view[10:20]  # a slice kept past the unmap
    assert arena.stats.stale_view_unmaps == 1
    with pytest.raises(ValueError):
        m.view[0]
    stale[:] = b"x" * 10  # harmless: private memory now, no crash
    assert bytes(arena.page_view(pages[0])[10:20]) == bytes(10)
    del stale
    free_all(arena, pages)


def test_observer_sees_every_step(make_arena: MakeArena) -> None:
    arena = make_arena(32, "nommu-bounce")
    seen: list[int] = []
    arena.add_observer(lambda a: seen.append(a.stats.frames_used))
    pages, gaps = scattered(arena, 2)  # 4 allocs
    with arena.vmap(pages):  # bounce alloc + vmap
        pass  # vunmap frees the bounce buffer: one notification
    free_all(arena, pages, gaps)
    assert seen == [1, 2, 3, 4, 6, 6, 4, 3, 2, 1, 0]


def test_mapping_describes_itself(make_arena: MakeArena) -> None:
    arena = make_arena(16, "mmu")
    pages, gaps = scattered(arena, 2)
    m: Mapping = arena.vmap(pages)
    assert "vmap remap of 2 pages [pfn 0,2]" in repr(m)
    arena.vunmap(m)
    free_all(arena, pages, gaps)


# A write is (side, page, offset, value): side 0 writes through the view,
# side 1 writes the frame itself (page_view), as another user of the page.
writes = st.lists(
    st.tuples(
        st.integers(0, 1), st.integers(0, 5), st.integers(0, PAGE_SIZE - 1), st.integers(0, 255)
    ),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(["mmu", "nommu-contig", "nommu-bounce"]),
    spread=st.booleans(),
    script=writes,
)
def test_writes_while_mapped_follow_the_mode(
    mode: str, spread: bool, script: list[tuple[int, int, int, int]]
) -> None:
    """mmu and direct mappings share every write both ways at once; a bounce
    mapping shares nothing until vunmap, which keeps the view's bytes and
    counts each page whose direct write it overwrote."""
    arena = Arena(32 * PAGE_SIZE, mode)
    try:
        allocated = [arena.alloc_pages(0) for _ in range(12)]
        pages = allocated[::2] if spread else allocated[:6]
        if mode == "nommu-contig" and spread:
            with pytest.raises(VmapError):
                arena.vmap(pages)
            for p in allocated:
                arena.free_pages(p)
            return
        for i, p in enumerate(pages):
            arena.page_view(p)[:] = bytes([i]) * PAGE_SIZE
        initial = [bytes(arena.page_view(p)) for p in pages]
        shared = mode == "mmu" or not spread
        view_model = [bytearray(b) for b in initial]
        frame_model = view_model if shared else [bytearray(b) for b in initial]
        with arena.vmap(pages) as m:
            for side, page, off, value in script:
                if side == 0:
                    m.view[page * PAGE_SIZE + off] = value
                    view_model[page][off] = value
                else:
                    arena.page_view(pages[page])[off] = value
                    frame_model[page][off] = value
                assert m.view[page * PAGE_SIZE + off] == view_model[page][off]
                assert arena.page_view(pages[page])[off] == frame_model[page][off]
            assert bytes(m.view) == b"".join(view_model)
        lost = sum(
            1
            for page in range(6)
            if frame_model[page] != initial[page] and frame_model[page] != view_model[page]
        )
        assert m.lost_writes == arena.stats.lost_writes == (0 if shared else lost)
        for page, p in enumerate(pages):  # after vunmap the frames hold the view's bytes
            assert bytes(arena.page_view(p)) == view_model[page]
        assert arena.stats.bounce_bytes == (0 if shared else 2 * 6 * PAGE_SIZE)
        for p in allocated:
            arena.free_pages(p)
    finally:
        arena.close()
