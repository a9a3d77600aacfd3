"""Fixtures for the mkimage tests: the rich tree's snapshot and an in-process builder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from mkimage.cli import main as mkimage_main
from tests.trees import Entry, snapshot

Build = Callable[..., Path]


@pytest.fixture(scope="session")
def rich_snapshot(rich_tree: Path) -> dict[str, Entry]:
    """What every image of the rich tree must show (taken once)."""
    return snapshot(rich_tree)


@pytest.fixture
def build(tmp_path: Path) -> Build:
    """``build(src, *options, name=...)``: ``mkimage erofs -q OPTIONS OUT SRC``
    in-process; returns OUT, failing the test with mkimage's message."""
    counter = [0]

    def run(src: Path, *options: str, name: str | None = None) -> Path:
        counter[0] += 1
        out = tmp_path / (name or f"img-{counter[0]}.erofs")
        rc = mkimage_main(["erofs", "-q", *options, str(out), str(src)])
        assert rc == 0, f"mkimage erofs {' '.join(options)} failed with {rc}"
        return out

    return run
