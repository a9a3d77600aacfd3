"""The smallest arena in which a workload succeeds (``--find-min``), and a
sampled check of the sizes above it, over any ``probe(arena_bytes) -> ok``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from fusefs.vfs import PAGE_SIZE


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


