"""The replay's numbers against the arena's own counters, the strategies'
expected costs, find-min's tightness, and XIP programs costing no frames."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusefs.budget import (
    OWNER_KINDS,
    Combination,
    Recorder,
    Workload,
    budget,
    find_fits_from,
    find_min_arena,
    load_workload,
    replay,
)
from fusefs.vfs import PAGE_SIZE, MemoryConfig, open_image
from mmshim import Arena, Owner
from tests.conftest import nommufs

# An arena small enough that the page cache evicts and the frames of a
# pcluster's output end up scattered (the test tree is ~3 MiB).
BOARD = 1 << 20


def _workload(image: Path, kind: str = "all") -> Workload:
    with open_image(image) as fs:
        return load_workload(fs, "all" if kind == "all" else "exec")


def test_numbers_are_the_arenas(erofs16: Path) -> None:
    """Re-read every file by hand in a fresh arena: the same counters, and the
    recorded occupancy adds up to the arena at every sample."""
    work = _workload(erofs16)
    combo = Combination("nommu-bounce", "vmap")
    res = replay(erofs16, work, combo, BOARD, record=True)
    assert res.ok, res.failure
    assert res.files_done == len(work.files) > 20
    assert res.bytes_read == work.total_bytes

    with open_image(erofs16, combo.memory(BOARD)) as fs:
        for wf in work.files:
            data = b"".join(fs.read(wf.ino, off, 128 << 10) for off in range(0, wf.size, 128 << 10))
            assert len(data) == wf.size
        st = fs.arena.stats
        mem = fs.memory_stats()
    assert res.peak_frames == st.frames_peak
    assert res.bounce_bytes == st.bounce_bytes > 0
    assert res.vmap_calls == st.vmap_calls
    assert res.evictions == st.evictions > 0
    assert res.largest_alloc_order == st.largest_alloc_order
    assert res.bytes_decompressed == mem["bytes_decompressed"] > 0

    total = BOARD // PAGE_SIZE
    assert res.samples
    for s in res.samples:
        assert len(s.by_owner) == len(OWNER_KINDS)
        assert sum(s.by_owner) + s.free == total
        assert 0 <= s.largest_free <= s.free
    assert max(total - s.free for s in res.samples) <= res.peak_frames


def test_mmu_vmap_copies_nothing(erofs16: Path) -> None:
    res = replay(erofs16, _workload(erofs16), Combination("mmu", "vmap"), BOARD)
    assert res.ok, res.failure
    assert res.vmap_calls > 0
    assert res.bounce_bytes == 0
    assert res.copy_bytes == 0
    assert res.lost_writes == 0


def test_nommu_bounce_copies_the_scattered_clusters(erofs16: Path) -> None:
    """Every vmap of scattered frames is a bounce: copied in, and back out."""
    work = _workload(erofs16)
    res = replay(erofs16, work, Combination("nommu-bounce", "vmap"), BOARD)
    assert res.ok, res.failure
    assert res.bounce_vmaps > 0
    # at least two pages each way per scattered multi-page cluster
    assert res.bounce_bytes >= res.bounce_vmaps * 2 * PAGE_SIZE
    # nommu-contig does not even mount (the global buffer's vmap)
    contig = replay(erofs16, work, Combination("nommu-contig", "vmap"), BOARD)
    assert not contig.ok


def test_nommu_contig_vmap_fails_where_folios_succeed(erofs16: Path) -> None:
    work = _workload(erofs16)
    failed = replay(erofs16, work, Combination("nommu-contig", "vmap"), BOARD)
    assert failed.failure is not None
    # as the kernel: BUG in vmap() from z_erofs_gbuf_growsize, at mount
    assert failed.failure.startswith("mount: ") and "z_erofs_gbuf_growsize" in failed.failure
    assert failed.files_done == 0
    for strategy in ("contig-folio", "percpu-buffer"):
        res = replay(erofs16, work, Combination("nommu-contig", strategy), BOARD)
        assert res.ok, (strategy, res.failure)
        assert res.vmap_failures == 0


def test_percpu_reservation_counts_from_mount(erofs16: Path) -> None:
    """The percpu buffers are allocated at mount and are part of the peak."""
    with open_image(erofs16, MemoryConfig("mmu", "percpu-buffer", BOARD)) as fs:
        at_mount = fs.arena.stats.frames_by_owner["percpu"]
    assert at_mount > 0
    empty = Workload("list", ())
    res = replay(erofs16, empty, Combination("mmu", "percpu-buffer"), BOARD)
    assert res.ok and res.peak_frames >= at_mount


@pytest.mark.parametrize(
    ("fixture", "kind", "combo"),
    [
        ("erofs16", "all", Combination("mmu", "vmap")),
        ("erofs16", "all", Combination("nommu-contig", "contig-folio")),
        # reading cramfs needs one frame at a time; loading programs needs more
        ("cramfs_plain", "exec", Combination("nommu-bounce", None)),
    ],
    ids=["erofs-mmu-vmap", "erofs-contig-folio", "cramfs-exec-bounce"],
)
def test_find_min_is_tight(
    fixture: str, kind: str, combo: Combination, request: pytest.FixtureRequest
) -> None:
    image: Path = request.getfixturevalue(fixture)
    work = _workload(image, kind)
    found, probes = find_min_arena(lambda size: replay(image, work, combo, size).ok, BOARD)
    assert found is not None and found % PAGE_SIZE == 0
    assert 0 < probes <= 20
    # re-run both sides of the boundary in fresh arenas
    assert replay(image, work, combo, found).ok
    below = replay(image, work, combo, found - PAGE_SIZE)
    assert not below.ok and below.failure


def test_find_min_bisection() -> None:
    calls: list[int] = []

    def probe(size: int) -> bool:
        calls.append(size)
        return size >= 37 * PAGE_SIZE

    assert find_min_arena(probe, 256 * PAGE_SIZE) == (37 * PAGE_SIZE, len(calls))
    assert len(calls) <= 14
    assert 37 * PAGE_SIZE in calls and 36 * PAGE_SIZE in calls
    calls.clear()
    found, probes = find_min_arena(probe, 256 * PAGE_SIZE, max_ok=True)
    assert found == 37 * PAGE_SIZE and 256 * PAGE_SIZE not in calls and probes == len(calls)
    assert find_min_arena(probe, 36 * PAGE_SIZE)[0] is None
    assert find_min_arena(probe, 36 * PAGE_SIZE, max_ok=False) == (None, 0)
    assert find_min_arena(lambda size: True, 256 * PAGE_SIZE) == (PAGE_SIZE, 2)
    # the whole arena is the minimum
    assert find_min_arena(probe, 37 * PAGE_SIZE)[0] == 37 * PAGE_SIZE


def test_fits_from_finds_failures_above_the_minimum() -> None:
    """A fit that is not monotonic: fits at 37 pages, not at 39 and 44."""
    holes = {39, 44}

    def probe(size: int) -> bool:
        pages = size // PAGE_SIZE
        return pages >= 37 and pages not in holes

    found, _ = find_min_arena(probe, 256 * PAGE_SIZE)
    assert found == 37 * PAGE_SIZE
    fits, fails, probes = find_fits_from(probe, found, 256 * PAGE_SIZE)
    assert fails == [39 * PAGE_SIZE, 44 * PAGE_SIZE]
    assert fits == 45 * PAGE_SIZE and probes > 8
    monotonic = find_fits_from(lambda size: size >= found, found, 256 * PAGE_SIZE)
    assert monotonic[:2] == (found, [])


def test_budget_report_find_min(erofs16: Path) -> None:
    report = budget(
        erofs16,
        arena_bytes=BOARD,
        mms=("nommu-contig",),
        strategies=("vmap", "contig-folio"),
        find_min=True,
    )
    by = {r.decompress: r for r in report.results}
    assert by["vmap"].min_arena_bytes is None or by["vmap"].min_arena_bytes <= BOARD
    folio = by["contig-folio"].min_arena_bytes
    assert folio is not None and folio < BOARD
    assert report.format == "erofs" and report.workload.kind == "all"


def test_xip_programs_cost_no_frames(cramfs_xip: Path, cramfs_plain: Path) -> None:
    """Loading the programs: XIP text maps flash (no frame), plain text is
    decompressed into page-cache frames."""
    xip = budget(cramfs_xip, arena_bytes=BOARD, workload="exec", mms=("mmu",))
    (res,) = xip.results
    assert res.ok, res.failure
    assert res.files_done == 2
    assert res.exec_text_frames == 0
    plain = budget(cramfs_plain, arena_bytes=BOARD, workload="exec", mms=("mmu",))
    (pres,) = plain.results
    assert pres.ok, pres.failure
    assert pres.exec_text_frames is not None and pres.exec_text_frames > 0
    assert res.decompress is None  # cramfs has no strategy axis


def test_mount_time_reservation_that_does_not_fit(erofs16: Path) -> None:
    res = replay(erofs16, Workload("list", ()), Combination("mmu", "percpu-buffer"), 4 * PAGE_SIZE)
    assert res.failure is not None
    assert res.failure.startswith("mount: ") and "percpu" in res.failure


def test_recorder_is_bounded() -> None:
    """However long the workload, at most ``limit`` samples, and the bucket
    keeps the short-lived buffer that lived for one event only."""
    with Arena(64 * PAGE_SIZE, "mmu") as arena:
        rec = Recorder(limit=16)
        arena.add_observer(rec)
        cached = [arena.alloc_pages(0, Owner.PAGE_CACHE) for _ in range(40)]
        bounce = arena.alloc_pages(2, Owner.BOUNCE)
        arena.free_pages(bounce)
        for page in cached:
            arena.free_pages(page)
        arena.remove_observer(rec)
        rec.record(arena)
    assert rec.events == 82
    assert len(rec.samples) <= 16 and rec.stride > 1
    events = [s.event for s in rec.samples]
    assert events == sorted(events)
    bounce_i = OWNER_KINDS.index("bounce")
    assert max(s.by_owner[bounce_i] for s in rec.samples) == 4
    assert rec.samples[-1].free == 64


def test_an_extent_that_does_not_fit_names_max_extent_bytes(tmp_path: Path) -> None:
    """A MiB of zeros is one 1 MiB extent by default: decoding it needs an
    order-8 folio a 512 KiB board cannot have; the failure names the
    mkimage option, and with it the same tree fits."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "zeros").write_bytes(bytes(1 << 20))
    combo = Combination("nommu-contig", "contig-folio")
    for extra, fits in (((), False), (("--max-extent-bytes", "65536"), True)):
        image = tmp_path / f"z{len(extra)}.img"
        r = nommufs("mkimage", "erofs", "-q", "-z", "lz4hc", "-C", "65536", *extra,
                    str(image), str(src))  # fmt: skip
        assert r.returncode == 0, r.stderr.decode()
        res = replay(image, _workload(image), combo, 512 << 10)
        assert res.ok is fits, res.failure
        if not fits:
            why = res.explanation
            assert why is not None and why.extent is not None and why.allocation is not None
            assert (why.file, why.extent.la, why.extent.llen) == ("/zeros", 0, 1 << 20)
            assert why.allocation.order == 8 and why.allocation.contiguous
            assert "--max-extent-bytes" in [k.option for k in why.knobs]
            assert "decodes 1024K at once" in why.text()
