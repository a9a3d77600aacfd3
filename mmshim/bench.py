"""How fast each mode maps a scattered pcluster: ``scripts/bench_mmshim``.

Each round vmaps 16 scattered pages (every other frame), fills the whole
view (what a decompressor does), and unmaps it.  A benchmark, not a test:
the numbers depend on the machine; only their ratio means much.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

from mmshim._arena import MM_MODES, Arena
from mmshim._errors import VmapError
from mmshim._page import PAGE_SIZE


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
    args = parser.parse_args(argv)
    results = [bench_mode(m, nr_pages=args.pages, seconds=args.seconds) for m in MM_MODES]
    if args.contiguous:
        results += [
            bench_mode(m, nr_pages=args.pages, seconds=args.seconds, contiguous=True)
            for m in MM_MODES
        ]
    print(format_results(results, args.pages))


if __name__ == "__main__":
    main()
