"""The whole budget of one image: every combination replayed (and, with
``find_min``, its smallest arena), as a :class:`BudgetReport`, and that
report as table rows and footnotes for the CLI.

Decisions a user should know:

* The peak counts everything the image holds in the arena from mount on,
  mount-time reservations included (``percpu-buffer``'s buffers): a board
  needs those frames too.
* The first allocation failure ends a replay: the result names the file and
  the allocation.

Sans-IO apart from opening the image: nothing is printed here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence

from fusefs.budget.minimum import find_fits_from, find_min_arena
from fusefs.budget.replay import Prober, default_combinations, replay
from fusefs.budget.result import BudgetReport, BudgetResult, XipRead
from fusefs.budget.units import kib
from fusefs.budget.workload import load_workload, parse_workload
from fusefs.errors import InvalidArgumentError
from fusefs.vfs import MM_MODES, PAGE_SIZE, MemoryConfig, MmMode, Strategy, open_image


def budget(
    image: str | os.PathLike[str],
    *,
    arena_bytes: int,
    workload: str = "all",
    mms: Sequence[MmMode] = MM_MODES,
    strategies: Sequence[Strategy] | None = None,
    xip_read: XipRead = "pagecache",
    find_min: bool = False,
    record: bool = False,
    offset: int = 0,
    progress: Callable[[BudgetResult], None] | None = None,
) -> BudgetReport:
    """Replay ``workload`` for every combination and return the report.

    ``strategies`` None means all the format has (EROFS: four); given for
    a format without a choice (cramfs) it is an error.  ``progress`` is called with
    each result as it is finished.
    """
    if arena_bytes <= 0 or arena_bytes % PAGE_SIZE:
        raise InvalidArgumentError(f"--arena {arena_bytes} is not a positive multiple of 4096")
    kind, source = parse_workload(workload)
    # the walk that lists the files is not measured: a roomy default arena
    with open_image(image, MemoryConfig(), offset=offset) as fs:
        fmt = fs.format_name
        caps = fs.capabilities
        work = load_workload(fs, kind, source)
    if not caps.strategies and strategies:
        raise InvalidArgumentError(
            f"--decompress does not apply to {fmt} (it has one way to decode: "
            "each block into its page-cache frame); leave it out"
        )
    results: list[BudgetResult] = []
    for combo in default_combinations(caps, mms, strategies, xip_read):
        res = replay(image, work, combo, arena_bytes, offset=offset, record=record)
        if find_min:
            probe = Prober(image, work, combo, offset)
            res.min_arena_bytes, res.probes = find_min_arena(probe, arena_bytes, max_ok=res.ok)
            if res.min_arena_bytes is None:
                res.critical = res.explanation
            else:
                res.critical = probe.failures.get(res.min_arena_bytes - PAGE_SIZE)
                fits_from, res.fails_above_min, more = find_fits_from(
                    probe, res.min_arena_bytes, arena_bytes
                )
                res.fits_from_bytes = fits_from
                res.probes += more
        results.append(res)
        if progress is not None:
            progress(res)
    return BudgetReport(os.fspath(image), fmt, arena_bytes, work, results, find_min)


def iter_rows(report: BudgetReport) -> Iterator[dict[str, str]]:
    """The report as table rows of strings (the CLI prints them)."""
    for r in report.results:
        row = {
            "mm": r.mm,
            "decompress": r.decompress or "-",
            "result": "ok" if r.ok else "FAIL",
            "peak": f"{r.peak_frames} ({kib(r.peak_frames * PAGE_SIZE)})",
            "decompressed": kib(r.bytes_decompressed),
            "bounce": kib(r.bounce_bytes),
            "copied": kib(r.copy_bytes),
            "vmap": f"{r.vmap_calls}/{r.vmap_failures}",
            "lost": str(r.lost_writes),
            "evict": str(r.evictions),
            "order": str(r.largest_alloc_order),
        }
        if report.workload.kind == "exec":
            row["exec frames"] = "-" if r.exec_frames is None else str(r.exec_frames)
        if report.find_min:
            row["min arena"] = _min_text(r)
        yield row


def _min_text(r: BudgetResult) -> str:
    if r.min_arena_bytes is None:
        return "none"
    if not r.fails_above_min:
        return kib(r.min_arena_bytes)
    fits = "?" if r.fits_from_bytes is None else kib(r.fits_from_bytes)
    return f"{kib(r.min_arena_bytes)}/{fits}*"


def footnotes(report: BudgetReport) -> Iterator[str]:
    """One line per distinct fit that is not monotonic in the arena size,
    naming the combinations that share it."""
    groups: dict[tuple[int, tuple[int, ...], int | None, int], list[str]] = {}
    for r in report.results:
        if r.fails_above_min and r.min_arena_bytes is not None:
            key = (
                r.min_arena_bytes,
                tuple(r.fails_above_min),
                r.fits_from_bytes,
                r.largest_alloc_order,
            )
            groups.setdefault(key, []).append(
                f"{r.mm}" + (f"+{r.decompress}" if r.decompress else "")
            )
    for (least, fails, fits_from, order), names in groups.items():
        shown = ", ".join(kib(n) for n in fails[:4]) + (", ..." if len(fails) > 4 else "")
        fits = "no sampled size" if fits_from is None else kib(fits_from)
        why = f" (its order-{order} blocks depend on fragmentation)" if order > 0 else ""
        yield (
            f"* {', '.join(names)}: fits in {kib(least)} but not in {shown}{why}; "
            f"every sampled size from {fits} up fits"
        )


