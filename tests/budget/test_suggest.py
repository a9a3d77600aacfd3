"""``budget --suggest`` and the explanations of failures (issue 11).

The explanations are read from real failures (the read path's ENOMEM, as
mmshim raised it), for each kind of shortage: an extent decoded at once, a
contiguous block in a fragmented arena, a vmap of scattered frames without
an MMU.  The search is run on a tree whose default build fails on a small
board; its recommendation is then built with ``nommufs mkimage``, replayed
at the arena the table says, and mounted by the kernel.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from fusefs.budget import Combination, Workload, budget, load_workload, replay
from fusefs.budget.explain import explain_read
from fusefs.budget.grid import UNBOUNDED, Grid
from fusefs.budget.suggest import Board, pareto_front, suggest
from fusefs.errors import OutOfMemoryError
from fusefs.vfs import PAGE_SIZE, MemoryConfig, open_image, resolve
from mmshim import Owner
from tests.budget.conftest import mkimage
from tests.conftest import Mounter, nommufs
from tests.trees import _content, diff_trees, snapshot

SMALL_BOARD = 512 << 10


def _workload(image: Path) -> Workload:
    with open_image(image) as fs:
        return load_workload(fs, "all")


def test_pareto_front_hand_checked() -> None:
    """(flash, ram) points; the front worked out by hand."""
    points = [
        (100, 50),  # front: nothing is at most it in both
        (80, 60),  # front: the smallest image
        (120, 40),  # front: the least RAM (and smaller than its twin below)
        (90, 70),  # dominated by (80, 60)
        (100, 50),  # equal to the first: both stay on the front
        None,  # not measured
        (130, 40),  # dominated by (120, 40): same RAM, larger image
        (80, 75),  # dominated by (80, 60): same image, more RAM
    ]
    assert pareto_front(points) == [True, True, True, False, True, False, False, False]
    assert pareto_front([]) == []


def test_vmap_failure_on_nommu_contig_is_explained(erofs16: Path) -> None:
    """The vmap strategy without an MMU: the model, like the kernel, mounts no
    compressed EROFS (vmap() of the global buffer is BUG() on nommu); the
    explanation says it was the mount and names the strategies that need no vmap."""
    res = replay(erofs16, _workload(erofs16), Combination("nommu-contig", "vmap"), 1 << 20)
    why = res.explanation
    assert why is not None and why.stage == "mount" and why.file is None
    (knob,) = why.knobs
    assert knob.option == "--decompress"
    assert "contig-folio" in knob.why and "percpu-buffer" in knob.why
    doc = res.to_json(find_min=False)["explanation"]
    assert doc["stage"] == "mount" and doc["knobs"] == [knob.to_json()]
    assert "at mount" in doc["text"] and "BUG()" in doc["text"]
    # the same image with an MMU: vmap stitches the scattered frames, nothing fails
    assert replay(erofs16, _workload(erofs16), Combination("mmu", "vmap"), 1 << 20).ok


def test_contiguity_failure_in_a_fragmented_arena_is_explained(erofs16: Path) -> None:
    """Every other frame held: half the arena is free, but no block of two
    frames is, so contig-folio's folio for a 16 KiB pcluster cannot be had."""
    memory = MemoryConfig(mm="nommu-contig", decompress="contig-folio", arena_bytes=1 << 20)
    with open_image(erofs16, memory) as fs:
        arena = fs.arena
        held = [arena.alloc_pages(0, Owner.OTHER) for _ in range(arena.nr_pages)]
        for page in held[::2]:
            arena.free_pages(page)
        try:
            ino = resolve(fs, "big05.txt")
            with pytest.raises(OutOfMemoryError) as info:
                fs.read(ino, 0, 128 << 10)
            why = explain_read(fs.capabilities, "nommu-contig", "contig-folio", "/big05.txt", 0,
                               info.value)  # fmt: skip
        finally:
            for page in held[1::2]:
                arena.free_pages(page)
    a = why.allocation
    assert a is not None and a.shortage == "fragmented" and a.contiguous and a.order >= 2
    assert a.frames_free >= a.frames and a.largest_free_order == 0
    assert a.frames_free == a.arena_frames // 2
    assert why.extent is not None and why.extent.plen > PAGE_SIZE
    assert "--decompress" in [k.option for k in why.knobs]
    text = why.text()
    assert f"one block of order {a.order}" in text and "largest free block order 0 = 4K" in text


def test_extent_failure_fields_in_json(tmp_path: Path) -> None:
    """A MiB of zeros decoded at once on a 512 KiB board: the JSON names
    the extent, the order-8 folio, the arena and the --max-extent-bytes knob."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "zeros").write_bytes(bytes(1 << 20))
    image = tmp_path / "z.img"
    mkimage("erofs", "-q", "-z", "lz4hc", "-C", "65536", str(image), str(src))
    r = nommufs("budget", str(image), "--arena", "512K", "--mm", "nommu-contig",
                "--decompress", "contig-folio", "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    (res,) = json.loads(r.stdout)["results"]
    why = res["explanation"]
    assert (why["file"], why["stage"], why["offset"]) == ("/zeros", "read", 0)
    assert why["extent"]["la"] == 0 and why["extent"]["llen"] == 1 << 20
    assert why["extent"]["plen"] <= 65536
    assert why["needed"]["order"] == 8 and why["needed"]["contiguous"]
    assert why["needed"]["bytes"] == 1 << 20
    assert why["arena"]["frames"] == 128 and why["arena"]["largest_free_bytes"] < 1 << 20
    assert why["shortage"] == "no-memory"
    assert [k["option"] for k in why["knobs"]] == ["--max-extent-bytes"]


def _failing_tree(root: Path) -> Path:
    """A MiB of zeros (one extent of a MiB by default) and a few text files."""
    root.mkdir()
    (root / "zeros").write_bytes(bytes(1 << 20))
    rng = random.Random(7)
    (root / "etc").mkdir()
    for i in range(4):
        (root / "etc" / f"t{i}.txt").write_bytes(_content(rng, 20_000 + 3000 * i, "text"))
    return root


@pytest.mark.kernel
def test_suggestion_fits_where_the_default_build_fails(tmp_path: Path, mounter: Mounter) -> None:
    src = _failing_tree(tmp_path / "src")
    default = tmp_path / "default.img"
    mkimage("erofs", "-q", "-z", "lz4hc", str(default), str(src))
    report = budget(default, arena_bytes=SMALL_BOARD, mms=("nommu-contig",))
    assert not any(r.ok for r in report.results)  # every strategy fails on this board
    board = Board(SMALL_BOARD, None, "nommu-contig")
    grid = Grid(algorithms=("lz4hc",), pclusters=(4096, 16384), extents=(65536, UNBOUNDED),
                tails=("plain",), formats=("erofs",))  # fmt: skip
    first = suggest(src, board, grid=grid, jobs=2)
    again = suggest(src, board, grid=grid, jobs=2)
    assert [r.to_json(board) for r in first.rows] == [r.to_json(board) for r in again.rows]
    rec = first.recommended
    assert rec is not None and rec.fits(board) and rec.front
    best, ram = rec.best, rec.ram
    assert best is not None and best.strategy is not None and ram is not None
    assert "--max-extent-bytes 65536" in rec.variant.command()
    if first.fails_above_min:  # the pick's sizes above its minimum, checked
        assert first.fits_from_bytes is None or first.fits_from_bytes > ram
        assert all(n > ram for n in first.fails_above_min)
    # build it as the table says, from the command line, and replay it
    built = tmp_path / "suggested.img"
    argv = rec.variant.argv(str(built), str(src))
    assert argv[0] == "erofs"
    mkimage(argv[0], "-q", *argv[1:])
    assert built.stat().st_size == rec.image_bytes
    work = _workload(built)
    combo = Combination("nommu-contig", best.strategy)
    assert replay(built, work, combo, ram).ok
    assert not replay(built, work, combo, ram - PAGE_SIZE).ok  # the minimum, to the page
    # and the kernel reads it as the source
    assert diff_trees(snapshot(src), snapshot(mounter.kernel_erofs(built))) == []


def test_suggest_cli_json_and_table(tmp_path: Path) -> None:
    """The CLI on an image (extracted first): JSON carries every row, the
    table the recommendation's whole command line; bad grid flags are one line."""
    src = _failing_tree(tmp_path / "src")
    image = tmp_path / "in.img"
    mkimage("erofs", "-q", "-z", "lz4hc", str(image), str(src))
    narrow = ("--try-z", "lz4hc", "--try-C", "4096", "--try-max-extent", "65536,unbounded",
              "--try-tail", "plain")  # fmt: skip
    r = nommufs("budget", "--suggest", str(image), "--arena", "512K", "--flash", "1M",
                *narrow, "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["flash_bytes"] == 1 << 20 and doc["mm"] == "nommu-contig"
    commands = [row["command"] for row in doc["rows"]]
    assert len(commands) == 2 + 1  # two EROFS variants and plain cramfs (no programs)
    assert doc["recommended"]["command"] in commands and doc["recommended"]["fits"]
    t = nommufs("budget", "--suggest", str(image), "--arena", "512K", *narrow)
    assert t.returncode == 0, t.stderr
    assert f"recommended: fits in 512K RAM ({doc['mm']}): {doc['recommended']['command']}" in (
        t.stdout.decode())
    bad = nommufs("budget", "--suggest", str(src), "--try-z", "lz5")
    assert bad.returncode != 0 and b"--try-z lz5" in bad.stderr
    assert len(bad.stderr.decode().strip().splitlines()) == 1
