"""Fixtures for the mmshim tests: arenas that are checked and closed after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from mmshim import PAGE_SIZE, Arena

MakeArena = Callable[..., Arena]


@pytest.fixture
def make_arena() -> Iterator[MakeArena]:
    """``make_arena(nr_frames, mode, **kw)``; at teardown each arena must pass
    its invariant check and close without leaks (unless the test closed it)."""
    arenas: list[Arena] = []

    def make(nr_frames: int = 64, mode: str = "mmu", **kw: str) -> Arena:
        arena = Arena(nr_frames * PAGE_SIZE, mode, **kw)
        arenas.append(arena)
        return arena

    yield make
    for arena in arenas:
        if not arena.closed:
            arena.check_invariants()
            arena.close()
