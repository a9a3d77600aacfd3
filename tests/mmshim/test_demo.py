"""The demo's report and the benchmark's measuring loop give the seed's answers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mmshim import PAGE_SIZE
from mmshim.bench import (
    bench_micro,
    bench_mode,
    bench_pagecache,
    format_cache_results,
    format_micro_results,
    format_results,
)
from mmshim.demo import format_report, scattered_pcluster_report

ROOT = Path(__file__).resolve().parents[2]


def test_scattered_pcluster_report() -> None:
    rows = {(r.mode, r.fragmented): r for r in scattered_pcluster_report()}
    mmu = rows["mmu", False]
    assert mmu.ok and mmu.how == "remap" and mmu.bytes_copied == 0
    assert mmu.data_ok and mmu.shared_write_kept and mmu.lost_writes == 0
    assert (mmu.peak_frames, mmu.extra_frames) == (32, 0)

    contig = rows["nommu-contig", False]
    assert not contig.ok and "not contiguous" in contig.how and contig.extra_frames == 0

    bounce = rows["nommu-bounce", False]
    assert bounce.ok and bounce.how == "bounce"
    assert bounce.bytes_copied == 2 * 16 * PAGE_SIZE and bounce.lost_writes == 1
    assert bounce.data_ok and not bounce.shared_write_kept
    assert (bounce.peak_frames, bounce.extra_frames) == (48, 16)

    frag = rows["nommu-bounce", True]
    assert not frag.ok and "bounce buffer" in frag.how and frag.bytes_copied == 0

    table = format_report(list(rows.values()))
    assert "kept (shared)" in table and "lost (not shared)" in table


def test_demo_module_prints_the_table() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mmshim.demo"], capture_output=True, text=True, check=True
    ).stdout
    assert "nommu-bounce  fragmented" in out and "128 KiB" in out


def test_bench_loop_counts_rounds_and_failures() -> None:
    results = [bench_mode(m, seconds=0.01) for m in ("mmu", "nommu-contig", "nommu-bounce")]
    mmu, contig, bounce = results
    assert mmu.rounds >= 50 and mmu.failures == 0 and mmu.bounce_bytes == 0
    assert contig.failures == contig.rounds
    assert bounce.failures == 0 and bounce.bounce_bytes == bounce.rounds * 32 * PAGE_SIZE
    assert "fails every time" in format_results(results, 16)


def test_bench_script_runs_from_the_repo_root() -> None:
    out = subprocess.run(
        ["scripts/bench_mmshim", "--seconds", "0.01"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.count("scattered") == 3


def test_pagecache_bench_misses_evict_and_hits_do_not() -> None:
    misses = bench_pagecache(seconds=0.01, arena_frames=64, file_pages=256)
    hits = bench_pagecache(seconds=0.01, arena_frames=64, hits=True)
    assert misses.reads >= 20 and misses.pages == 32 * misses.reads
    assert misses.evictions == misses.pages  # the arena was full before the clock started
    assert hits.evictions == 0 and hits.pages == 32 * hits.reads
    batched = bench_pagecache(seconds=0.01, arena_frames=64, file_pages=256, batched=True)
    assert batched.evictions == batched.pages > 0 and batched.what == "misses, batched"
    assert "misses, batched" in format_cache_results([misses, hits, batched], 32)


def test_micro_bench_times_every_call() -> None:
    results = bench_micro(0.001)
    assert len(results) == 9 and all(us > 0 for _, us in results)
    assert "alloc_pages_bulk+free_pages_bulk of 16" in format_micro_results(results)
