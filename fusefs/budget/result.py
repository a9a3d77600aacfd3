"""What one replay measured (:class:`BudgetResult`) and a whole report
(:class:`BudgetReport`): plain data, JSON-able, nothing printed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from fusefs.budget.explain import Explanation
from fusefs.budget.samples import Sample
from fusefs.budget.workload import Workload
from fusefs.vfs import PAGE_SIZE, MemoryConfig, MmMode, Strategy

XipRead = Literal["pagecache", "direct"]


@dataclass(frozen=True, slots=True)
class Combination:
    """One simulated machine: arena mode and decompression strategy (None
    for a format that decodes one way only)."""

    mm: MmMode
    decompress: Strategy | None
    xip_read: XipRead = "pagecache"

    def memory(self, arena_bytes: int) -> MemoryConfig:
        return MemoryConfig(
            mm=self.mm,
            decompress=self.decompress or "vmap",
            arena_bytes=arena_bytes,
            xip_read=self.xip_read,
        )

    @property
    def label(self) -> str:
        """``mmu+vmap``; ``mmu`` alone without a strategy."""
        return f"{self.mm}" + (f"+{self.decompress}" if self.decompress else "")


@dataclass(slots=True)
class BudgetResult:
    """The outcome of one replay; ``failure`` is None when the workload succeeded."""

    mm: MmMode
    decompress: Strategy | None
    arena_bytes: int
    failure: str | None = None  # the error as the read path said it
    explanation: Explanation | None = None  # ... and what it means for the board
    files_done: int = 0
    bytes_read: int = 0
    peak_frames: int = 0
    bytes_decompressed: int = 0
    bounce_bytes: int = 0
    bounce_vmaps: int = 0
    copy_bytes: int = 0
    vmap_calls: int = 0
    vmap_failures: int = 0
    lost_writes: int = 0
    evictions: int = 0
    alloc_failures: int = 0
    largest_alloc_order: int = -1
    exec_frames: int | None = None  # exec workload: frames the mapped programs held
    exec_text_frames: int | None = None  # ... of which read-only segments (XIP text: 0)
    min_arena_bytes: int | None = None
    fits_from_bytes: int | None = None
    fails_above_min: list[int] = field(default_factory=list)
    probes: int = 0
    # find-min: the failure one page below the minimum -- the file and the
    # allocation that set the minimum arena
    critical: Explanation | None = None
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def label(self) -> str:
        return Combination(self.mm, self.decompress).label

    def to_json(self, *, find_min: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mm": self.mm,
            "decompress": self.decompress,
            "ok": self.ok,
            "failure": self.failure,
            "explanation": None if self.explanation is None else self.explanation.to_json(),
            "files_done": self.files_done,
            "bytes_read": self.bytes_read,
            "peak_frames": self.peak_frames,
            "peak_bytes": self.peak_frames * PAGE_SIZE,
            "bytes_decompressed": self.bytes_decompressed,
            "bounce_bytes": self.bounce_bytes,
            "bounce_vmaps": self.bounce_vmaps,
            "copy_bytes": self.copy_bytes,
            "vmap_calls": self.vmap_calls,
            "vmap_failures": self.vmap_failures,
            "lost_writes": self.lost_writes,
            "evictions": self.evictions,
            "alloc_failures": self.alloc_failures,
            "largest_alloc_order": self.largest_alloc_order,
            "exec_frames": self.exec_frames,
            "exec_text_frames": self.exec_text_frames,
        }
        if find_min:
            out["min_arena_bytes"] = self.min_arena_bytes
            out["fits_from_bytes"] = self.fits_from_bytes
            out["fails_above_min"] = self.fails_above_min
            out["find_min_probes"] = self.probes
            out["critical"] = None if self.critical is None else self.critical.to_json()
        return out


@dataclass(slots=True)
class BudgetReport:
    """Every combination's result for one image and workload."""

    image: str
    format: str
    arena_bytes: int
    workload: Workload
    results: list[BudgetResult]
    find_min: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "format": self.format,
            "arena_bytes": self.arena_bytes,
            "page_size": PAGE_SIZE,
            "workload": self.workload.label,
            "workload_files": len(self.workload.files),
            "workload_bytes": self.workload.total_bytes,
            "results": [r.to_json(find_min=self.find_min) for r in self.results],
        }
