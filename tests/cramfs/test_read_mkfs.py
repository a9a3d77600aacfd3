"""Images from util-linux mkfs.cramfs, one per option, read back like their source."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fusefs.vfs import open_image
from tests.cramfs.helpers import compare, mkfs_cramfs

pytestmark = pytest.mark.skipif(shutil.which("mkfs.cramfs") is None, reason="no mkfs.cramfs")

OPTIONS = [
    ("default", ()),
    ("b4096", ("-b", "4096")),
    ("holes", ("-b", "4096", "-z")),
    ("edition", ("-b", "4096", "-e", "4711")),
    ("name", ("-b", "4096", "-n", "nommufs-label")),
    ("pad", ("-b", "4096", "-p")),
    ("little", ("-b", "4096", "-N", "little")),
    ("big", ("-b", "4096", "-N", "big")),
    ("big-pad-holes", ("-b", "4096", "-N", "big", "-p", "-z")),
]


@pytest.mark.parametrize(("label", "options"), OPTIONS, ids=[o[0] for o in OPTIONS])
def test_mkfs_cramfs_image_reads_like_its_source(
    label: str, options: tuple[str, ...], cram_tree_short: Path, tmp_path: Path
) -> None:
    image = mkfs_cramfs(cram_tree_short, tmp_path / f"{label}.img", *options)
    assert compare(cram_tree_short, image) == []
    with open_image(image) as fs:
        d = fs.describe()
        assert d["format"] == "cramfs"
        assert list(fs.fsck_extra()) == []
        if "-e" in options:
            assert d["edition"] == 4711
        if "-n" in options:
            assert d["name"] == "nommufs-label"
        assert d["superblock_offset"] == (512 if "-p" in options else 0)
        if "big" in options:
            assert d["byte_order"] == "big"
        if "-z" in options:
            assert "holes" in d["features"]


def test_holes_are_read_as_zeros_without_frames_for_data(
    cram_tree_short: Path, tmp_path: Path
) -> None:
    image = mkfs_cramfs(cram_tree_short, tmp_path / "z.img", "-b", "4096", "-z")
    with open_image(image) as fs:
        from fusefs.vfs import resolve

        ino = resolve(fs, "files/sparse-start")
        kinds = [b["kind"] for b in fs.describe_inode(ino)["blocks"]]
        assert kinds.count("hole") == 256  # 1 MiB of hole before the tail
        assert fs.read(ino, 4096 * 10, 4096) == bytes(4096)
