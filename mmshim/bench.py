"""How fast each mode maps a scattered pcluster: ``scripts/bench_mmshim``.

Each round vmaps 16 scattered pages (every other frame), fills the whole
view (what a decompressor does), and unmaps it.  ``--pagecache`` times the
page cache's read path instead: 128 KiB "reads" (32 pages each) that find or
create, fill, mark uptodate, unlock and release every page, in an arena
smaller than the file so that every miss also evicts.  ``--micro`` times
single calls of the read path's hot spots (see :func:`bench_micro`).  A
benchmark, not a test: the numbers depend on the machine; only their ratio
means much.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

from mmshim._arena import MM_MODES, Arena
from mmshim._errors import VmapError
from mmshim._page import PAGE_SIZE, Owner, Page
from mmshim._pagecache import PageCache


@dataclass(frozen=True, slots=True)
class BenchResult:
    mode: str
    contiguous: bool
    rounds: int
    seconds: float
    failures: int
    bounce_bytes: int

    @property
    def per_second(self) -> float:
        return self.rounds / self.seconds if self.seconds else 0.0


def bench_mode(
    mode: str, *, nr_pages: int = 16, seconds: float = 1.0, contiguous: bool = False
) -> BenchResult:
    """vmap + fill + vunmap of one ``nr_pages`` cluster for about ``seconds``."""
    arena = Arena(8 * nr_pages * PAGE_SIZE, mode)
    try:
        pages = [arena.alloc_pages(0) for _ in range(2 * nr_pages)]
        cluster = pages[:nr_pages] if contiguous else pages[::2]
        payload = bytes(range(256)) * (nr_pages * PAGE_SIZE // 256)
        rounds = failures = 0
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(50):
                try:
                    with arena.vmap(cluster) as m:
                        m.view[:] = payload
                except VmapError:
                    failures += 1
                rounds += 1
            now = time.perf_counter()
            if now >= deadline:
                break
        bounce = arena.stats.bounce_bytes
        for p in pages:
            arena.free_pages(p)
        return BenchResult(mode, contiguous, rounds, now - start, failures, bounce)
    finally:
        arena.close()


@dataclass(frozen=True, slots=True)
class CacheBenchResult:
    what: str
    reads: int
    pages: int
    seconds: float
    evictions: int

    @property
    def pages_per_second(self) -> float:
        return self.pages / self.seconds if self.seconds else 0.0

    @property
    def mib_per_second(self) -> float:
        return self.pages_per_second * PAGE_SIZE / (1 << 20)


def bench_pagecache(
    *,
    seconds: float = 1.0,
    arena_frames: int = 1024,
    file_pages: int = 4096,
    read_pages: int = 32,
    hits: bool = False,
    batched: bool = False,
) -> CacheBenchResult:
    """Sequential ``read_pages``-page reads of a ``file_pages``-page file for about ``seconds``.

    Each page is found or created; a created one is filled, marked uptodate
    and unlocked (a filesystem's readpage); every page is then read through
    ``page_view`` and released.  With ``hits`` the file fits in the arena and
    is read in once first, so the rounds time the lookup path alone; without
    it the file is four times the arena and every page is a miss that evicts.
    The arena is filled before the clock starts.  ``batched`` takes each
    read's pages with one ``get_or_create_range`` and drops them with one
    ``release_pages`` instead of a call per page.
    """
    if hits:
        file_pages = arena_frames // 2
    arena = Arena(arena_frames * PAGE_SIZE, "mmu")
    cache = PageCache(arena)
    payload = bytes(range(256)) * (PAGE_SIZE // 256)
    index = reads = pages = 0

    def fill_and_read(page: Page, created: bool) -> None:
        if created:
            arena.page_view(page)[:] = payload
            page.set_uptodate()
            page.unlock()
        elif not page.is_uptodate:
            page.wait_unlocked()
        view = arena.page_view(page)
        _ = view[0]
        view.release()

    def one_read() -> None:
        nonlocal index
        if batched:
            got = cache.get_or_create_range("bench", index, read_pages)
            for page, created in got:
                fill_and_read(page, created)
            cache.release_pages(page for page, _ in got)
        else:
            for i in range(index, index + read_pages):
                page, created = cache.get_or_create("bench", i)
                fill_and_read(page, created)
                cache.release(page)
        index = (index + read_pages) % file_pages

    try:
        # fill the arena first: the misses time eviction from the first round
        for _ in range(min(file_pages, arena_frames) // read_pages):
            one_read()
        evictions0 = cache.counters.evictions
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            for _ in range(20):
                one_read()
                reads += 1
                pages += read_pages
            now = time.perf_counter()
            if now >= deadline:
                break
        evictions = cache.counters.evictions - evictions0
        what = ("hits" if hits else "misses") + (", batched" if batched else "")
        return CacheBenchResult(what, reads, pages, now - start, evictions)
    finally:
        cache.close()
        arena.close()


def _cpu_us_per_call(fn: Callable[[], object], seconds: float) -> float:
    """Thread CPU time of one call in microseconds: the best of batches of 20.

    CPU time rather than wall time, and the best batch rather than the mean,
    so that other work on the machine inflates the number as little as it can.
    """
    fn()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        start = time.thread_time()
        for _ in range(20):
            fn()
        best = min(best, (time.thread_time() - start) / 20)
        if time.perf_counter() >= deadline:
            return best * 1e6


def bench_micro(seconds: float = 0.2) -> list[tuple[str, float]]:
    """Microseconds per call of the EROFS read path's mmshim calls, each for about ``seconds``.

    * ``get_or_create_range`` of 16 pages + ``end_read`` + ``release_pages``,
      all missing in a full, fragmented arena (every page evicts one), and
      all cached;
    * ``find_range`` of 16 cached pages + ``release_pages``; ``page_view``;
    * ``alloc_pages_bulk`` + ``free_pages_bulk`` of 1, 4 and 16 pages, in a
      fragmented arena (every other frame taken);
    * ``vm_map_ram`` + ``vm_unmap_ram`` of 4 and 16 scattered pages (mmu).
    """
    results: list[tuple[str, float]] = []

    arena = Arena(512 * PAGE_SIZE, "mmu")
    cache = PageCache(arena)
    kept = arena.alloc_pages_bulk(256)
    arena.free_pages_bulk(kept[::2])
    index = 0

    def read16(first: int) -> None:
        got = cache.get_or_create_range("bench", first, 16)
        arena.end_read([p for p, created in got if created], True)
        cache.release_pages([p for p, _ in got])

    def read16_misses() -> None:
        nonlocal index
        read16(index)
        index = (index + 16) % 4096

    for _ in range(64):  # fill the arena: every miss evicts from the first call
        read16_misses()
    us = _cpu_us_per_call(read16_misses, seconds)
    results.append(("16 missing pages: range+end_read+release", us))
    read16(0)
    us = _cpu_us_per_call(lambda: read16(0), seconds)
    results.append(("16 cached pages: range+end_read+release", us))

    def find16() -> None:
        cache.release_pages([p for p in cache.find_range("bench", 0, 16) if p is not None])

    results.append(("find_range of 16 cached pages+release", _cpu_us_per_call(find16, seconds)))
    page = cache.find_or_create("bench", 0)
    results.append(("page_view", _cpu_us_per_call(lambda: arena.page_view(page), seconds)))
    cache.release(page)
    cache.close()
    arena.free_pages_bulk(kept[1::2])
    arena.close()

    arena = Arena(1024 * PAGE_SIZE, "mmu")
    kept = arena.alloc_pages_bulk(1024)
    arena.free_pages_bulk(kept[::2])
    for nr in (1, 4, 16):

        def bulk(nr: int = nr) -> None:
            arena.free_pages_bulk(arena.alloc_pages_bulk(nr, Owner.DECOMPRESS))

        results.append(
            (f"alloc_pages_bulk+free_pages_bulk of {nr}", _cpu_us_per_call(bulk, seconds))
        )
    arena.free_pages_bulk(kept[1::2])
    arena.close()

    arena = Arena(256 * PAGE_SIZE, "mmu")
    pages = arena.alloc_pages_bulk(64)
    for nr in (4, 16):

        def remap(cluster: list[Page] = pages[: 2 * nr : 2]) -> None:
            arena.vm_unmap_ram(arena.vm_map_ram(cluster))

        results.append(
            (f"vm_map_ram+vm_unmap_ram of {nr} scattered", _cpu_us_per_call(remap, seconds))
        )
    arena.free_pages_bulk(pages)
    arena.close()
    return results


def format_micro_results(results: list[tuple[str, float]]) -> str:
    lines = ["mmshim calls of the read path (thread CPU time per call, best batch)", ""]
    lines += [f"{what:<44} {us:>9.2f} us" for what, us in results]
    return "\n".join(lines)


def format_cache_results(results: list[CacheBenchResult], read_pages: int) -> str:
    lines = [f"page cache: {read_pages}-page reads (find or create + fill + release)", ""]
    head = f"{'lookups':<16} {'reads/s':>10} {'pages/s':>11} {'MiB/s':>9} {'evicted/read':>13}"
    lines.append(head)
    for r in results:
        per_read = r.evictions / r.reads if r.reads else 0.0
        lines.append(
            f"{r.what:<16} {r.reads / r.seconds:>10,.0f} {r.pages_per_second:>11,.0f} "
            f"{r.mib_per_second:>9,.0f} {per_read:>13.1f}"
        )
    return "\n".join(lines)


def format_results(results: list[BenchResult], nr_pages: int) -> str:
    lines = [f"vmap + fill + vunmap of a {nr_pages}-page cluster", ""]
    lines.append(f"{'mode':<14} {'pages':<11} {'per second':>11} {'MiB/s filled':>13}  result")
    for r in results:
        mib = r.per_second * nr_pages * PAGE_SIZE / (1 << 20)
        if r.failures == r.rounds:
            result, mib = "fails every time (ENOMEM)", 0.0
        elif r.bounce_bytes:
            per = r.bounce_bytes // max(1, r.rounds - r.failures) // 1024
            result = f"bounced: {per} KiB copied per round"
        else:
            result = "no copy"
        kind = "contiguous" if r.contiguous else "scattered"
        lines.append(f"{r.mode:<14} {kind:<11} {r.per_second:>11,.0f} {mib:>13,.0f}  {result}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_mmshim", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="per mode (default 1)")
    parser.add_argument("--pages", type=int, default=16, help="cluster size (default 16)")
    parser.add_argument(
        "--contiguous", action="store_true", help="also time physically contiguous clusters"
    )
    parser.add_argument(
        "--pagecache",
        action="store_true",
        help="time the page cache's read path (32-page reads) instead of vmap",
    )
    parser.add_argument(
        "--micro",
        action="store_true",
        help="time single calls of the read path (page cache, bulk alloc, vm_map_ram)",
    )
    args = parser.parse_args(argv)
    if args.micro:
        print(format_micro_results(bench_micro(args.seconds / 5)))
        return
    if args.pagecache:
        cache_results = [
            bench_pagecache(seconds=args.seconds, hits=hits, batched=batched)
            for batched in (False, True)
            for hits in (False, True)
        ]
        print(format_cache_results(cache_results, 32))
        return
    results = [bench_mode(m, nr_pages=args.pages, seconds=args.seconds) for m in MM_MODES]
    if args.contiguous:
        results += [
            bench_mode(m, nr_pages=args.pages, seconds=args.seconds, contiguous=True)
            for m in MM_MODES
        ]
    print(format_results(results, args.pages))


if __name__ == "__main__":
    main()
