"""mmshim: a userspace model of the kernel's page allocator, vmap and page cache.

An :class:`Arena` is the physical memory of a small simulated machine: a
fixed number of 4 KiB frames in one memfd, handed out by a buddy allocator as
folios (:meth:`Arena.alloc_pages`), with per-frame metadata (:class:`Page`),
reference counts with folio semantics, and a :class:`PageCache` that gives
memory back under pressure.  :meth:`Arena.vmap` makes a list of pages
virtually contiguous the way the arena's mode allows:

========================  ===================  ==================================
mode                      contiguous frames    scattered frames
========================  ===================  ==================================
``mmu``                   one mapping          frames mapped at their place in a
                                               fresh range: real aliasing, no copy
``nommu-contig``          the frames' memory   fails (:class:`VmapError`, ENOMEM)
``nommu-bounce``          the frames' memory   a contiguous bounce buffer from the
                                               arena; copied in at vmap, back at
                                               vunmap; direct writes meanwhile
                                               are lost (counted)
========================  ===================  ==================================

Everything is counted in :attr:`Arena.stats`.
"""

from __future__ import annotations

# First: importing it decides whether the compiled hot modules are used
# (before any of them is imported; see mmshim._compiled).
from mmshim import _compiled  # noqa: F401  isort: skip
from mmshim._arena import MM_MODES, TAIL_PAGE_POLICIES, Arena, MmMode, TailPagePolicy, is_contiguous
from mmshim._errors import (
    AllocError,
    BadPageStateError,
    MappingLeakError,
    MmshimError,
    TailPageError,
    VmapError,
)
from mmshim._page import (
    MAX_ORDER,
    PAGE_SHIFT,
    PAGE_SIZE,
    Owner,
    OwnerKind,
    Page,
    PageFlags,
    Pfn,
    PG_dirty,
    PG_free,
    PG_head,
    PG_locked,
    PG_lru,
    PG_tail,
    PG_uptodate,
)
from mmshim._pagecache import CacheCounters, PageCache
from mmshim._stats import ArenaStats
from mmshim._vmap import VM_MAP, VM_MAP_PUT_PAGES, Mapping, MappingKind

__all__ = [
    "MAX_ORDER",
    "MM_MODES",
    "PAGE_SHIFT",
    "PAGE_SIZE",
    "TAIL_PAGE_POLICIES",
    "VM_MAP",
    "VM_MAP_PUT_PAGES",
    "AllocError",
    "Arena",
    "ArenaStats",
    "BadPageStateError",
    "CacheCounters",
    "Mapping",
    "MappingKind",
    "MappingLeakError",
    "MmMode",
    "MmshimError",
    "Owner",
    "OwnerKind",
    "PG_dirty",
    "PG_free",
    "PG_head",
    "PG_locked",
    "PG_lru",
    "PG_tail",
    "PG_uptodate",
    "Page",
    "PageCache",
    "PageFlags",
    "Pfn",
    "TailPageError",
    "TailPagePolicy",
    "VmapError",
    "is_contiguous",
]
