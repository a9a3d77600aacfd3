"""``nommufs budget --suggest``: search the build options for the image that fits the board.

From a source tree (or an image, extracted to a temporary tree first) every
variant of the grid (:mod:`fusefs.budget.grid`) is built with nommufs's own
mkimage, in process, from the very command line the table prints; each
distinct image is replayed for each decompression strategy to find its
smallest arena (``--find-min``'s search).  Builds and replays run in
worker processes (both cores by default) and results are keyed by variant
and strategy, never by completion order, so the same tree and flags give
the same table.

A variant's RAM is its best strategy's minimum arena; it *fits* when that
is at most the board's arena and its image at most the board's flash.  The
Pareto front: variants no other variant beats in both image bytes and RAM
(and equals in neither... see :func:`pareto_front`).  The recommendation is
the fitting variant on the front with the most headroom: the smallest
larger share of the board it uses (RAM / arena, image / flash), or, without
``--flash``, the smallest image.

Pruning after the build: an image identical to one already built is not
replayed again (its row says which); an image larger than ``--flash`` is
not replayed (it cannot fit).
"""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from fusefs.budget.explain import Explanation
from fusefs.budget.grid import Grid, Variant
from fusefs.budget.minimum import find_fits_from, find_min_arena
from fusefs.budget.replay import Prober, default_combinations, replay
from fusefs.budget.result import Combination
from fusefs.budget.workload import load_workload, parse_workload
from fusefs.cmdline import parse, run_chosen
from fusefs.commands.extract import extract
from fusefs.elf import is_elf_program
from fusefs.errors import FsError, InvalidArgumentError
from fusefs.vfs import (
    PAGE_SIZE,
    STRATEGIES,
    Capabilities,
    MemoryConfig,
    MmMode,
    Strategy,
    open_image,
)
from mkimage.cli import parser as mkimage_parser
from mkimage.errors import BuildError


@dataclass(frozen=True, slots=True)
class Board:
    """The machine to fit: RAM for the filesystem, flash for the image, MMU mode."""

    arena_bytes: int
    flash_bytes: int | None
    mm: MmMode


@dataclass(frozen=True, slots=True)
class Built:
    """One variant's build, as a worker made it."""

    index: int
    path: str
    size: int
    digest: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Measured:
    """One image x strategy x workload: its smallest arena and what it cost
    at the board's size."""

    strategy: Strategy | None
    workload: str
    min_arena_bytes: int | None  # None: does not run whole even in the board's arena
    copy_bytes: int | None  # at the board's arena (None: failed there)
    peak_frames: int  # at the board's arena
    critical: Explanation | None  # the failure one page below the minimum
    probes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "workload": self.workload,
            "min_arena_bytes": self.min_arena_bytes,
            "copy_bytes": self.copy_bytes,
            "peak_bytes": self.peak_frames * PAGE_SIZE,
            "critical": None if self.critical is None else self.critical.to_json(),
            "find_min_probes": self.probes,
        }


@dataclass(slots=True)
class Row:
    """A variant and what was measured of it."""

    variant: Variant
    image_bytes: int | None = None
    digest: str | None = None
    error: str | None = None  # the build failed (mkimage's own message)
    same_as: Variant | None = None  # an identical image, measured under that variant
    over_flash: bool = False  # larger than the board's flash: not replayed
    measured: dict[str, Measured] = field(default_factory=dict)  # by strategy ("-": none)
    exec: Measured | None = None  # cramfs with programs: loading them all
    front: bool = False
    image: str | None = None  # the built image measured (while the search runs)

    @property
    def best(self) -> Measured | None:
        """The strategy with the smallest minimum arena (then fewest bytes copied)."""
        found = [m for m in self.measured.values() if m.min_arena_bytes is not None]
        return min(found, key=_strategy_key, default=None)

    @property
    def ram(self) -> int | None:
        best = self.best
        return None if best is None else best.min_arena_bytes

    def fits(self, board: Board) -> bool:
        ram, size = self.ram, self.image_bytes
        if ram is None or size is None or ram > board.arena_bytes:
            return False
        return board.flash_bytes is None or size <= board.flash_bytes

    def to_json(self, board: Board) -> dict[str, Any]:
        best = self.best
        return {
            "format": self.variant.format,
            "options": list(self.variant.options),
            "command": self.variant.command(),
            "image_bytes": self.image_bytes,
            "sha256": self.digest,
            "error": self.error,
            "same_image_as": None if self.same_as is None else self.same_as.command(),
            "over_flash": self.over_flash,
            "strategies": {k: m.to_json() for k, m in sorted(self.measured.items())},
            "exec": None if self.exec is None else self.exec.to_json(),
            "best_strategy": None if best is None else best.strategy,
            "min_arena_bytes": self.ram,
            "copy_bytes": None if best is None else best.copy_bytes,
            "fits": self.fits(board),
            "pareto": self.front,
        }


def _strategy_key(m: Measured) -> tuple[int, int, int]:
    order = STRATEGIES.index(m.strategy) if m.strategy is not None else -1
    return (m.min_arena_bytes or 0, m.copy_bytes if m.copy_bytes is not None else 1 << 62, order)


def pareto_front(points: Sequence[tuple[int, int] | None]) -> list[bool]:
    """For each (flash, ram) point, whether no other point is at most it in
    both and below it in one (None: not measured, never on the front).
    Equal points are all on the front."""
    out = []
    for p in points:
        if p is None:
            out.append(False)
            continue
        dominated = any(
            q is not None and q[0] <= p[0] and q[1] <= p[1] and q != p for q in points
        )
        out.append(not dominated)
    return out


@dataclass(slots=True)
class Suggestion:
    """The whole search: every row in table order, the front marked, the pick."""

    source: str
    board: Board
    workload: str
    strategies: tuple[Strategy, ...]
    rows: list[Row]
    recommended: Row | None
    seconds: float
    builds: int
    replays: int
    # the recommendation's sizes above its minimum (find_fits_from): those that
    # failed again (fragmentation) and the size from which every sampled one fits
    fails_above_min: list[int] = field(default_factory=list)
    fits_from_bytes: int | None = None

    def to_json(self) -> dict[str, Any]:
        rec = self.recommended
        return {
            "source": self.source,
            "arena_bytes": self.board.arena_bytes,
            "flash_bytes": self.board.flash_bytes,
            "mm": self.board.mm,
            "workload": self.workload,
            "strategies": list(self.strategies),
            "variants": len(self.rows),
            "builds": self.builds,
            "replays": self.replays,
            "seconds": round(self.seconds, 1),
            "recommended": None if rec is None else rec.to_json(self.board),
            "recommended_fails_above_min": self.fails_above_min,
            "recommended_fits_from_bytes": self.fits_from_bytes,
            "rows": [r.to_json(self.board) for r in self.rows],
        }


def _headroom(row: Row, board: Board) -> tuple[float, int, int, tuple[str, tuple[str, ...]]]:
    ram, size = row.ram or 0, row.image_bytes or 0
    # without a flash size, RAM fits and the smallest image is the pick
    flash = board.flash_bytes
    share = 0.0 if flash is None else max(ram / board.arena_bytes, size / flash)
    return share, size, ram, row.variant.key


def order_rows(rows: list[Row], board: Board) -> Row | None:
    """Mark the front, sort the rows by fit (fitting ones by headroom, then
    the rest by RAM and size; failed builds last), return the pick."""
    points = [(r.image_bytes, r.ram) if r.ram is not None and r.image_bytes is not None
              else None for r in rows]  # fmt: skip
    for row, front in zip(rows, pareto_front(points), strict=True):
        row.front = front

    def key(r: Row) -> tuple[int, tuple[float, int, int, tuple[str, tuple[str, ...]]]]:
        if r.fits(board):
            return 0, _headroom(r, board)
        if r.ram is not None:
            return 1, (0.0, r.ram, r.image_bytes or 0, r.variant.key)
        if r.image_bytes is not None:
            return 2, (0.0, r.image_bytes, 0, r.variant.key)
        return 3, (0.0, 0, 0, r.variant.key)

    rows.sort(key=key)
    picks = [r for r in rows if r.front and r.fits(board)]
    return picks[0] if picks else None


# -- the source tree ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TreeFacts:
    largest_file: int
    has_programs: bool


def tree_facts(src: str) -> TreeFacts:
    """The largest regular file and whether any executable is an ELF program."""
    largest, programs = 0, False
    for top, _dirs, files in os.walk(src):
        for name in files:
            path = os.path.join(top, name)
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            largest = max(largest, st.st_size)
            if not programs and st.st_mode & 0o111 and st.st_size >= 64:
                with open(path, "rb") as f:
                    programs = is_elf_program(f.read(PAGE_SIZE))
    return TreeFacts(largest, programs)


# -- the workers --------------------------------------------------------------------------


def build_variant(index: int, variant: Variant, src: str, out: str) -> Built:
    """Build ``variant`` from ``src`` into ``out`` by parsing its own command line."""
    t0 = time.monotonic()
    args = parse(mkimage_parser(), variant.argv(out, src))
    if variant.format == "erofs":
        args.quiet = True  # in process: nothing printed
        args.workers = 1  # one compression thread per worker process
    run_chosen(args, "format")
    digest = hashlib.sha256()
    with open(out, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return Built(index, out, os.path.getsize(out), digest.hexdigest(), time.monotonic() - t0)


def measure(image: str, workload: str, combo: Combination, arena_bytes: int) -> Measured:
    """Replay ``workload`` at the board's arena, then find the smallest one."""
    t0 = time.monotonic()
    kind, source = parse_workload(workload)
    with open_image(image, MemoryConfig()) as fs:
        work = load_workload(fs, kind, source)
    first = replay(image, work, combo, arena_bytes)
    probe = Prober(image, work, combo)
    least, probes = find_min_arena(probe, arena_bytes, max_ok=first.ok)
    critical = first.explanation if least is None else probe.failures.get(least - PAGE_SIZE)
    return Measured(
        combo.decompress, workload, least, first.copy_bytes if first.ok else None,
        first.peak_frames, critical, probes + 1, time.monotonic() - t0,
    )  # fmt: skip


# -- the search -------------------------------------------------------------------------------


@dataclass(slots=True)
class Progress:
    """Counts for a progress bar: variants built of planned, replays done of queued."""

    built: int = 0
    variants: int = 0
    replays_done: int = 0
    replays_queued: int = 0
    started: float = field(default_factory=time.monotonic)


ProgressFn = Callable[[Progress], None]


def suggest(
    source: str | os.PathLike[str],
    board: Board,
    *,
    workload: str = "all",
    grid: Grid | None = None,
    strategies: Sequence[Strategy] | None = None,
    jobs: int = 2,
    progress: ProgressFn | None = None,
) -> Suggestion:
    """Build every variant of ``grid`` from ``source`` (a directory, or an
    image extracted first), measure each for ``board`` and return the table."""
    src = os.fspath(source)
    kind, _list = parse_workload(workload)
    grid = grid or Grid()
    if not os.path.exists(src):
        raise InvalidArgumentError(f"{src}: no such source tree or image")
    with tempfile.TemporaryDirectory(prefix="nommufs-suggest.") as tmp:
        tree = src if os.path.isdir(src) else _extracted(src, os.path.join(tmp, "tree"))
        facts = tree_facts(tree)
        variants = grid.variants(facts.largest_file, facts.has_programs)
        if kind == "exec":  # only cramfs images can be mmapped by nommufs
            variants = [v for v in variants if v.format == "cramfs"]
        if not variants:
            raise InvalidArgumentError(
                "--suggest: the grid is empty"
                + (" (--workload exec measures cramfs variants only)" if kind == "exec" else "")
            )
        rows = [Row(v) for v in variants]
        t0 = time.monotonic()
        done = _search(rows, tree, tmp, board, workload, strategies, facts, jobs, progress)
        recommended = order_rows(rows, board)
        fails, fits_from = _above_min(recommended, workload, board)
    return Suggestion(
        src, board, workload, tuple(strategies or STRATEGIES), rows, recommended,
        time.monotonic() - t0, done.built, done.replays_done, fails, fits_from,
    )  # fmt: skip


def _above_min(row: Row | None, workload: str, board: Board) -> tuple[list[int], int | None]:
    """find-min's check of the sizes above the pick's minimum: a strategy
    needing high-order blocks may fail again a few pages up (fragmentation)."""
    best = None if row is None else row.best
    if row is None or best is None or row.image is None or best.min_arena_bytes is None:
        return [], None
    kind, source = parse_workload(workload)
    with open_image(row.image, MemoryConfig()) as fs:
        work = load_workload(fs, kind, source)
    probe = Prober(row.image, work, Combination(board.mm, best.strategy))
    fits_from, fails, _probes = find_fits_from(probe, best.min_arena_bytes, board.arena_bytes)
    return fails, fits_from


def _extracted(image: str, dest: str) -> str:
    try:
        with open_image(image) as fs:
            extract(fs, dest, owners=False, devices=False)
    except FsError as e:
        raise InvalidArgumentError(f"{image}: not a source tree, and as an image: {e}") from e
    return dest


def _combos(row: Row, board: Board, strategies: Sequence[Strategy] | None) -> list[Combination]:
    caps = Capabilities(strategies=STRATEGIES) if row.variant.format == "erofs" else Capabilities()
    return default_combinations(caps, (board.mm,), strategies)


def _search(
    rows: list[Row],
    tree: str,
    tmp: str,
    board: Board,
    workload: str,
    strategies: Sequence[Strategy] | None,
    facts: TreeFacts,
    jobs: int,
    progress: ProgressFn | None,
) -> Progress:
    state = Progress(variants=len(rows))
    by_digest: dict[str, Row] = {}
    pending: dict[Future[Any], tuple[str, int, str]] = {}

    def tell() -> None:
        if progress is not None:
            progress(state)

    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        for i, row in enumerate(rows):
            out = os.path.join(tmp, f"variant{i:03}.img")
            pending[pool.submit(build_variant, i, row.variant, tree, out)] = ("build", i, "")
        tell()
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(finished, key=lambda f: pending[f][:2]):
                what, i, slot = pending.pop(fut)
                row = rows[i]
                if what == "build":
                    state.built += 1
                    try:
                        built: Built = fut.result()
                    except (BuildError, FsError, OSError) as e:
                        row.error = str(e)
                        continue
                    row.image_bytes, row.digest, row.image = built.size, built.digest, built.path
                    if built.digest in by_digest:
                        row.same_as = by_digest[built.digest].variant
                        continue
                    by_digest[built.digest] = row
                    if board.flash_bytes is not None and built.size > board.flash_bytes:
                        row.over_flash = True
                        continue
                    jobs_for = [(workload, c) for c in _combos(row, board, strategies)]
                    if row.variant.format == "cramfs" and facts.has_programs and workload != "exec":
                        jobs_for.append(("exec", Combination(board.mm, None)))
                    for wl, combo in jobs_for:
                        key = "exec" if wl == "exec" and workload != "exec" else (
                            combo.decompress or "-")
                        pending[pool.submit(measure, built.path, wl, combo, board.arena_bytes)] = (
                            "measure", i, key)
                        state.replays_queued += 1
                else:
                    state.replays_done += 1
                    try:
                        m: Measured = fut.result()
                    except FsError as e:  # the reader refused the image: a finding, kept
                        row.error = f"replay ({slot}): {e}"
                        continue
                    if slot == "exec":
                        row.exec = m
                    else:
                        row.measured[slot] = m
            tell()
    # Identical images: whichever was built first was measured (the numbers
    # are the image's, so the same); the table names the first in grid order.
    first: dict[str, Row] = {}
    for row in rows:
        if row.digest is None:
            continue
        twin = by_digest[row.digest]
        row.measured, row.exec, row.over_flash = twin.measured, twin.exec, twin.over_flash
        row.image = twin.image
        head = first.setdefault(row.digest, row)
        row.same_as = None if head is row else head.variant
    return state


def iter_progress_line(state: Progress, now: float) -> Iterator[str]:
    """The parts of a progress line: counts, and an ETA once something is done."""
    yield f"variants built {state.built}/{state.variants}"
    yield f"replays {state.replays_done}/{state.replays_queued}"
    elapsed = now - state.started
    # each build queues its replays: estimate what is left from the rate so far
    per_build = state.replays_queued / state.built if state.built else 0
    total = state.variants * (1 + per_build)
    done = state.built + state.replays_done
    if done and total > done:
        yield f"ETA {_duration(elapsed * (total - done) / done)}"


def _duration(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 60}m{s % 60:02}s" if s >= 60 else f"{s}s"
