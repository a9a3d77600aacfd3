"""Counters of everything an arena does, as an immutable snapshot."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ArenaStats:
    """A snapshot of an arena's occupancy and counters (``arena.stats``).

    Frame counts are in 4 KiB frames; ``bounce_bytes`` counts bytes copied
    into bounce buffers at vmap and back out at vunmap.  ``lost_writes``
    counts frames written directly while a bounce copy of them was mapped,
    whose write the copy-back then overwrote.  ``largest_free_order`` is -1
    when nothing is free; ``largest_alloc_order`` is the largest order ever
    requested (-1 if none), failed requests included.  ``frames_by_owner``
    maps every :class:`~mmshim.OwnerKind` value (``"free"``, ``"page_cache"``,
    ``"bounce"``, ``"decompress"``, ``"percpu"``, ``"other"``) to frames.
    """

    frames_total: int
    frames_free: int
    frames_used: int
    frames_peak: int
    alloc_calls: int
    alloc_failures: int
    largest_free_order: int
    largest_alloc_order: int
    vmap_calls: int
    vmap_failures: int
    vmaps_live: int
    bounce_vmaps: int
    bounce_bytes: int
    lost_writes: int
    evictions: int
    stale_view_unmaps: int
    free_blocks_by_order: tuple[int, ...] = ()
    frames_by_owner: dict[str, int] = field(default_factory=dict)
