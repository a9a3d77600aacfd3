"""One replay: a fresh open of the image -- a fresh arena -- for one
combination of arena mode and decompression strategy, the workload run until
it ends or the first allocation fails, and the counters read from the arena
(:class:`mmshim.ArenaStats`) and the read path (:class:`fusefs.memory.ReadCounters`).

* Files are read in :data:`READ_CHUNK` pieces, as FUSE's ``max_read`` does.
* A format without a choice of strategy (``Capabilities.strategies`` empty:
  cramfs decodes each block into its page-cache frame) gets one combination
  per arena mode, ``decompress`` None.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from fusefs.budget.explain import Explanation, explain_exec, explain_mount, explain_read
from fusefs.budget.loader import map_executables
from fusefs.budget.result import BudgetResult, Combination, XipRead
from fusefs.budget.samples import Recorder
from fusefs.budget.workload import WorkFile, Workload, located
from fusefs.errors import FsError
from fusefs.vfs import (
    MM_MODES,
    STRATEGIES,
    Capabilities,
    Filesystem,
    MmMode,
    Strategy,
    open_image,
)
from mmshim import Arena

READ_CHUNK: Final = 128 << 10


def default_combinations(
    caps: Capabilities,
    mms: Sequence[MmMode] = MM_MODES,
    strategies: Sequence[Strategy] | None = None,
    xip_read: XipRead = "pagecache",
) -> list[Combination]:
    """Every arena mode x strategy asked for (default: all the format has)."""
    if not caps.strategies:
        return [Combination(mm, None, xip_read) for mm in mms]
    return [Combination(mm, s, xip_read) for mm in mms for s in (strategies or caps.strategies)]


def _read_files(
    fs: Filesystem, files: Sequence[WorkFile], combo: Combination, result: BudgetResult
) -> None:
    for wf in files:
        try:
            off = 0
            while off < wf.size:
                data = fs.read(wf.ino, off, min(READ_CHUNK, wf.size - off))
                if not data:
                    raise FsError(f"short read at {off} of {wf.size} bytes")
                off += len(data)
                result.bytes_read += len(data)
        except MemoryError as e:  # OutOfMemoryError, or an mmshim allocation error
            result.failure = f"{wf.path}: {e}"
            result.explanation = explain_read(
                fs.capabilities, combo.mm, combo.decompress, wf.path, off, e
            )
            return
        except FsError as e:
            raise located(wf.path, e) from e
        result.files_done += 1


def _map_programs(fs: Filesystem, combo: Combination, result: BudgetResult) -> None:
    try:
        reports = map_executables(fs)
    except MemoryError as e:  # reading a program's headers
        result.failure = str(e)
        result.explanation = explain_read(fs.capabilities, combo.mm, None, "(headers)", 0, e)
        return
    result.exec_frames = result.exec_text_frames = 0
    for rep in reports:
        if rep.error is not None:
            path = f"/{rep.path.lstrip('/')}"
            result.failure = f"{path}: {rep.error}"
            result.explanation = explain_exec(
                fs.capabilities, combo.mm, path, rep.failed_segment, rep.allocation
            )
            return
        result.files_done += 1
        result.bytes_read += rep.size
        result.exec_frames += rep.frames
        result.exec_text_frames += rep.text_frames


def replay(
    image: str | os.PathLike[str],
    workload: Workload,
    combo: Combination,
    arena_bytes: int,
    *,
    offset: int = 0,
    record: bool = False,
) -> BudgetResult:
    """Open ``image`` afresh with ``combo`` in an arena of ``arena_bytes`` and
    replay ``workload`` until it ends or the first allocation fails."""
    result = BudgetResult(combo.mm, combo.decompress, arena_bytes)
    try:
        fs = open_image(image, combo.memory(arena_bytes), offset=offset)
    except MemoryError as e:  # a mount-time reservation did not fit
        result.failure = f"mount: {e}"
        # only a decompression strategy reserves memory at mount
        caps = Capabilities(strategies=STRATEGIES if combo.decompress else ())
        result.explanation = explain_mount(caps, combo.mm, combo.decompress, e)
        return result
    try:
        arena = fs.arena
        recorder = Recorder(progress=lambda: result.bytes_read) if record else None
        if recorder is not None:
            recorder.record(arena)
            arena.add_observer(recorder)
        try:
            if workload.kind == "exec":
                _map_programs(fs, combo, result)
            else:
                _read_files(fs, workload.files, combo, result)
        finally:
            if recorder is not None:
                arena.remove_observer(recorder)
                recorder.record(arena)
                result.samples = recorder.samples
        _collect(fs, arena, result)
    finally:
        fs.close()
    return result


def _collect(fs: Filesystem, arena: Arena, result: BudgetResult) -> None:
    st = arena.stats
    counters = fs.mem.counters
    result.peak_frames = st.frames_peak
    result.bounce_bytes = st.bounce_bytes
    result.bounce_vmaps = st.bounce_vmaps
    result.vmap_calls = st.vmap_calls
    result.vmap_failures = st.vmap_failures
    result.lost_writes = st.lost_writes
    result.evictions = st.evictions
    result.alloc_failures = st.alloc_failures
    result.largest_alloc_order = st.largest_alloc_order
    result.bytes_decompressed = counters.bytes_decompressed
    result.copy_bytes = counters.copy_bytes


class Prober:
    """``probe(arena_bytes)``: does ``workload`` run whole in that arena?
    Each failing size's explanation is kept (``failures``), so find-min can
    name what set the minimum: the failure one page below it."""

    def __init__(
        self,
        image: str | os.PathLike[str],
        workload: Workload,
        combo: Combination,
        offset: int = 0,
    ) -> None:
        self.image, self.workload, self.combo, self.offset = image, workload, combo, offset
        self.failures: dict[int, Explanation | None] = {}

    def __call__(self, arena_bytes: int) -> bool:
        res = replay(self.image, self.workload, self.combo, arena_bytes, offset=self.offset)
        if not res.ok:
            self.failures[arena_bytes] = res.explanation
        return res.ok
