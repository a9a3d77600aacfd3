"""Folios and tail pages: the seed's question, answered both ways."""

from __future__ import annotations

import threading

import pytest

from mmshim import (
    PAGE_SIZE,
    VM_MAP_PUT_PAGES,
    Arena,
    BadPageStateError,
    Page,
    PageFlags,
    PG_dirty,
    PG_free,
    PG_head,
    PG_locked,
    PG_tail,
    PG_uptodate,
    TailPageError,
)

from .conftest import MakeArena


def test_folio_layout(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    head = arena.alloc_pages(2)
    tails = [arena.page(head.pfn + i) for i in (1, 2, 3)]
    assert head.flags & PG_head and head.refcount == 1 and head.order == 2
    assert all(t.flags & PG_tail and t.refcount == 0 and t.head is head for t in tails)
    assert all(t.order == 2 and t.is_tail for t in tails)
    order0 = arena.alloc_pages(0)
    assert not order0.flags & PG_head and order0.head is order0
    arena.free_pages(head)
    arena.free_pages(order0)


def test_freeing_a_tail_page_as_order_0_is_named_and_harmless(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    head = arena.alloc_pages(2)
    tail = arena.page(head.pfn + 1)
    with pytest.raises(TailPageError, match=rf"pfn {tail.pfn}.*VM_BUG_ON_PAGE") as info:
        arena.free_pages(tail)
    assert info.value.pfn == tail.pfn
    arena.check_invariants()
    assert head.refcount == 1 and tail.is_tail and arena.stats.frames_used == 4
    arena.free_pages(head)


def test_references_on_tail_pages_go_to_the_head(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    head = arena.alloc_pages(3)
    tail = arena.page(head.pfn + 5)
    arena.get_page(tail)
    assert head.refcount == 2 and tail.refcount == 0
    arena.free_pages(head)
    assert not head.is_free
    arena.put_page(tail)  # the last reference: the whole folio goes
    assert arena.page(head.pfn).is_free and arena.stats.frames_free == 16


def make_folios_and_tail_list(
    make_arena: MakeArena, policy: str
) -> tuple[Arena, Page, Page, list[Page]]:
    """Two order-2 folios; a page list of tail pages from both, one reference per entry."""
    arena = make_arena(32, "mmu", tail_pages=policy)
    f1 = arena.alloc_pages(2)
    f2 = arena.alloc_pages(2)
    pages = [arena.page(f1.pfn + 1), arena.page(f2.pfn + 3), arena.page(f1.pfn + 2)]
    for p in pages:
        arena.get_page(p)  # the page list owns these
    return arena, f1, f2, pages


def test_folio_policy_put_pages_drops_references_on_heads(make_arena: MakeArena) -> None:
    arena, f1, f2, pages = make_folios_and_tail_list(make_arena, "folio")
    assert (f1.refcount, f2.refcount) == (3, 2)
    m = arena.vmap(pages, VM_MAP_PUT_PAGES)
    arena.page_view(pages[1])[0] = 0x42
    assert m.view[PAGE_SIZE] == 0x42  # tail pages stitched together and aliased
    arena.vunmap(m)
    assert (f1.refcount, f2.refcount) == (1, 1)
    arena.free_pages(f1)
    arena.free_pages(f2)
    assert arena.stats.frames_free == 32


def test_folio_policy_put_pages_can_free_the_folios(make_arena: MakeArena) -> None:
    arena, f1, f2, pages = make_folios_and_tail_list(make_arena, "folio")
    arena.free_pages(f1)  # the list now holds the only references
    arena.free_pages(f2)
    with arena.vmap(pages, VM_MAP_PUT_PAGES):
        pass
    assert f1.is_free and f2.is_free and arena.stats.frames_free == 32


def test_seed_kernel_freeing_entries_as_order_0_hits_the_bug(make_arena: MakeArena) -> None:
    """What vunmap(VM_MAP_PUT_PAGES) did in the seed: __free_page() on each entry."""
    arena, f1, f2, pages = make_folios_and_tail_list(make_arena, "folio")
    with pytest.raises(TailPageError):
        arena.free_pages(pages[0])
    for p in pages:
        arena.put_page(p)
    arena.free_pages(f1)
    arena.free_pages(f2)


def test_reject_policy_refuses_tail_pages(make_arena: MakeArena) -> None:
    arena, f1, f2, pages = make_folios_and_tail_list(make_arena, "reject")
    with pytest.raises(TailPageError, match="tail page"):
        arena.vmap(pages, VM_MAP_PUT_PAGES)
    with pytest.raises(TailPageError):
        arena.vm_map_ram([f1, pages[0]])
    s = arena.stats
    assert (s.vmap_calls, s.vmap_failures, s.vmaps_live) == (2, 2, 0)
    assert (f1.refcount, f2.refcount) == (3, 2), "refused before anything changed"
    # heads and order-0 pages are fine, and PUT_PAGES frees order-0 pages
    single = [arena.alloc_pages(0), arena.alloc_pages(0)]
    with arena.vmap([f1, f2, *single], VM_MAP_PUT_PAGES):
        pass
    assert all(p.is_free for p in single)
    assert (f1.refcount, f2.refcount) == (2, 1)
    for p in pages:  # the list's references; the vmap consumed the allocations'
        arena.put_page(p)
    assert f1.is_free and f2.is_free


def test_put_pages_without_enough_references_is_refused_first(make_arena: MakeArena) -> None:
    arena = make_arena(16, "mmu")
    f = arena.alloc_pages(1)
    pages = [f, arena.page(f.pfn + 1)]  # two entries, one reference
    m = arena.vmap(pages, VM_MAP_PUT_PAGES)
    with pytest.raises(BadPageStateError, match="holds only 1"):
        arena.vunmap(m)
    assert m.mapped and arena.stats.vmaps_live == 1
    arena.get_page(f)
    arena.vunmap(m)
    assert f.is_free


def test_folio_view_wants_the_head(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    f = arena.alloc_pages(2)
    assert len(arena.folio_view(f)) == 4 * PAGE_SIZE
    with pytest.raises(TailPageError):
        arena.folio_view(arena.page(f.pfn + 2))
    arena.folio_view(f)[3 * PAGE_SIZE] = 1
    assert arena.page_view(arena.page(f.pfn + 3))[0] == 1
    arena.free_pages(f)


def folio_state(p: Page) -> tuple[bool, bool, bool]:
    return p.is_locked, p.is_uptodate, p.is_dirty


def test_flags_read_as_pageflags_and_predicates_agree(make_arena: MakeArena) -> None:
    arena = make_arena(16)
    assert arena.page(0).flags == PG_free and type(arena.page(0).flags) is PageFlags
    head = arena.alloc_pages(2)
    tail = arena.page(head.pfn + 1)
    assert head.flags == PG_head and tail.flags == PG_tail and isinstance(tail.flags, PageFlags)
    head.lock()
    tail.set_uptodate()  # on the folio: the head's flags
    arena.set_page_flags(head, PG_dirty)
    assert head.flags == PG_head | PG_locked | PG_uptodate | PG_dirty
    assert folio_state(tail) == (True, True, True) and tail.flags == PG_tail
    assert repr(head.flags) == repr(PG_head | PG_locked | PG_uptodate | PG_dirty)
    with pytest.raises(ValueError, match="only PG_uptodate and PG_dirty"):
        arena.set_page_flags(head, PG_locked)
    with pytest.raises(ValueError, match="only PG_uptodate and PG_dirty"):
        arena.clear_page_flags(head, PG_free)
    arena.clear_page_flags(tail, PG_uptodate | PG_dirty)
    head.unlock()
    assert head.flags == PG_head and folio_state(tail) == (False, False, False)
    assert arena.frames_free == arena.stats.frames_free == 12
    arena.free_pages(head)
    assert all(arena.page(head.pfn + i).flags == PG_free for i in range(4))


def test_folio_lock_waits_for_the_holder(make_arena: MakeArena) -> None:
    arena = make_arena(8)
    page = arena.alloc_pages(0)
    page.lock()
    order: list[str] = []

    def waiter() -> None:
        page.lock()  # blocks until the main thread unlocks
        order.append("waiter locked")
        page.unlock()

    t = threading.Thread(target=waiter)
    t.start()
    t.join(0.1)
    assert t.is_alive() and not order
    order.append("holder unlocks")
    page.unlock()
    t.join(5)
    assert not t.is_alive() and order == ["holder unlocks", "waiter locked"]
    page.wait_unlocked()
    arena.free_pages(page)
