"""Arena occupancy over a replay, sampled for ``--plot``: at most
:data:`MAX_SAMPLES` samples, the heaviest of each bucket of events kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from mmshim import Arena

MAX_SAMPLES: Final = 2000
OWNER_KINDS: Final[tuple[str, ...]] = (
    "page_cache",
    "decompress",
    "bounce",
    "percpu",
    "other",
)


@dataclass(frozen=True, slots=True)
class Sample:
    """Arena occupancy at one event (alloc, free, vmap, vunmap), in frames."""

    event: int
    by_owner: tuple[int, ...]  # in OWNER_KINDS order
    free: int
    largest_free: int  # frames in the largest free block
    bytes_read: int = 0  # of the workload, when the event happened


def _weight(s: Sample) -> tuple[int, int]:
    # short-lived buffers (everything but the page cache) first, then use
    return sum(s.by_owner[1:]), sum(s.by_owner)


@dataclass(slots=True)
class Recorder:
    """An arena observer keeping at most ``limit`` samples.

    Events are grouped in buckets of ``stride``; each bucket keeps its
    heaviest sample (most frames in short-lived buffers, then most frames in
    use), so a bounce buffer that lives for two events still shows.  When
    the list is full, neighbouring buckets merge and the stride doubles.
    """

    limit: int = MAX_SAMPLES
    stride: int = 1
    events: int = 0
    samples: list[Sample] = field(default_factory=list)
    pending: Sample | None = None
    progress: Callable[[], int] = lambda: 0  # bytes of the workload read so far

    def __call__(self, arena: Arena) -> None:
        self.events += 1
        sample = self.snapshot(arena)
        if self.pending is None or _weight(sample) >= _weight(self.pending):
            self.pending = sample
        if self.events % self.stride == 0:
            self.flush()

    def snapshot(self, arena: Arena) -> Sample:
        st = arena.stats
        owners = tuple(st.frames_by_owner.get(k, 0) for k in OWNER_KINDS)
        largest = 1 << st.largest_free_order if st.largest_free_order >= 0 else 0
        return Sample(self.events, owners, st.frames_free, largest, self.progress())

    def record(self, arena: Arena) -> None:
        """Take a sample now (at the start and the end of a replay)."""
        self.flush()
        self.samples.append(self.snapshot(arena))

    def flush(self) -> None:
        if self.pending is None:
            return
        self.samples.append(self.pending)
        self.pending = None
        if len(self.samples) >= self.limit:
            pairs = zip(self.samples[0::2], self.samples[1::2], strict=False)
            merged = [max(a, b, key=_weight) for a, b in pairs]
            if len(self.samples) % 2:
                merged.append(self.samples[-1])
            self.samples = merged
            self.stride *= 2
