"""The budget question: does this image fit on the board, and how should it decompress?

A *workload* (every regular file read in full, a list of files, or every ELF
program mapped as a loader would) is replayed against a fresh open of the
image -- a fresh arena -- for each combination of arena mode and
decompression strategy.  Each replay yields a :class:`BudgetResult` whose
numbers are read from the arena's own counters (:class:`mmshim.ArenaStats`)
and the reader's (``Filesystem.memory_stats()``).  :func:`find_min_arena`
bisects, to the page, the smallest arena in which the whole workload
succeeds.

Decisions a user should know:

* The peak counts everything the image holds in the arena from mount on,
  mount-time reservations included (``percpu-buffer``'s buffers): a board
  needs those frames too.
* Files are read in :data:`READ_CHUNK` pieces, as FUSE's ``max_read`` does.
* cramfs has no choice of decompression strategy (zlib decodes each 4 KiB
  block straight into its page-cache frame), so a cramfs image gets one row
  per arena mode, ``decompress`` None.
* The first allocation failure ends a replay: the result names the file and
  the allocation (the reader's OutOfMemoryError text, which gives the order).

Sans-IO apart from opening the image: nothing is printed here.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from fusefs.errors import FsError, InvalidArgumentError, NotFoundError, UnsupportedFeatureError
from fusefs.vfs import (
    MM_MODES,
    PAGE_SIZE,
    STRATEGIES,
    Filesystem,
    Ino,
    MemoryConfig,
    MmMode,
    Strategy,
    open_image,
    resolve,
    show_path,
    walk,
)
from mmshim import Arena

READ_CHUNK: Final = 128 << 10
MAX_SAMPLES: Final = 2000
OWNER_KINDS: Final[tuple[str, ...]] = (
    "page_cache",
    "decompress",
    "bounce",
    "percpu",
    "other",
)
WorkloadKind = Literal["all", "list", "exec"]
XipRead = Literal["pagecache", "direct"]


@dataclass(frozen=True, slots=True)
class WorkFile:
    """One file of a workload, resolved once per image (Inos are stable per image)."""

    path: str
    ino: Ino
    size: int


@dataclass(frozen=True, slots=True)
class Workload:
    """What to replay: ``kind`` and, for ``all``/``list``, the files in order."""

    kind: WorkloadKind
    files: tuple[WorkFile, ...] = ()
    source: str | None = None  # the list file, for ``list``

    @property
    def label(self) -> str:
        return f"list:{self.source}" if self.kind == "list" else self.kind

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True, slots=True)
class Combination:
    """One simulated machine: arena mode and decompression strategy (None for cramfs)."""

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


@dataclass(slots=True)
class BudgetResult:
    """The outcome of one replay; ``failure`` is None when the workload succeeded."""

    mm: MmMode
    decompress: Strategy | None
    arena_bytes: int
    failure: str | None = None
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
    samples: list[Sample] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_json(self, *, find_min: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mm": self.mm,
            "decompress": self.decompress,
            "ok": self.ok,
            "failure": self.failure,
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


# -- the arena behind an open image ---------------------------------------------------


def arena_of(fs: Filesystem) -> Arena:
    """The arena an open image allocates from (each open has its own)."""
    try:
        return fs.arena
    except AttributeError:
        raise UnsupportedFeatureError(f"{fs.format_name}: no arena to measure") from None


# -- workloads ---------------------------------------------------------------------------


def all_files(fs: Filesystem) -> tuple[WorkFile, ...]:
    """Every regular file once (hard links once), in walk order: parents
    before children, entries in on-disk order."""
    seen: set[int] = set()
    out: list[WorkFile] = []
    for item in walk(fs):
        if item.attr.is_reg and item.ino not in seen:
            seen.add(item.ino)
            out.append(WorkFile(show_path(item.path), item.ino, item.attr.size))
    return tuple(out)


def _located(where: str, e: FsError) -> FsError:
    """``e`` with the place it happened in front of its message (same errno)."""
    err = FsError(f"{where}: {e}")
    err.errno = e.errno
    return err


def listed_files(fs: Filesystem, list_path: str) -> tuple[WorkFile, ...]:
    """The files named in ``list_path``, one path per line (blank lines and
    ``#`` comments skipped), symlinks followed."""
    try:
        with open(list_path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InvalidArgumentError(
            f"--workload list:{list_path}: cannot read: {e.strerror or e}"
        ) from None
    out: list[WorkFile] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        where = f"--workload list:{list_path} line {lineno}"
        try:
            ino = resolve(fs, line, follow_last=True)
        except NotFoundError:
            raise NotFoundError(
                f"{where}: {line.decode(errors='backslashreplace')}: no such file in the image"
            ) from None
        except FsError as e:
            raise _located(where, e) from e
        attr = fs.getattr(ino)
        if not attr.is_reg:
            raise InvalidArgumentError(
                f"{where}: {line.decode(errors='backslashreplace')}: not a regular file"
            )
        out.append(WorkFile(show_path(line.lstrip(b"/")), ino, attr.size))
    if not out:
        raise InvalidArgumentError(f"--workload list:{list_path}: names no file")
    return tuple(out)


def parse_workload(text: str) -> tuple[WorkloadKind, str | None]:
    """``all``, ``exec`` or ``list:FILE``."""
    if text in ("all", "exec"):
        return ("all" if text == "all" else "exec"), None
    if text.startswith("list:") and len(text) > 5:
        return "list", text[5:]
    raise InvalidArgumentError(f"bad --workload {text!r} (all, exec or list:FILE)")


def load_workload(fs: Filesystem, kind: WorkloadKind, source: str | None = None) -> Workload:
    """Resolve the workload's files once (replays reuse them)."""
    if kind == "all":
        return Workload("all", all_files(fs))
    if kind == "list":
        if source is None:
            raise InvalidArgumentError("--workload list: needs a file")
        return Workload("list", listed_files(fs, source), source)
    if getattr(fs, "mappable", None) is None:
        raise UnsupportedFeatureError(
            f"--workload exec: {fs.format_name} images cannot be mmapped by nommufs yet "
            "(no program-loader simulation for this format)"
        )
    return Workload("exec")


def default_combinations(
    format_name: str,
    mms: Sequence[MmMode] = MM_MODES,
    strategies: Sequence[Strategy] | None = None,
    xip_read: XipRead = "pagecache",
) -> list[Combination]:
    """Every arena mode x strategy asked for; cramfs has no strategy axis."""
    if format_name == "cramfs":
        return [Combination(mm, None, xip_read) for mm in mms]
    return [Combination(mm, s, xip_read) for mm in mms for s in (strategies or STRATEGIES)]


# -- one replay --------------------------------------------------------------------------


def _read_files(fs: Filesystem, files: Sequence[WorkFile], result: BudgetResult) -> None:
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
            result.failure = f"{wf.path}: {e}{_extent_hint(fs, wf.ino, off)}"
            return
        except FsError as e:
            raise _located(wf.path, e) from e
        result.files_done += 1


def _extent_hint(fs: Filesystem, ino: Ino, off: int) -> str:
    """When the read that ran out of memory decodes a compressed extent of
    more than a page (an EROFS extent is decoded whole), name the option that
    bounds extents; empty otherwise (and for formats without extents)."""
    try:
        extents = fs.describe_inode(ino).get("extents", [])
    except FsError:
        return ""
    for e in extents:
        if e["la"] <= off < e["la"] + e["llen"] and e.get("kind") == "encoded":
            if e["llen"] <= PAGE_SIZE:
                return ""
            return (
                f" (its extent at {e['la']} decodes {_kib(e['llen'])} at once; images built with"
                " `nommufs mkimage erofs --max-extent-bytes=N` decode at most N)"
            )
    return ""


def _map_programs(fs: Filesystem, result: BudgetResult) -> None:
    from fusefs.cramfs.loader import map_executables

    try:
        reports = map_executables(fs)
    except MemoryError as e:
        result.failure = str(e)
        return
    result.exec_frames = result.exec_text_frames = 0
    for rep in reports:
        if rep.error is not None:
            result.failure = f"/{rep.path.lstrip('/')}: {rep.error}"
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
        return result
    try:
        arena = arena_of(fs)
        recorder = Recorder(progress=lambda: result.bytes_read) if record else None
        if recorder is not None:
            recorder.record(arena)
            arena.add_observer(recorder)
        try:
            if workload.kind == "exec":
                _map_programs(fs, result)
            else:
                _read_files(fs, workload.files, result)
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
    mem = fs.memory_stats()
    result.peak_frames = st.frames_peak
    result.bounce_bytes = st.bounce_bytes
    result.bounce_vmaps = st.bounce_vmaps
    result.vmap_calls = st.vmap_calls
    result.vmap_failures = st.vmap_failures
    result.lost_writes = st.lost_writes
    result.evictions = st.evictions
    result.alloc_failures = st.alloc_failures
    result.largest_alloc_order = st.largest_alloc_order
    result.bytes_decompressed = mem.get("bytes_decompressed", 0)
    result.copy_bytes = mem.get("copy_bytes", 0)


# -- the smallest arena ------------------------------------------------------------------


def find_min_arena(
    probe: Callable[[int], bool], max_bytes: int, *, max_ok: bool | None = None
) -> tuple[int | None, int]:
    """The smallest arena (a multiple of the page size, at most ``max_bytes``)
    for which ``probe(arena_bytes)`` succeeds; None when even ``max_bytes``
    fails.  Returns it and the number of probes made.

    ``max_ok`` is the outcome at ``max_bytes`` when already known.  The search
    gallops up from one page (1, 2, 4, ... pages) and then bisects between the
    last failure and the first success: a failing probe stops at its first
    failed allocation and is cheap, a succeeding one replays everything, and
    galloping makes few of those.  The answer is one the probes gave: the
    workload succeeded at it and failed one page below (or it is one page).
    It assumes a larger arena never fails where a smaller one succeeded;
    where that does not hold it is still a tight boundary, not necessarily
    the smallest of all.
    """
    probes = 0

    def run(pages: int) -> bool:
        nonlocal probes
        probes += 1
        return probe(pages * PAGE_SIZE)

    top = max_bytes // PAGE_SIZE
    if not (run(top) if max_ok is None else max_ok):
        return None, probes
    lo, hi = 0, top  # an empty arena holds nothing: a failure by definition
    step = 1
    while step < hi:
        if run(step):
            hi = step
            break
        lo = step
        step *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if run(mid):
            hi = mid
        else:
            lo = mid
    return hi * PAGE_SIZE, probes


STABLE_WINDOW: Final = 8
STABLE_FACTORS: Final = (1.25, 1.5, 2.0, 3.0)
STABLE_MAX_PROBES: Final = 64


def find_fits_from(
    probe: Callable[[int], bool], min_bytes: int, max_bytes: int
) -> tuple[int | None, list[int], int]:
    """Check the sizes above a minimum :func:`find_min_arena` found.

    Strategies that need high-order blocks (bounce buffers, folios) fit or
    not depending on how the arena fragments, so success is not monotonic in
    the arena's size: a few pages more can fail again.  From ``min_bytes`` up,
    the next :data:`STABLE_WINDOW` pages and the sizes x1.25, x1.5, x2, x3 are
    replayed; a failure at ``f`` moves the candidate to ``f`` + 1 page and the
    checks start again.  Returns the candidate all checks passed (None if the
    probe budget ran out), the failing sizes met, and the number of probes.
    This is a sampled check, not a proof: sizes not probed may still fail
    (a full scan would replay the workload once per page of the range).
    """
    probes = 0
    fails: list[int] = []
    top = max_bytes // PAGE_SIZE
    cand = min_bytes // PAGE_SIZE
    while probes < STABLE_MAX_PROBES:
        checks = sorted(
            {cand + i for i in range(1, STABLE_WINDOW + 1)}
            | {-(-int(cand * f * PAGE_SIZE) // PAGE_SIZE) for f in STABLE_FACTORS}
        )
        for pages in (c for c in checks if c < top):
            probes += 1
            if not probe(pages * PAGE_SIZE):
                fails.append(pages * PAGE_SIZE)
                cand = pages + 1
                break
            if probes >= STABLE_MAX_PROBES:
                return None, fails, probes
        else:
            return cand * PAGE_SIZE, fails, probes
    return None, fails, probes


def _probe(
    image: str | os.PathLike[str], workload: Workload, combo: Combination, offset: int
) -> Callable[[int], bool]:
    def probe(arena_bytes: int) -> bool:
        return replay(image, workload, combo, arena_bytes, offset=offset).ok

    return probe


# -- the whole report ----------------------------------------------------------------------


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

    ``strategies`` None means all four (EROFS); given for a cramfs image it
    is an error, as cramfs has no such choice.  ``progress`` is called with
    each result as it is finished.
    """
    if arena_bytes <= 0 or arena_bytes % PAGE_SIZE:
        raise InvalidArgumentError(f"--arena {arena_bytes} is not a positive multiple of 4096")
    kind, source = parse_workload(workload)
    # the walk that lists the files is not measured: a roomy default arena
    with open_image(image, MemoryConfig(), offset=offset) as fs:
        fmt = fs.format_name
        work = load_workload(fs, kind, source)
    if fmt == "cramfs" and strategies:
        raise InvalidArgumentError(
            "--decompress does not apply to cramfs (zlib decodes each block into its "
            "page-cache frame); leave it out"
        )
    results: list[BudgetResult] = []
    for combo in default_combinations(fmt, mms, strategies, xip_read):
        res = replay(image, work, combo, arena_bytes, offset=offset, record=record)
        if find_min:
            probe = _probe(image, work, combo, offset)
            res.min_arena_bytes, res.probes = find_min_arena(probe, arena_bytes, max_ok=res.ok)
            if res.min_arena_bytes is not None:
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
            "peak": f"{r.peak_frames} ({_kib(r.peak_frames * PAGE_SIZE)})",
            "decompressed": _kib(r.bytes_decompressed),
            "bounce": _kib(r.bounce_bytes),
            "copied": _kib(r.copy_bytes),
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
        return _kib(r.min_arena_bytes)
    fits = "?" if r.fits_from_bytes is None else _kib(r.fits_from_bytes)
    return f"{_kib(r.min_arena_bytes)}/{fits}*"


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
        shown = ", ".join(_kib(n) for n in fails[:4]) + (", ..." if len(fails) > 4 else "")
        fits = "no sampled size" if fits_from is None else _kib(fits_from)
        why = f" (its order-{order} blocks depend on fragmentation)" if order > 0 else ""
        yield (
            f"* {', '.join(names)}: fits in {_kib(least)} but not in {shown}{why}; "
            f"every sampled size from {fits} up fits"
        )


def _kib(n: int) -> str:
    if n >= 10 << 20:
        return f"{n / (1 << 20):.1f}M"
    if n % 1024 == 0:
        return f"{n >> 10}K"
    return f"{n / 1024:.1f}K"
