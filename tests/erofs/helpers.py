"""Helpers shared by the EROFS reader tests."""

from __future__ import annotations

import os
from pathlib import Path

from tests.trees import build_rich_tree


def rich_tree_for_mkfs(root: Path, **kw: bool | int) -> Path:
    """``build_rich_tree`` with its 255-byte name shortened to 254 bytes:
    mkfs.erofs 1.5 fails on any 255-byte name ("Could not format the
    device: [Error 2] No such file or directory", exit 1)."""
    build_rich_tree(root, **kw)  # type: ignore[arg-type]
    os.rename(root / "names" / ("x" * 255), root / "names" / ("x" * 254))
    return root
