"""The arena: a fixed-size, memfd-backed block of page frames and everything done to it.

One :class:`Arena` is the physical memory of one simulated machine.  It is
allocated once; every frame the shim hands out, bounce buffers included, is
a frame of it.  The arena keeps the per-frame metadata (:class:`Page`) in
step with a buddy allocator, maps pages with ``vmap`` under the mount's MMU
semantics, asks shrinkers (the page cache) for memory before an allocation
fails, and counts everything.  All state is per arena and behind one
re-entrant lock, so a few threads may share an arena and two arenas never
interfere.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import mmap
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from heapq import heappop
from typing import Final, Literal, get_args

from mmshim import _vmap
from mmshim._buddy import BuddyAllocator
from mmshim._errors import (
    AllocError,
    BadPageStateError,
    MappingLeakError,
    MmshimError,
    TailPageError,
    VmapError,
)
from mmshim._page import (
    F_DIRTY,
    F_FREE,
    F_HEAD,
    F_LOCKED,
    F_LRU,
    F_TAIL,
    F_UPTODATE,
    MAX_ORDER,
    PAGE_SIZE,
    Owner,
    OwnerKind,
    Page,
    PageFlags,
    Pfn,
)
from mmshim._stats import ArenaStats
from mmshim._vmap import VM_MAP_PUT_PAGES, Mapping, MappingKind

MmMode = Literal["mmu", "nommu-contig", "nommu-bounce"]
TailPagePolicy = Literal["folio", "reject"]
MM_MODES: Final[tuple[str, ...]] = get_args(MmMode)
TAIL_PAGE_POLICIES: Final[tuple[str, ...]] = get_args(TailPagePolicy)

Shrinker = Callable[[int], int]
# A shrinker's shortcut for the allocator's commonest reclaim: see
# Arena._register_frame_donor.
FrameDonor = Callable[[], "Page | None"]
Observer = Callable[["Arena"], None]

# Flags a folio must not carry when it goes back to the buddy allocator
# (the kernel's PAGE_FLAGS_CHECK_AT_FREE, reduced to the flags we model).
_CHECK_AT_FREE: Final = F_LOCKED | F_LRU
# The only flags set_page_flags / clear_page_flags may change.
_SETTABLE: Final = F_UPTODATE | F_DIRTY
_OWNER_KINDS: Final = tuple(OwnerKind)
# The arena counts frames per owner kind in a list; a kind's slot in it is
# found by the member's id (enum members live as long as the process), since
# hashing an enum member is a Python-level call on every alloc and free.
_SLOT: Final = {id(k): i for i, k in enumerate(_OWNER_KINDS)}
_FREE_SLOT: Final = _SLOT[id(OwnerKind.FREE)]
_KIND_VALUES: Final[tuple[str, ...]] = tuple(k.value for k in _OWNER_KINDS)
_OWNER_FREE: Final = Owner.FREE


def is_contiguous(pages: Sequence[Page]) -> bool:
    """True if the pages are consecutive frames (pfn, pfn+1, ...) of one arena."""
    if not pages:
        return False
    first = pages[0]
    pfn: int = first.pfn
    arena = first._arena
    if pages[-1].pfn != pfn + len(pages) - 1:  # the common "no" in O(1)
        return False
    for p in pages:
        if p.pfn != pfn or p._arena is not arena:
            return False
        pfn += 1
    return True


def _digest(frame: memoryview) -> bytes:
    return hashlib.blake2b(frame, digest_size=16).digest()


# madvise(MADV_POPULATE_WRITE), Linux 5.14 (asm-generic/mman-common.h); Python's
# mmap module lacks the name
_MADV_POPULATE_WRITE: Final = 23


def _host_available_bytes() -> int | None:
    """``MemAvailable`` of the host, or None where /proc/meminfo does not say."""
    try:
        with open("/proc/meminfo", "rb") as fh:
            for line in fh:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _allocate_backing(fd: int, name: str, size: int) -> None:
    """Give the arena all its memory now, as a board's RAM exists before
    anything runs on it.  A lazily backed memfd would allocate and zero each
    frame on its first touch, inside whichever read first used it (a fifth
    of a cold read's time), and would fail with SIGBUS instead of an error
    if the host ran out of memory then."""
    available = _host_available_bytes()
    if available is not None and size > available:
        raise AllocError(
            f"{name}: an arena of {size} bytes is more than the host's available memory "
            f"({available} bytes)",
            order=0,
            frames_free=0,
        )
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        raise AllocError(
            f"{name}: cannot allocate the arena's {size} bytes on the host: {e.strerror}",
            order=0,
            frames_free=0,
        ) from None


def _populate(mm: mmap.mmap) -> None:
    """Map every frame of the arena's own mapping now (one call, not one
    fault per frame on first use).  Kernels before 5.14 lack the advice: then
    the frames are mapped on first touch, which only costs time."""
    with contextlib.suppress(OSError):
        mm.madvise(_MADV_POPULATE_WRITE)


class _MemFd:
    """The arena's memfd: closed by :meth:`Arena.close`, or when the arena is
    collected without one."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        self.close()


class Arena:
    """``size`` bytes of page frames with the kernel's allocator and vmap semantics.

    ``mode`` is how ``vmap`` behaves: ``"mmu"`` (remap the frames, real
    aliasing), ``"nommu-contig"`` (only physically contiguous pages, else
    ENOMEM) or ``"nommu-bounce"`` (contiguous pages directly, scattered ones
    through a bounce buffer from the arena).  ``tail_pages`` answers the
    seed's question for ``vmap``: ``"folio"`` accepts tail pages of large
    folios and sends their references to the head, ``"reject"`` raises
    :class:`TailPageError` for them.
    """

    def __init__(
        self,
        size: int,
        mode: str = "mmu",
        *,
        tail_pages: str = "folio",
        name: str = "mmshim-arena",
    ) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"arena size {size} is not a positive multiple of {PAGE_SIZE}")
        if mode not in MM_MODES:
            raise ValueError(f"unknown mm mode {mode!r} (one of {', '.join(MM_MODES)})")
        if tail_pages not in TAIL_PAGE_POLICIES:
            raise ValueError(
                f"unknown tail page policy {tail_pages!r} (one of {', '.join(TAIL_PAGE_POLICIES)})"
            )
        self.size: Final = size
        self.mode: Final = mode
        self.tail_pages: Final = tail_pages
        self.nr_pages: Final = size // PAGE_SIZE
        self._lock = threading.RLock()
        self._page_lock_wait = threading.Condition(self._lock)
        self._page_lock_waiters = 0  # threads in wait(): unlock_page wakes only if any

        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        self._memfd = _MemFd(fd)
        self._fd = fd
        os.ftruncate(fd, size)
        try:
            _allocate_backing(fd, name, size)
        except AllocError:
            self._memfd.close()
            raise
        self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        _populate(self._mm)
        self._buf = memoryview(self._mm)

        self._pages = [Page(self, Pfn(pfn)) for pfn in range(self.nr_pages)]
        self._buddy = BuddyAllocator(self.nr_pages, MAX_ORDER)
        for pfn, order in self._buddy.free_blocks():
            self._pages[pfn]._order = order
        self._mappings: dict[int, Mapping] = {}
        self._shrinkers: list[Shrinker] = []
        self._frame_donors: dict[Shrinker, FrameDonor] = {}
        self._observers: list[Observer] = []
        # frames per OwnerKind, indexed by _SLOT
        self._owner_frames = [0] * len(_OWNER_KINDS)
        self._owner_frames[_FREE_SLOT] = self.nr_pages
        self._closed = False

        self._frames_peak = 0
        self._alloc_calls = 0
        self._alloc_failures = 0
        self._largest_alloc_order = -1
        self._vmap_calls = 0
        self._vmap_failures = 0
        self._bounce_vmaps = 0
        self._bounce_bytes = 0
        self._lost_writes = 0
        self._evictions = 0
        self._stale_view_unmaps = 0

    # -- bookkeeping ---------------------------------------------------------

    @property
    def lock(self) -> threading.RLock:
        """The arena's lock; the page cache shares it, so the two cannot deadlock."""
        return self._lock

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<Arena {self.size // 1024} KiB {self.mode} tail_pages={self.tail_pages}{state}>"

    def __enter__(self) -> Arena:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise MmshimError(f"{self!r} is closed")

    def _own(self, page: Page) -> Page:
        if page._arena is not self:
            raise ValueError(f"{page!r} belongs to another arena")
        return page

    def _notify(self) -> None:
        # Callers test ``if self._observers`` first: no observer, no call.
        for fn in self._observers:
            fn(self)

    def page(self, pfn: int) -> Page:
        """The page metadata of frame ``pfn`` (``pfn_to_page``)."""
        if not 0 <= pfn < self.nr_pages:
            raise IndexError(f"pfn {pfn} outside the arena (0..{self.nr_pages - 1})")
        return self._pages[pfn]

    def register_shrinker(self, fn: Shrinker) -> None:
        """Ask ``fn(nr_frames_wanted) -> frames_freed`` for memory before an allocation fails."""
        with self._lock:
            self._shrinkers.append(fn)

    def unregister_shrinker(self, fn: Shrinker) -> None:
        with self._lock:
            self._shrinkers.remove(fn)
            if fn not in self._shrinkers:
                self._frame_donors.pop(fn, None)

    def _register_frame_donor(self, shrinker: Shrinker, donor: FrameDonor) -> None:
        """Let ``donor()`` stand in for ``shrinker(1)`` plus the allocation after it.

        When an order-0 allocation finds no free frame at all, reclaim calls
        the first shrinker with 1, and if it freed a single order-0 folio,
        the buddy allocator hands that very frame out again (it is the only
        free block).  A donor does the shrinker's part without the free:
        it evicts what ``shrinker(1)`` would evict, with the same counting,
        and returns the evicted page (refcount 1, flags cleared, still counted
        under its old owner) if that was one order-0 page; otherwise it
        returns None having changed nothing, and reclaim runs as usual.
        Used only while no observer could see the difference (the free and
        the allocation are each an observer event).
        """
        with self._lock:
            if shrinker not in self._shrinkers:
                raise ValueError("a frame donor stands in for a registered shrinker")
            self._frame_donors[shrinker] = donor

    def add_observer(self, fn: Observer) -> None:
        """Call ``fn(arena)`` after every alloc, free, vmap and vunmap.

        It runs under the arena's lock, after the change: it may read
        ``arena.stats``; it must not raise (the change is already made).
        """
        with self._lock:
            self._observers.append(fn)

    def remove_observer(self, fn: Observer) -> None:
        with self._lock:
            self._observers.remove(fn)

    def _note_evictions(self, nr: int) -> None:
        self._evictions += nr

    @property
    def stats(self) -> ArenaStats:
        """A consistent snapshot of occupancy and counters."""
        with self._lock:
            free = self._buddy.nr_free
            return ArenaStats(
                frames_total=self.nr_pages,
                frames_free=free,
                frames_used=self.nr_pages - free,
                frames_peak=self._frames_peak,
                alloc_calls=self._alloc_calls,
                alloc_failures=self._alloc_failures,
                largest_free_order=self._buddy.largest_free_order(),
                largest_alloc_order=self._largest_alloc_order,
                vmap_calls=self._vmap_calls,
                vmap_failures=self._vmap_failures,
                vmaps_live=len(self._mappings),
                bounce_vmaps=self._bounce_vmaps,
                bounce_bytes=self._bounce_bytes,
                lost_writes=self._lost_writes,
                evictions=self._evictions,
                stale_view_unmaps=self._stale_view_unmaps,
                free_blocks_by_order=tuple(self._buddy.free_counts()),
                frames_by_owner=dict(zip(_KIND_VALUES, self._owner_frames, strict=True)),
            )

    @property
    def frames_free(self) -> int:
        """Free frames now: ``stats.frames_free`` without building a whole snapshot."""
        return self._buddy.nr_free

    def reset_peak(self) -> None:
        """Start a new high-water mark of used frames from the current use."""
        with self._lock:
            self._frames_peak = self.nr_pages - self._buddy.nr_free

    # -- the page allocator ---------------------------------------------------

    def alloc_pages(self, order: int = 0, owner: Owner = Owner.OTHER) -> Page:
        """Allocate a folio of ``2**order`` contiguous frames; return its head.

        The head has refcount 1.  When no free block is large enough, every
        registered shrinker is asked in turn; if that does not help,
        :class:`AllocError` (a :class:`MemoryError`) is raised.
        """
        if order < 0:
            raise ValueError(f"alloc_pages(order={order})")
        with self._lock:
            self._check_open()
            self._alloc_calls += 1
            if not order:
                got, err = self._alloc_order0((owner,))
                if err is not None:
                    raise err
                return got[0]
            if order > self._largest_alloc_order:
                self._largest_alloc_order = order
            pfn = self._buddy.alloc(order) if order <= MAX_ORDER else None
            if pfn is None and order <= MAX_ORDER:
                pfn = self._alloc_slowpath(order)
            if pfn is None:
                self._alloc_failures += 1
                free = self._buddy.nr_free
                raise AllocError(
                    f"alloc_pages(order={order}) for {owner}: no free block of "
                    f"{1 << order} frames ({free} frames free, "
                    f"largest free order {self._buddy.largest_free_order()})",
                    order=order,
                    frames_free=free,
                )
            head = self._prep_new_folio(pfn, order, owner)
            if self._observers:
                self._notify()
            return head

    def alloc_pages_bulk(self, nr: int, owner: Owner = Owner.OTHER) -> list[Page]:
        """Allocate ``nr`` order-0 pages, each with refcount 1 (the kernel's ``alloc_pages_bulk``).

        The pages are exactly those ``nr`` successive ``alloc_pages(0, owner)``
        calls would return, in that order: the same lowest-address buddy
        choices, and the shrinkers asked the same way whenever the free lists
        run dry.  All or nothing: if a page cannot be had even after reclaim,
        the pages already taken are freed again (last first) and
        :class:`AllocError` is raised, as ``alloc_pages`` raises it.  One lock
        acquisition.  ``stats.alloc_calls`` counts it as one call, as the
        kernel's bulk allocator is one call; ``frames_peak``,
        ``largest_alloc_order`` and ``alloc_failures`` count as the single
        calls would, and observers are called after every page as they would
        be.  Free them with :meth:`free_pages_bulk`.
        """
        if nr < 0:
            raise ValueError(f"alloc_pages_bulk of {nr} pages")
        with self._lock:
            self._check_open()
            self._alloc_calls += 1
            if not nr:
                return []
            got, err = self._alloc_order0([owner] * nr)
            if err is not None:
                self._unwind_order0(got)
                raise err
            return got

    def _alloc_order0(
        self, owners: Sequence[Owner], *, count_each: bool = False
    ) -> tuple[list[Page], AllocError | None]:
        """``alloc_pages(0, owner)`` for each owner in turn; all owners of one kind.

        ``alloc_calls`` counts one call per page tried with ``count_each``,
        none without (the caller counts).

        Returns the pages taken and, if it stopped short, the error the
        failing single call would have raised (``alloc_failures`` counted):
        the caller gives the pages back (:meth:`_unwind_order0`) or keeps
        them.  The lock must be held.

        This is ``alloc_pages(0)`` and ``_prep_new_folio`` inline, taking
        each frame the successive single calls would take: the lowest free
        order-0 block, straight off the buddy heap; if there is none, the
        frames successive splits of one block give, at once
        (:meth:`BuddyAllocator.alloc0_run`; one split at a time while an
        observer watches); if nothing is free, the frame the first
        shrinker's donor hands over (see :meth:`_register_frame_donor`), or
        else reclaim as :meth:`_alloc_slowpath` does it.
        """
        if self._largest_alloc_order < 0:
            self._largest_alloc_order = 0
        got: list[Page] = []
        if not owners:
            return got, None
        buddy = self._buddy
        free0, heap0 = buddy._free[0], buddy._heaps[0]
        pages = self._pages
        slot = _SLOT[id(owners[0].kind)]
        notify = bool(self._observers)
        taken = 0  # since the occupancy counters were last brought up to date
        run_pfn = run_end = 0  # frames of a block being used up (BuddyAllocator.alloc0_run)
        for i, owner in enumerate(owners):
            if count_each:
                self._alloc_calls += 1
            if run_pfn < run_end:
                head = pages[run_pfn]
                run_pfn += 1
            elif free0:
                while True:  # BuddyAllocator.alloc(0) when an order-0 block is free
                    pfn = heappop(heap0)
                    if pfn in free0:
                        free0.remove(pfn)
                        break
                buddy.nr_free -= 1
                head = pages[pfn]
            else:
                if taken:  # (if not, the peak and counts are already up to date)
                    self._account_order0(taken, slot)
                    taken = 0
                if buddy.nr_free and not notify:
                    # No order-0 block: take at once the frames that successive
                    # alloc(0) calls would split off the same block in turn.
                    got_pfn, nr, rest = buddy.alloc0_run(len(owners) - i)
                    pages[got_pfn]._order = 0  # was the whole block's
                    for pfn, order in rest:
                        pages[pfn]._order = order
                    run_pfn, run_end = got_pfn + 1, got_pfn + nr
                elif buddy.nr_free:  # one by one: an observer sees every split
                    split = buddy.alloc(0)
                    assert split is not None  # something is free, so a block splits
                    got_pfn = split
                else:
                    if not notify and self._shrinkers:
                        donor = self._frame_donors.get(self._shrinkers[0])
                        donated = donor() if donor is not None else None
                        if donated is not None:  # reclaim freed one page and we took it
                            if donated.refcount != 1 or donated.mapcount or donated._order:
                                raise AssertionError(f"frame donor handed over {donated!r}")
                            owner_frames = self._owner_frames
                            owner_frames[_SLOT[id(donated.owner.kind)]] -= 1
                            owner_frames[slot] += 1
                            donated._flags = 0
                            donated.owner = owner
                            got.append(donated)
                            continue
                    reclaimed = self._alloc_slowpath(0)
                    if reclaimed is None:
                        self._alloc_failures += 1
                        free = buddy.nr_free
                        err = AllocError(
                            f"alloc_pages(order=0) for {owner}: no free block of "
                            f"1 frames ({free} frames free, "
                            f"largest free order {buddy.largest_free_order()})",
                            order=0,
                            frames_free=free,
                        )
                        return got, err
                    got_pfn = reclaimed
                head = pages[got_pfn]
                # The buddy allocator split a larger block: mark the halves it
                # gave back.  (alloc0_run's are marked above.)
                for k in range(head._order):
                    pages[got_pfn + (1 << k)]._order = k
                head._order = 0
            if head._flags != F_FREE or head.refcount or head.mapcount:
                raise AssertionError(f"buddy allocator handed out {head!r}")
            head._flags = 0
            head.owner = owner
            head.refcount = 1
            got.append(head)
            taken += 1
            if notify:
                self._account_order0(taken, slot)
                taken = 0
                self._notify()
        self._account_order0(taken, slot)
        return got, None

    def _account_order0(self, nr: int, slot: int) -> None:
        """Move ``nr`` frames just allocated from the free count to ``slot``; update the peak."""
        if nr:
            owner_frames = self._owner_frames
            owner_frames[_FREE_SLOT] -= nr
            owner_frames[slot] += nr
        used = self.nr_pages - self._buddy.nr_free
        if used > self._frames_peak:
            self._frames_peak = used

    def _unwind_order0(self, pages: list[Page]) -> None:
        """Free freshly allocated order-0 pages again, last first (a failed bulk allocation)."""
        for page in reversed(pages):
            self._put(page)
            if self._observers:
                self._notify()

    def _alloc_slowpath(self, order: int) -> int | None:
        # Reclaim and retry while reclaim makes progress: frames freed one by
        # one need not form a block of the order wanted at the first round.
        progress = True
        while progress:
            progress = False
            for shrink in list(self._shrinkers):
                if shrink(1 << order) > 0:
                    progress = True
                    pfn = self._buddy.alloc(order)
                    if pfn is not None:
                        return pfn
        return None

    def _prep_new_folio(self, pfn: int, order: int, owner: Owner) -> Page:
        nr = 1 << order
        pages = self._pages
        head = pages[pfn]
        # The buddy allocator split a larger block: mark the halves it gave back.
        for k in range(order, head._order):
            pages[pfn + (1 << k)]._order = k
        if order:
            for p in pages[pfn : pfn + nr]:
                assert p._flags == F_FREE and p.refcount == 0 and p.mapcount == 0, p
                p._flags = F_TAIL
                p.refcount = 0
                p._order = 0
                p.head = head
                p.owner = owner
            head._flags = F_HEAD
        else:
            assert head._flags == F_FREE and head.refcount == 0 and head.mapcount == 0, head
            head._flags = 0
            head.owner = owner
        head.refcount = 1
        head._order = order
        self._owner_frames[_FREE_SLOT] -= nr
        self._owner_frames[_SLOT[id(owner.kind)]] += nr
        used = self.nr_pages - self._buddy.nr_free
        if used > self._frames_peak:
            self._frames_peak = used
        return head

    def _check_free(self, head: Page) -> None:
        """Raise before a folio whose last reference goes is in a state it must not be freed in."""
        if head._flags & _CHECK_AT_FREE:
            raise BadPageStateError(
                f"freeing pfn {head.pfn} with flags {head.flags!r} still set", pfn=head.pfn
            )
        if head._order == 0:
            if head.mapcount:
                raise BadPageStateError(
                    f"freeing pfn {head.pfn} while {head.mapcount} vmap(s) still map it",
                    pfn=head.pfn,
                )
            return
        for p in self._pages[head.pfn : head.pfn + (1 << head._order)]:
            if p.mapcount:
                raise BadPageStateError(
                    f"freeing pfn {p.pfn} while {p.mapcount} vmap(s) still map it", pfn=p.pfn
                )

    def _free_folio(self, head: Page) -> None:
        order = head._order
        if not order:
            head._flags = F_FREE
            head.refcount = 0
            head.owner = _OWNER_FREE
            self._owner_frames[_FREE_SLOT] += 1
            merged_pfn, merged_order, merged = self._buddy.free0(head.pfn)
            if merged is not None:
                pages = self._pages
                for pfn, _ in merged:
                    pages[pfn]._order = 0
                pages[merged_pfn]._order = merged_order
            return
        nr = 1 << order
        for p in self._pages[head.pfn : head.pfn + nr]:
            p._flags = F_FREE
            p.refcount = 0
            p._order = 0
            p.head = p
            p.owner = _OWNER_FREE
        self._owner_frames[_FREE_SLOT] += nr
        merged_pfn, merged_order, absorbed = self._buddy.free(head.pfn, order)
        pages = self._pages
        for pfn, _ in absorbed:
            pages[pfn]._order = 0
        pages[merged_pfn]._order = merged_order

    def _put(self, head: Page) -> bool:
        """Drop one reference on a head page; free the folio at zero.  True if freed."""
        if head.refcount > 1:
            head.refcount -= 1
            return False
        if head.refcount == 1:
            if head._order or head.mapcount or head._flags & _CHECK_AT_FREE:
                self._check_free(head)  # order 0 with nothing to refuse is checked inline
            head.refcount = 0
            self._owner_frames[_SLOT[id(head.owner.kind)]] -= 1 << head._order
            self._free_folio(head)
            return True
        head.refcount -= 1
        return False

    def _live_head(self, page: Page, what: str) -> Page:
        head = page.head
        if page._arena is not self or head._flags & F_FREE or head.refcount <= 0:
            self._own(page)
            raise BadPageStateError(
                f"{what}(pfn {page.pfn}): page is free (refcount {head.refcount})", pfn=page.pfn
            )
        return head

    def free_pages(self, page: Page, order: int | None = None) -> None:
        """Drop the allocation's reference on a folio by its head (``__free_pages``).

        The folio goes back to the buddy allocator when that was the last
        reference.  A tail page is refused with :class:`TailPageError` (its
        refcount is 0: the seed's ``VM_BUG_ON_PAGE``); a free page, a wrong
        ``order``, or a folio still locked or vmapped raise
        :class:`BadPageStateError`.  Nothing changes when it raises.
        """
        with self._lock:
            self._check_open()
            self._free_pages(page, order)

    def _free_pages(self, page: Page, order: int | None) -> None:
        self._own(page)
        if page._flags & F_TAIL:
            raise TailPageError(
                f"free_pages(pfn {page.pfn}): tail page of the order-{page.head._order} "
                f"folio at pfn {page.head.pfn} has refcount 0 "
                "(VM_BUG_ON_PAGE(page_ref_count(page) == 0))",
                pfn=page.pfn,
            )
        if page._flags & F_FREE or page.refcount <= 0:
            raise BadPageStateError(f"free_pages(pfn {page.pfn}): double free", pfn=page.pfn)
        if order is not None and order != page._order:
            raise BadPageStateError(
                f"free_pages(pfn {page.pfn}, order={order}): folio has order {page._order}",
                pfn=page.pfn,
            )
        if self._put(page) and self._observers:
            self._notify()

    def free_pages_bulk(self, pages: Iterable[Page]) -> None:
        """:meth:`free_pages` of each order-0 page, in order, under one lock.

        The kernel's ``free_pages_bulk`` (``release_pages`` for pages that
        are not in the page cache).  Every page gets ``free_pages``' checks
        (a tail page raises :class:`TailPageError`; a free page, a page
        listed once too often, a folio of order > 0, or one still locked or
        vmapped raise :class:`BadPageStateError`); as with a loop of
        ``free_pages``, the pages before the bad one are freed by then.
        """
        with self._lock:
            self._check_open()
            owner_frames = self._owner_frames
            free0 = self._buddy.free0
            frames = self._pages
            for page in pages:
                if (
                    page._arena is not self
                    or page._flags & (F_TAIL | F_FREE)
                    or page.refcount <= 0
                    or page._order
                ):
                    self._free_pages(page, 0)  # raises, as free_pages would
                    continue
                if page.refcount > 1:
                    page.refcount -= 1
                    continue
                # _put and _free_folio of an order-0 page, inline
                if page.mapcount or page._flags & _CHECK_AT_FREE:
                    self._check_free(page)  # raises
                page.refcount = 0
                page._flags = F_FREE
                owner_frames[_SLOT[id(page.owner.kind)]] -= 1
                owner_frames[_FREE_SLOT] += 1
                page.owner = _OWNER_FREE
                merged_pfn, merged_order, merged = free0(page.pfn)
                if merged is not None:
                    for pfn, _ in merged:
                        frames[pfn]._order = 0
                    frames[merged_pfn]._order = merged_order
                if self._observers:
                    self._notify()

    def alloc_pages_exact(self, nr_pages: int, owner: Owner = Owner.OTHER) -> list[Page]:
        """Allocate ``nr_pages`` physically contiguous order-0 pages (``alloc_pages_exact``).

        Takes a block of the next power of two, splits it into order-0 pages
        (``split_page``) with a reference each, and frees the excess frames,
        so a 5-page buffer costs 5 frames once allocated, though finding it
        needs a free block of 8.  Free each page, or use
        :meth:`free_pages_exact`.
        """
        if nr_pages <= 0:
            raise ValueError(f"alloc_pages_exact of {nr_pages} pages")
        with self._lock:
            head = self.alloc_pages((nr_pages - 1).bit_length(), owner)
            frames = self._pages[head.pfn : head.pfn + head.nr_pages]
            for p in frames:
                p._flags = 0
                p.refcount = 1
                p._order = 0
                p.head = p
            for p in frames[nr_pages:]:
                self._put(p)
            if len(frames) > nr_pages and self._observers:
                self._notify()
            return frames[:nr_pages]

    def free_pages_exact(self, pages: Iterable[Page]) -> None:
        """Free pages from :meth:`alloc_pages_exact` (each with :meth:`free_pages`)."""
        self.free_pages_bulk(pages)

    def get_page(self, page: Page) -> None:
        """Take a reference; on a tail page it is a reference on its folio's head."""
        with self._lock:
            head = page.head
            if page._arena is not self or head._flags & F_FREE or head.refcount <= 0:
                self._live_head(page, "get_page")  # raises
            head.refcount += 1

    def put_page(self, page: Page) -> None:
        """Drop a reference (a tail page's goes to its head); free the folio at zero."""
        with self._lock:
            head = page.head
            if page._arena is not self or head._flags & F_FREE or head.refcount <= 0:
                self._live_head(page, "put_page")  # raises
            if head.refcount > 1:  # the common case, inline
                head.refcount -= 1
            elif self._put(head) and self._observers:
                self._notify()

    def set_owner(self, page: Page, owner: Owner) -> None:
        """Record a new owner for a whole folio (e.g. when the page cache adopts it)."""
        with self._lock:
            head = self._live_head(page, "set_owner")
            nr = 1 << head._order
            self._owner_frames[_SLOT[id(head.owner.kind)]] -= nr
            self._owner_frames[_SLOT[id(owner.kind)]] += nr
            for p in self._pages[head.pfn : head.pfn + nr]:
                p.owner = owner

    # -- folio flags and the folio lock --------------------------------------

    def set_page_flags(self, page: Page, flags: PageFlags) -> None:
        """Set uptodate/dirty on a folio (on its head)."""
        bits = int(flags)
        if bits & ~_SETTABLE:
            raise ValueError(f"only PG_uptodate and PG_dirty may be set, not {flags!r}")
        self._change_flags(page, bits, 0, "set_page_flags")

    def clear_page_flags(self, page: Page, flags: PageFlags) -> None:
        bits = int(flags)
        if bits & ~_SETTABLE:
            raise ValueError(f"only PG_uptodate and PG_dirty may be cleared, not {flags!r}")
        self._change_flags(page, 0, bits, "clear_page_flags")

    def _change_flags(self, page: Page, set_bits: int, clear_bits: int, what: str) -> None:
        """Set then clear (plain int) flag bits on a live folio's head."""
        with self._lock:
            head = page.head
            if page._arena is not self or head._flags & F_FREE or head.refcount <= 0:
                self._live_head(page, what)  # raises
            head._flags = (head._flags | set_bits) & ~clear_bits

    def lock_page(self, page: Page) -> None:
        """Take the folio lock, waiting while another holder has it."""
        with self._lock:
            head = self._live_head(page, "lock_page")
            while head._flags & F_LOCKED:
                self._wait_page_lock()
            head._flags |= F_LOCKED

    def _wait_page_lock(self) -> None:
        self._page_lock_waiters += 1
        try:
            self._page_lock_wait.wait()
        finally:
            self._page_lock_waiters -= 1

    def trylock_page(self, page: Page) -> bool:
        with self._lock:
            head = self._live_head(page, "trylock_page")
            if head._flags & F_LOCKED:
                return False
            head._flags |= F_LOCKED
            return True

    def unlock_page(self, page: Page) -> None:
        with self._lock:
            head = page.head
            if page._arena is not self or head._flags & F_FREE or head.refcount <= 0:
                self._live_head(page, "unlock_page")  # raises
            if not head._flags & F_LOCKED:
                raise BadPageStateError(f"unlock_page(pfn {page.pfn}): not locked", pfn=page.pfn)
            head._flags &= ~F_LOCKED
            if self._page_lock_waiters:
                self._page_lock_wait.notify_all()

    def end_read(self, pages: Iterable[Page], success: bool) -> None:
        """Finish reading pages in: mark each uptodate if ``success``, then unlock it.

        The kernel's ``folio_end_read`` for each page, under one lock, waking
        waiters once.  A free page or one that is not locked raises
        :class:`BadPageStateError` as :meth:`unlock_page` does, before that
        page changes; as with a loop of single calls, the pages before it
        are done by then.
        """
        set_bits = F_UPTODATE if success else 0
        with self._lock:
            try:
                for page in pages:
                    head = page.head
                    if (
                        page._arena is not self
                        or head._flags & F_FREE
                        or head.refcount <= 0
                        or not head._flags & F_LOCKED
                    ):
                        self._live_head(page, "end_read")  # raises if free
                        raise BadPageStateError(
                            f"end_read(pfn {page.pfn}): not locked", pfn=page.pfn
                        )
                    head._flags = (head._flags | set_bits) & ~F_LOCKED
            finally:
                if self._page_lock_waiters:
                    self._page_lock_wait.notify_all()

    def wait_on_page_locked(self, page: Page) -> None:
        with self._lock:
            head = self._live_head(page, "wait_on_page_locked")
            while head._flags & F_LOCKED:
                self._wait_page_lock()

    # -- direct access: page_address / kmap_local ----------------------------

    def page_view(self, page: Page) -> memoryview:
        """A writable view of one frame (``page_address``/``kmap_local``)."""
        with self._lock:
            if self._closed:
                self._check_open()  # raises
            head = page.head
            if page._arena is not self or head._flags & F_FREE or head.refcount <= 0:
                self._live_head(page, "page_view")  # raises
            start = page.pfn * PAGE_SIZE
            return self._buf[start : start + PAGE_SIZE]

    def kmap_local(self, page: Page) -> memoryview:
        """``kmap_local_page``: the same view as :meth:`page_view` (no highmem here)."""
        return self.page_view(page)

    def contig_view(self, pages: Sequence[Page]) -> memoryview:
        """A writable view of physically contiguous pages (the first page's address, long).

        What nommu code may do with memory from :meth:`alloc_pages_exact` or
        a folio; raises ``ValueError`` if the pages are not consecutive frames.
        """
        with self._lock:
            if self._closed:
                self._check_open()  # raises
            if pages:
                # One pass that only compares: consecutive, ours, live.
                first: int = pages[0].pfn
                pfn = first
                for p in pages:
                    head = p.head
                    if (
                        p.pfn != pfn
                        or p._arena is not self
                        or head._flags & F_FREE
                        or head.refcount <= 0
                    ):
                        break
                    pfn += 1
                else:
                    start = first * PAGE_SIZE
                    return self._buf[start : start + len(pages) * PAGE_SIZE]
            # Something is wrong: say what, as the checks one by one would.
            if not is_contiguous(pages) or pages[0]._arena is not self:
                raise ValueError("contig_view of pages that are not consecutive frames")
            for p in pages:
                self._live_head(p, "contig_view")
            raise AssertionError("unreachable: contig_view's checks disagree")

    def folio_view(self, head: Page) -> memoryview:
        """A writable view of a whole folio, given its head (``folio_address``)."""
        with self._lock:
            self._check_open()
            if head._flags & F_TAIL:
                raise TailPageError(
                    f"folio_view(pfn {head.pfn}): tail page of the folio at pfn {head.head.pfn}",
                    pfn=head.pfn,
                )
            self._live_head(head, "folio_view")
            start = head.pfn * PAGE_SIZE
            return self._buf[start : start + (PAGE_SIZE << head._order)]

    # -- vmap ------------------------------------------------------------------

    def vmap(self, pages: Iterable[Page], flags: int = 0) -> Mapping:
        """Map ``pages`` into one virtually contiguous, writable view.

        What that means depends on the arena's mode (see the module
        docstring of :mod:`mmshim`).  Raises :class:`VmapError` (a
        :class:`MemoryError`) where the mode cannot do it, and
        :class:`TailPageError` for tail pages under ``tail_pages="reject"``.
        With ``VM_MAP_PUT_PAGES`` the mapping owns one reference per entry and
        drops it at :meth:`vunmap`.
        """
        return self._map(tuple(pages), flags, via_map_ram=False)

    def vm_map_ram(self, pages: Iterable[Page]) -> Mapping:
        """Like :meth:`vmap` without flags; give it back with :meth:`vm_unmap_ram`."""
        return self._map(tuple(pages), 0, via_map_ram=True)

    def _map(self, pages: tuple[Page, ...], flags: int, *, via_map_ram: bool) -> Mapping:
        with self._lock:
            self._check_open()
            if not pages:
                raise ValueError("vmap of no pages")
            self._vmap_calls += 1
            reject_tails = self.tail_pages == "reject"
            for p in pages:
                head = p.head
                if p._arena is not self or head._flags & F_FREE or head.refcount <= 0:
                    self._live_head(p, "vmap")  # raises
                if p._flags & F_TAIL and reject_tails:
                    self._vmap_failures += 1
                    raise TailPageError(
                        f"vmap: pfn {p.pfn} is a tail page of the order-{p.head._order} folio "
                        f"at pfn {p.head.pfn}; this arena maps order-0 pages and heads only",
                        pfn=p.pfn,
                    )
            contiguous = is_contiguous(pages)
            bounce: Page | None = None
            digests: list[bytes] | None = None
            if self.mode == "mmu":
                kind = MappingKind.REMAP
                if contiguous:
                    mm = _vmap.map_direct(self._fd, pages[0].pfn, len(pages))
                else:
                    mm = _vmap.map_scattered(self._fd, [p.pfn for p in pages])
            elif contiguous:
                kind = MappingKind.DIRECT
                mm = _vmap.map_direct(self._fd, pages[0].pfn, len(pages))
            elif self.mode == "nommu-contig":
                self._vmap_failures += 1
                raise VmapError(
                    f"vmap of {len(pages)} scattered pages (pfn {pages[0].pfn}, ...) "
                    "without an MMU: only physically contiguous pages can be mapped",
                    reason="not-contiguous",
                    order=0,
                    frames_free=self._buddy.nr_free,
                )
            else:
                kind = MappingKind.BOUNCE
                bounce, digests = self._bounce_in(pages)
                try:
                    mm = _vmap.map_direct(self._fd, bounce.pfn, len(pages))
                except BaseException:
                    self._put(bounce)
                    raise
            for p in pages:
                p.mapcount += 1
            m = Mapping(
                self,
                pages,
                flags,
                kind,
                mm,
                bounce=bounce,
                digests=digests,
                via_map_ram=via_map_ram,
            )
            self._mappings[id(m)] = m
            if self._observers:
                self._notify()
            return m

    def _bounce_in(self, pages: tuple[Page, ...]) -> tuple[Page, list[bytes]]:
        """Allocate a contiguous bounce buffer from the arena and copy the pages in."""
        nr = len(pages)
        order = (nr - 1).bit_length()
        for p in pages:  # the shrinker must not evict what is being mapped
            p.mapcount += 1
        try:
            bounce = self.alloc_pages(order, Owner.BOUNCE)
        except AllocError as e:
            self._vmap_failures += 1
            raise VmapError(
                f"vmap of {nr} scattered pages: no contiguous order-{order} bounce buffer "
                f"({e.frames_free} frames free, largest free order "
                f"{self._buddy.largest_free_order()})",
                reason="no-bounce-buffer",
                order=order,
                frames_free=e.frames_free,
            ) from e
        finally:
            for p in pages:
                p.mapcount -= 1
        buf = self._buf
        digests = []
        for i, p in enumerate(pages):
            src = p.pfn * PAGE_SIZE
            dst = (bounce.pfn + i) * PAGE_SIZE
            frame = buf[src : src + PAGE_SIZE]
            buf[dst : dst + PAGE_SIZE] = frame
            digests.append(_digest(frame))
        self._bounce_vmaps += 1
        self._bounce_bytes += nr * PAGE_SIZE
        return bounce, digests

    def _bounce_out(self, m: Mapping, bounce: Page, digests: list[bytes]) -> None:
        """Copy a bounce buffer back, counting direct writes the copy overwrites."""
        buf = self._buf
        lost = 0
        # Look for lost writes before copying anything back: a page listed
        # twice would otherwise look changed by our own copy.
        for i, p in enumerate(m.pages):
            src = (bounce.pfn + i) * PAGE_SIZE
            dst = p.pfn * PAGE_SIZE
            frame = buf[dst : dst + PAGE_SIZE]
            if _digest(frame) != digests[i] and frame != buf[src : src + PAGE_SIZE]:
                lost += 1
        for i, p in enumerate(m.pages):
            src = (bounce.pfn + i) * PAGE_SIZE
            dst = p.pfn * PAGE_SIZE
            buf[dst : dst + PAGE_SIZE] = buf[src : src + PAGE_SIZE]
        m.lost_writes = lost
        self._lost_writes += lost
        self._bounce_bytes += len(m.pages) * PAGE_SIZE

    def vunmap(self, m: Mapping) -> None:
        """Tear a :meth:`vmap` mapping down (copying a bounce buffer back first)."""
        self._unmap(m, via_map_ram=False)

    def vm_unmap_ram(self, m: Mapping) -> None:
        """Tear a :meth:`vm_map_ram` mapping down."""
        self._unmap(m, via_map_ram=True)

    def _check_put_pages(self, m: Mapping) -> None:
        """Raise before anything changes if dropping one reference per entry would be a bug."""
        puts = collections.Counter(p.head.pfn for p in m.pages)
        maps = collections.Counter(p.pfn for p in m.pages)
        for pfn, n in puts.items():
            head = self._pages[pfn]
            if head.refcount < n:
                raise BadPageStateError(
                    f"vunmap(VM_MAP_PUT_PAGES): folio at pfn {pfn} listed {n} times "
                    f"holds only {head.refcount} references",
                    pfn=pfn,
                )
            if head.refcount == n:
                if head._flags & _CHECK_AT_FREE:
                    raise BadPageStateError(
                        f"vunmap(VM_MAP_PUT_PAGES) would free pfn {pfn} with flags {head.flags!r}",
                        pfn=pfn,
                    )
                for p in self._pages[pfn : pfn + (1 << head._order)]:
                    if p.mapcount - maps[p.pfn]:
                        raise BadPageStateError(
                            f"vunmap(VM_MAP_PUT_PAGES) would free pfn {p.pfn} "
                            "while another vmap maps it",
                            pfn=p.pfn,
                        )

    def _unmap(self, m: Mapping, *, via_map_ram: bool) -> None:
        with self._lock:
            if self._mappings.get(id(m)) is not m:
                raise MmshimError(f"unmapping {m!r}: not a live mapping of {self!r}")
            if m.via_map_ram != via_map_ram:
                right = "vm_unmap_ram" if m.via_map_ram else "vunmap"
                raise MmshimError(f"{m.describe()} must be unmapped with {right}()")
            if m.flags & VM_MAP_PUT_PAGES:
                self._check_put_pages(m)
            if not _vmap.unmap(m._mm, m.view):
                self._stale_view_unmaps += 1
            if m.bounce is not None:
                assert m._digests is not None
                self._bounce_out(m, m.bounce, m._digests)
                self._put(m.bounce)
            for p in m.pages:
                p.mapcount -= 1
            m.mapped = False
            del self._mappings[id(m)]
            if m.flags & VM_MAP_PUT_PAGES:
                # Folio-correct: a tail page's reference is its head's.  (The
                # kernel of the seed called __free_page() on each entry, which
                # is free_pages() here and raises TailPageError on a tail page.)
                for p in m.pages:
                    self._put(p.head)
            if self._observers:
                self._notify()

    def check_invariants(self) -> None:
        """Walk every frame and check the metadata against the buddy allocator.

        Free blocks tile exactly the frames marked free; folios are aligned,
        tails point at their head with refcount 0, heads hold a reference;
        owner counts and vmap counts agree.  Raises :class:`MmshimError`
        naming the first frame that is wrong.  Meant for tests and debugging.
        """

        def bad(pfn: int, why: str) -> MmshimError:
            return MmshimError(f"arena invariant broken at pfn {pfn}: {why}")

        with self._lock:
            free_blocks = set(self._buddy.free_blocks())
            owners = [0] * len(_OWNER_KINDS)
            mapped = collections.Counter(p.pfn for m in self._mappings.values() for p in m.pages)
            pfn = 0
            while pfn < self.nr_pages:
                head = self._pages[pfn]
                order = head._order
                nr = 1 << order
                if pfn % nr or pfn + nr > self.nr_pages:
                    raise bad(pfn, f"order-{order} block is not an aligned block of the arena")
                frames = self._pages[pfn : pfn + nr]
                if head._flags & F_FREE:
                    if (pfn, order) not in free_blocks:
                        raise bad(pfn, f"marked free (order {order}) but not on a free list")
                    free_blocks.discard((pfn, order))
                    for p in frames:
                        if p._flags != F_FREE or p.refcount or p.mapcount or p.head is not p:
                            raise bad(p.pfn, f"inside a free block but {p!r}")
                        if p is not head and p._order:
                            raise bad(p.pfn, "non-first frame of a free block carries an order")
                else:
                    if head._flags & F_TAIL or head.refcount <= 0 or head.head is not head:
                        raise bad(pfn, f"folio head in a bad state: {head!r}")
                    if bool(head._flags & F_HEAD) != bool(order):
                        raise bad(pfn, f"PG_head {'missing' if order else 'set'} at order {order}")
                    for p in frames[1:]:
                        if p._flags != F_TAIL or p.refcount or p.head is not head or p._order:
                            raise bad(p.pfn, f"tail of the folio at pfn {pfn} but {p!r}")
                    for p in frames:
                        if p.owner != head.owner:
                            raise bad(p.pfn, f"owner {p.owner} differs from its head's")
                for p in frames:
                    if p.mapcount != mapped[p.pfn]:
                        raise bad(p.pfn, f"mapcount {p.mapcount}, live vmaps {mapped[p.pfn]}")
                owners[_SLOT[id(head.owner.kind)]] += nr
                pfn += nr
            if free_blocks:
                raise bad(min(free_blocks)[0], "on a free list but not marked free")
            if owners != self._owner_frames:
                got = dict(zip(_KIND_VALUES, owners, strict=True))
                kept = dict(zip(_KIND_VALUES, self._owner_frames, strict=True))
                raise bad(0, f"owner counts {got} differ from the kept {kept}")

    # -- the end ---------------------------------------------------------------

    def close(self) -> None:
        """Tear the arena down; raise :class:`MappingLeakError` naming what was still held.

        Shrinkers are first asked to give back everything (drop caches), so
        unreferenced page cache pages are not leaks; any mapping still live
        and any folio still allocated is.  The arena is closed either way.
        """
        with self._lock:
            if self._closed:
                return
            leaks = [m.describe() for m in self._mappings.values()]
            for shrink in list(self._shrinkers):
                shrink(self.nr_pages)
            pfn = 0
            while pfn < self.nr_pages:
                head = self._pages[pfn]
                if head._flags & F_FREE:
                    pfn += 1 << head._order
                    continue
                leaks.append(
                    f"order-{head._order} folio at pfn {pfn} ({head.owner}, "
                    f"refcount {head.refcount}, flags {head.flags!r})"
                )
                pfn += 1 << head._order
            for m in list(self._mappings.values()):
                _vmap.unmap(m._mm, m.view)
                m.mapped = False
            self._mappings.clear()
            self._closed = True
            self._buf.release()
            # If page views still exist, the mapping goes away with the last one.
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._memfd.close()
            if leaks:
                raise MappingLeakError(f"Arena.close() of {self!r}", leaks)

    @property
    def closed(self) -> bool:
        return self._closed
