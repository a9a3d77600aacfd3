"""Session-wide cramfs source trees (built once; tests must not modify them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cramfs.helpers import build_tree


@pytest.fixture(scope="session")
def cram_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cramfs test tree, with names over 252 bytes."""
    return build_tree(tmp_path_factory.mktemp("cram") / "tree")


@pytest.fixture(scope="session")
def cram_tree_short(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cramfs test tree without names over 252 bytes (for util-linux mkfs.cramfs)."""
    return build_tree(tmp_path_factory.mktemp("cram-short") / "tree", long_names=False)
