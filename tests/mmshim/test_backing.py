"""The arena's memory is the host's from the start: allocated when the arena
is made (as a board's RAM exists before anything runs), and an arena the host
cannot hold is refused then, naming its size, with nothing left open."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mmshim import PAGE_SIZE, AllocError, Arena


def _memfds(name: str) -> list[Path]:
    """This process's open memfds called ``name``."""
    out = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # the directory's own fd, closed meanwhile
            continue
        if target.startswith(f"/memfd:{name}"):
            out.append(fd)
    return out


def test_every_frame_is_allocated_when_the_arena_is_made() -> None:
    with Arena(256 * PAGE_SIZE, name="backing-test") as arena:
        fds = _memfds("backing-test")  # the arena's, and the mmap's duplicate
        assert fds
        st = os.stat(fds[0])
        assert st.st_size == arena.size
        # st_blocks counts 512-byte units actually allocated to the memfd
        assert st.st_blocks * 512 >= arena.size
        assert arena.stats.frames_used == 0  # allocated on the host, free in the model
    assert _memfds("backing-test") == []


def test_an_arena_larger_than_the_host_is_refused_at_once() -> None:
    huge = 1 << 50  # a PiB: no test machine has it
    with pytest.raises(AllocError, match=f"arena of {huge} bytes is more than the host's"):
        Arena(huge, name="backing-huge")
    assert _memfds("backing-huge") == []
