"""Why a replay failed, in a board maker's words, from the failure itself.

The read path's ENOMEM (:class:`~fusefs.errors.OutOfMemoryError`) carries
what was asked and what the arena had (:class:`~fusefs.errors.Allocation`)
and the extents being decoded (:class:`~fusefs.errors.Extent`); the loader
keeps the same for a program it could not map.  :class:`Explanation` puts
that beside the file and turns it into one sentence and the build or mount
options ("knobs") that bound the allocation -- nothing is parsed back out
of message text.

Which knob bounds what:

* an allocation at least as large as the decoded extent (its page-cache
  pages, a folio or bounce buffer for its output): ``--max-extent-bytes``
  bounds the decoded size of one extent;
* one as large as the compressed pcluster (its input pages or buffer):
  ``-C`` bounds the pcluster;
* a vmap of scattered frames without an MMU: a strategy that needs no vmap
  (``contig-folio``, ``percpu-buffer``);
* a contiguous block the arena had the frames for but not in one piece
  (fragmented): a strategy that needs no such block (``vmap`` with an MMU,
  ``percpu-buffer``, whose buffers are taken at mount);
* a program's segment copied into RAM: XIP for that program (cramfs ``-X``);
* a mount-time reservation (percpu buffers, sized from the largest
  pcluster): ``-C`` or another strategy; the ``vmap`` strategy without an
  MMU, which cannot mount at all: a strategy with no vmap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from fusefs.budget.units import kib
from fusefs.errors import Allocation, Extent, OutOfMemoryError
from fusefs.vfs import PAGE_SIZE, Capabilities, MmMode, Strategy

Stage = Literal["mount", "read", "exec"]


@dataclass(frozen=True, slots=True)
class Knob:
    """An option that bounds the failed allocation, and how."""

    option: str  # "--max-extent-bytes", "-C", "--decompress", "-X"
    why: str

    def to_json(self) -> dict[str, str]:
        return {"option": self.option, "why": self.why}


@dataclass(frozen=True, slots=True)
class Explanation:
    """What did not fit, where, and which options bound it."""

    stage: Stage
    file: str | None  # the workload's file; None for a mount-time failure
    offset: int | None  # read: bytes of the file read before the failing read
    extent: Extent | None  # the extent being decoded (the largest, if several)
    allocation: Allocation | None
    segment: tuple[int, int, str] | None  # exec: (file offset, bytes, protection)
    knobs: tuple[Knob, ...]

    @property
    def needed(self) -> str:
        """``one block of order 8 = 1024K contiguous`` / ``1020 frames (4080K)``."""
        a = self.allocation
        if a is None:
            return "memory"
        if a.shortage == "not-contiguous":
            return (
                f"{a.frames} frames ({kib(a.frames * PAGE_SIZE)}) physically contiguous"
                " (without an MMU, vmap cannot map scattered frames)"
            )
        if a.contiguous:
            return (
                f"one block of order {a.order} = {kib(a.frames * PAGE_SIZE)} contiguous"
            )
        return f"{a.frames} frame{'s' if a.frames != 1 else ''} ({kib(a.frames * PAGE_SIZE)})"

    @property
    def had(self) -> str:
        a = self.allocation
        if a is None:
            return ""
        largest = (
            f"order {a.largest_free_order} = {kib(PAGE_SIZE << a.largest_free_order)}"
            if a.largest_free_order >= 0
            else "none"
        )
        return (
            f"the arena had {a.frames_free} of {a.arena_frames} frames free, "
            f"largest free block {largest}"
        )

    def text(self) -> str:
        """One line: file, extent, what was needed against what the arena had, knobs."""
        where = {"mount": "at mount", "read": "reading", "exec": "loading"}[self.stage]
        parts = [f"{self.file}: {where}" if self.file else where]
        if self.offset is not None:
            parts[0] += f" from byte {self.offset}"
        if self.segment is not None:
            off, length, prot = self.segment
            parts.append(f"its {prot} segment at {off} ({kib(length)})")
        if self.extent is not None:
            e = self.extent
            parts.append(
                f"extent [{e.la}, {e.la + e.llen}) decodes {kib(e.llen)} at once "
                f"from {kib(e.plen)} ({e.algorithm})"
            )
        if self.allocation is not None:
            parts.append(f"needed {self.needed} for {self.allocation.what}")
            parts.append(self.had)
        line = "; ".join(parts)
        if self.knobs:
            line += ". Bounded by: " + "; ".join(f"{k.option} ({k.why})" for k in self.knobs)
        return line

    def to_json(self) -> dict[str, Any]:
        a = self.allocation
        e = self.extent
        return {
            "stage": self.stage,
            "file": self.file,
            "offset": self.offset,
            "extent": None
            if e is None
            else {"la": e.la, "llen": e.llen, "plen": e.plen, "algorithm": e.algorithm},
            "needed": None
            if a is None
            else {
                "what": a.what,
                "frames": a.frames,
                "bytes": a.frames * PAGE_SIZE,
                "order": a.order,
                "blocks": a.blocks,
                "contiguous": a.contiguous,
            },
            "arena": None
            if a is None
            else {
                "mm": a.mm,
                "frames": a.arena_frames,
                "free_frames": a.frames_free,
                "largest_free_order": a.largest_free_order,
                "largest_free_bytes": PAGE_SIZE << a.largest_free_order
                if a.largest_free_order >= 0
                else 0,
            },
            "shortage": None if a is None else a.shortage,
            "segment": None
            if self.segment is None
            else dict(zip(("offset", "bytes", "prot"), self.segment, strict=True)),
            "knobs": [k.to_json() for k in self.knobs],
            "text": self.text(),
        }


def _extent(err: BaseException) -> Extent | None:
    """The largest extent the failed decode was for (most pages at once)."""
    extents = err.extents if isinstance(err, OutOfMemoryError) else ()
    return max(extents, key=lambda e: (e.llen, e.plen, -e.la), default=None)


def _allocation(err: BaseException) -> Allocation | None:
    return err.allocation if isinstance(err, OutOfMemoryError) else None


def knobs(
    caps: Capabilities,
    mm: MmMode,
    strategy: Strategy | None,
    stage: Stage,
    extent: Extent | None,
    alloc: Allocation | None,
) -> tuple[Knob, ...]:
    """The options that bound ``alloc`` (see the module's list)."""
    out: list[Knob] = []
    others = [s for s in caps.strategies if s != strategy]
    if stage == "exec":
        if mm == "mmu":
            why = "its read-only segments map from flash; a writable one still copies on write"
        else:
            why = "mapped in place from flash, no contiguous copy in RAM"
        out.append(Knob("-X", f"store this program XIP (nommufs mkimage cramfs -X): {why}"))
        return tuple(out)
    if stage == "mount" and strategy == "vmap" and mm == "nommu-contig":
        # the model mounts no compressed EROFS so (zutil.VmapStrategy): vmap()
        # of the global buffer is BUG() without an MMU, contiguous or not
        novmap = [s for s in others if s in ("contig-folio", "percpu-buffer")]
        return (Knob("--decompress", f"vmap() without an MMU is BUG(): {' or '.join(novmap)}"
                     " mount and read with no vmap at all"),)  # fmt: skip
    if stage == "mount":
        out.append(Knob("-C", "the percpu buffers reserved at mount are sized from the largest"
                              " pcluster"))  # fmt: skip
        if others:
            out.append(Knob("--decompress", f"{', '.join(s for s in others)} reserve nothing"
                                            " at mount"))  # fmt: skip
        return tuple(out)
    if alloc is None:
        return ()
    need = alloc.frames * PAGE_SIZE
    if extent is not None and extent.llen > PAGE_SIZE:
        if need >= extent.llen:
            out.append(Knob("--max-extent-bytes", f"this extent decodes {kib(extent.llen)} at"
                            " once; the option bounds what one extent decodes"))  # fmt: skip
        elif extent.plen > PAGE_SIZE and need >= extent.plen:
            out.append(Knob("-C", f"its {kib(extent.plen)} pcluster is read in at once; -C"
                            " bounds a pcluster"))  # fmt: skip
    if alloc.shortage == "not-contiguous":
        novmap = [s for s in others if s in ("contig-folio", "percpu-buffer")]
        if novmap:
            out.append(Knob("--decompress", f"{' or '.join(novmap)} need no vmap of scattered"
                            " frames"))  # fmt: skip
    elif alloc.shortage == "fragmented":
        free = [s for s in others if s == "percpu-buffer" or (s == "vmap" and mm == "mmu")]
        if free:
            out.append(Knob("--decompress", f"{' or '.join(free)} need no order-{alloc.order}"
                            " block while reading"))  # fmt: skip
    return tuple(out)


def explain_read(
    caps: Capabilities,
    mm: MmMode,
    strategy: Strategy | None,
    file: str,
    offset: int,
    err: BaseException,
) -> Explanation:
    """A read of ``file`` from ``offset`` ran out of memory with ``err``."""
    extent, alloc = _extent(err), _allocation(err)
    return Explanation(
        "read", file, offset, extent, alloc, None,
        knobs(caps, mm, strategy, "read", extent, alloc),
    )  # fmt: skip


def explain_mount(
    caps: Capabilities, mm: MmMode, strategy: Strategy | None, err: BaseException
) -> Explanation:
    """Opening the image (its mount-time reservations) ran out of memory."""
    alloc = _allocation(err)
    return Explanation(
        "mount", None, None, None, alloc, None, knobs(caps, mm, strategy, "mount", None, alloc)
    )


def explain_exec(
    caps: Capabilities,
    mm: MmMode,
    file: str,
    segment: tuple[int, int, str] | None,
    alloc: Allocation | None,
) -> Explanation:
    """Mapping a program's segment ran out of memory."""
    return Explanation(
        "exec", file, None, None, alloc, segment, knobs(caps, mm, None, "exec", None, alloc)
    )
