"""Page frames, their flags, and who owns them: the shim's ``struct page``.

One :class:`Page` exists per frame of an arena for the arena's whole life; the
arena alone changes its refcount, order and owner.  A folio of order *k* is
2**k consecutive frames: the first is the head (refcount, order, owner), the
others are tail pages with refcount 0 that point at it.  A free block of the
buddy allocator is marked ``PG_free`` on every frame, and its first frame
carries the block's order (the kernel's ``PageBuddy``/``buddy_order``).
"""

from __future__ import annotations

import enum
from collections.abc import Hashable
from typing import TYPE_CHECKING, ClassVar, Final, NewType

if TYPE_CHECKING:
    from mmshim._arena import Arena

Pfn = NewType("Pfn", int)

PAGE_SHIFT: Final = 12
PAGE_SIZE: Final = 1 << PAGE_SHIFT
# The kernel's MAX_PAGE_ORDER (default 10): the largest buddy block is 4 MiB.
MAX_ORDER: Final = 10


class PageFlags(enum.IntFlag):
    """The kernel's page flags that matter here (``PG_*``)."""

    PG_free = enum.auto()  # in the buddy allocator (the kernel's PageBuddy)
    PG_head = enum.auto()  # first frame of a folio of order > 0
    PG_tail = enum.auto()  # other frames of such a folio; refcount 0, .head points back
    PG_locked = enum.auto()  # folio lock: being read in, not to be evicted
    PG_uptodate = enum.auto()  # contents valid
    PG_dirty = enum.auto()  # contents differ from the backing store
    PG_lru = enum.auto()  # on a page cache LRU list


PG_free: Final = PageFlags.PG_free
PG_head: Final = PageFlags.PG_head
PG_tail: Final = PageFlags.PG_tail
PG_locked: Final = PageFlags.PG_locked
PG_uptodate: Final = PageFlags.PG_uptodate
PG_dirty: Final = PageFlags.PG_dirty
PG_lru: Final = PageFlags.PG_lru

# The same bits as plain ints.  ``Page`` keeps its flags as an int and the
# shim tests them with these: an ``IntFlag`` operation costs a Python-level
# call and a new enum object, and the page cache's read path makes several
# per page.  ``Page.flags`` still gives a ``PageFlags``.
F_FREE: Final[int] = PG_free.value
F_HEAD: Final[int] = PG_head.value
F_TAIL: Final[int] = PG_tail.value
F_LOCKED: Final[int] = PG_locked.value
F_UPTODATE: Final[int] = PG_uptodate.value
F_DIRTY: Final[int] = PG_dirty.value
F_LRU: Final[int] = PG_lru.value


class OwnerKind(enum.Enum):
    """Who holds a frame, coarsely: what ``ArenaStats.frames_by_owner`` groups by."""

    FREE = "free"
    PAGE_CACHE = "page_cache"
    BOUNCE = "bounce"  # nommu-bounce vmap buffers
    DECOMPRESS = "decompress"  # decompression output / vmap'd buffers
    PERCPU = "percpu"  # buffers reserved at mount (the percpu-buffer strategy)
    OTHER = "other"


class Owner:
    """Who holds a folio: a kind, and for the page cache the (mapping, index).

    Use the constants (``Owner.DECOMPRESS``, ``Owner.PERCPU`` ...) or
    ``Owner.page_cache(mapping_id, index)``.  Immutable (the fields are
    ``Final``); equal and hashed by value.  Written out rather than a frozen
    dataclass: one is built per page-cache page, and a frozen dataclass's
    ``__init__`` pays an ``object.__setattr__`` per field.
    """

    __slots__ = ("index", "kind", "mapping_id")

    FREE: ClassVar[Owner]
    PAGE_CACHE: ClassVar[Owner]
    BOUNCE: ClassVar[Owner]
    DECOMPRESS: ClassVar[Owner]
    VMAP: ClassVar[Owner]  # same as DECOMPRESS
    PERCPU: ClassVar[Owner]
    OTHER: ClassVar[Owner]

    def __init__(
        self, kind: OwnerKind, mapping_id: Hashable | None = None, index: int | None = None
    ) -> None:
        self.kind: Final = kind
        self.mapping_id: Final = mapping_id
        self.index: Final = index

    @staticmethod
    def page_cache(mapping_id: Hashable, index: int) -> Owner:
        """The page cache, at ``index`` of the file ``mapping_id``."""
        return Owner(OwnerKind.PAGE_CACHE, mapping_id, index)

    def _key(self) -> tuple[OwnerKind, Hashable | None, int | None]:
        return (self.kind, self.mapping_id, self.index)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Owner) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Owner(kind={self.kind!r}, mapping_id={self.mapping_id!r}, index={self.index!r})"

    def __str__(self) -> str:
        if self.kind is OwnerKind.PAGE_CACHE and self.mapping_id is not None:
            return f"page_cache({self.mapping_id!r}, {self.index})"
        return self.kind.value


Owner.FREE = Owner(OwnerKind.FREE)
Owner.PAGE_CACHE = Owner(OwnerKind.PAGE_CACHE)
Owner.BOUNCE = Owner(OwnerKind.BOUNCE)
Owner.DECOMPRESS = Owner(OwnerKind.DECOMPRESS)
Owner.VMAP = Owner.DECOMPRESS
Owner.PERCPU = Owner(OwnerKind.PERCPU)
Owner.OTHER = Owner(OwnerKind.OTHER)


class Page:
    """Metadata of one page frame (``struct page``); read it, let the arena change it.

    ``refcount`` is meaningful on heads (and order-0 pages); tail pages keep 0
    and send references to ``head``.  ``mapcount`` counts live vmaps covering
    this frame.  ``order`` is the folio's order (the free block's order on the
    first frame of a free block).
    """

    __slots__ = ("_arena", "_flags", "_order", "head", "mapcount", "owner", "pfn", "refcount")

    def __init__(self, arena: Arena, pfn: Pfn) -> None:
        self._arena = arena
        self.pfn: Final = pfn
        self.refcount = 0
        self.mapcount = 0
        self._flags = F_FREE  # PageFlags bits as a plain int (see F_FREE)
        self._order = 0
        self.head: Page = self
        self.owner: Owner = Owner.FREE

    @property
    def flags(self) -> PageFlags:
        """This frame's flags (the folio's lock, uptodate and dirty bits are on its head)."""
        return PageFlags(self._flags)

    @flags.setter
    def flags(self, value: PageFlags) -> None:
        self._flags = int(value)

    @property
    def arena(self) -> Arena:
        """The arena this frame belongs to."""
        return self._arena

    @property
    def order(self) -> int:
        """Order of the folio this page is part of (of the free block, if free)."""
        return self.head._order

    @property
    def nr_pages(self) -> int:
        """Frames in this page's folio (1 for an order-0 page)."""
        return 1 << self.head._order

    @property
    def is_free(self) -> bool:
        return self._flags & F_FREE != 0

    @property
    def is_head(self) -> bool:
        return self._flags & F_HEAD != 0

    @property
    def is_tail(self) -> bool:
        return self._flags & F_TAIL != 0

    @property
    def is_locked(self) -> bool:
        return self.head._flags & F_LOCKED != 0

    @property
    def is_uptodate(self) -> bool:
        return self.head._flags & F_UPTODATE != 0

    @property
    def is_dirty(self) -> bool:
        return self.head._flags & F_DIRTY != 0

    def lock(self) -> None:
        """Take the folio lock, waiting for another thread to drop it (``lock_page``)."""
        self._arena.lock_page(self)

    def trylock(self) -> bool:
        """Take the folio lock if it is free; True if taken (``trylock_page``)."""
        return self._arena.trylock_page(self)

    def unlock(self) -> None:
        """Drop the folio lock and wake waiters (``unlock_page``)."""
        self._arena.unlock_page(self)

    def wait_unlocked(self) -> None:
        """Wait until nobody holds the folio lock (``wait_on_page_locked``)."""
        self._arena.wait_on_page_locked(self)

    def set_uptodate(self) -> None:
        """Mark the folio's contents valid (``SetPageUptodate``)."""
        self._arena._change_flags(self, F_UPTODATE, 0, "set_page_flags")

    def clear_uptodate(self) -> None:
        self._arena._change_flags(self, 0, F_UPTODATE, "clear_page_flags")

    def set_dirty(self) -> None:
        """Mark the folio dirty: the page cache will not evict it (``set_page_dirty``)."""
        self._arena._change_flags(self, F_DIRTY, 0, "set_page_flags")

    def clear_dirty(self) -> None:
        self._arena._change_flags(self, 0, F_DIRTY, "clear_page_flags")

    def __repr__(self) -> str:
        kind = "tail" if self.is_tail else "free" if self.is_free else "page"
        extra = f" head={self.head.pfn}" if self.is_tail else f" ref={self.refcount}"
        return f"<Page pfn={self.pfn} {kind} order={self.order}{extra} owner={self.owner}>"
