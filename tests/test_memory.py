"""The format-neutral read plumbing (fusefs.memory)."""

from __future__ import annotations

from fusefs.memory import SequentialReads


def test_sequential_reads_follow_the_readahead_window() -> None:
    seq = SequentialReads(files=2, window=1 << 20)
    assert seq.note("a", 0, 4096)  # from 0
    assert seq.note("a", 4096, 8192)  # where the last ended
    # a worker thread took the request after next first: still inside the window
    assert seq.note("a", 8192 + 131072, 8192 + 2 * 131072)
    assert not seq.note("a", 8192, 8192 + 131072)  # then the one it overtook: backwards
    assert not seq.note("a", 5 << 20, 6 << 20)  # far ahead: a random read
    assert not seq.note("b", 4096, 8192)  # nothing known of b yet
    seq.note("c", 0, 10)
    seq.note("d", 0, 10)  # only two files are remembered: b is forgotten
    assert not seq.note("b", 8192, 12288)
