"""``nommufs mount`` serves a cramfs image exactly as ``nommufs extract`` writes it out."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusefs.commands.extract import extract
from fusefs.vfs import open_image
from tests.conftest import Mounter
from tests.cramfs.helpers import CRAMFS_FIELDS, expected, mkimage
from tests.trees import diff_trees, snapshot


@pytest.mark.fuse
@pytest.mark.parametrize(
    "options", [(), ("-X", "-X", "-N", "big", "-p", "-z")], ids=["plain", "xip-big"]
)
def test_fuse_mount_serves_what_extract_writes(
    options: tuple[str, ...], cram_tree: Path, tmp_path: Path, mounter: Mounter
) -> None:
    image = mkimage(cram_tree, tmp_path / "img.cramfs", *options)
    with open_image(image) as fs:
        extract(fs, tmp_path / "extracted")
    mounted = mounter.fuse(image)
    via_fuse = snapshot(mounted.path, xattrs=False)
    via_extract = snapshot(tmp_path / "extracted", xattrs=False)
    assert diff_trees(via_extract, via_fuse, fields=CRAMFS_FIELDS, ignore_paths=["."]) == []
    assert diff_trees(expected(cram_tree), via_fuse, fields=CRAMFS_FIELDS, ignore_paths=["."]) == []
    assert via_fuse["."].mode & 0o555 == 0o555
