"""cramfs images made by mkfs.cramfs, read through nommufs (FUSE mount and
``extract``), must show what ``fsck.cramfs --extract`` writes out (the kernel
here has no cramfs; util-linux is the oracle)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Mounter, nommufs
from tests.trees import IS_ROOT, build_small_tree, diff_trees, snapshot

# cramfs stores no times and no link counts; fsck.cramfs sets neither
FIELDS = ("mode", "uid", "gid", "size", "rdev", "target", "data_sha", "xattrs")


@pytest.fixture(scope="module")
def cramfs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image, what fsck.cramfs --extract makes of it)."""
    for tool in ("mkfs.cramfs", "fsck.cramfs"):
        if shutil.which(tool) is None:
            pytest.skip(f"no {tool} (package util-linux-extra)")
    base = tmp_path_factory.mktemp("cramfs")
    tree = build_small_tree(base / "tree")
    (tree / "big.txt").write_bytes(b"cramfs page-sized blocks " * 20000)
    os.mkfifo(tree / "fifo")
    os.link(tree / "file5.txt", tree / "hard")
    for mode in (0o4755, 0o600, 0o1777):
        p = tree / f"mode-{mode:o}"
        p.write_bytes(b"m")
        os.chmod(p, mode)
    if IS_ROOT:
        os.mknod(tree / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.mknod(tree / "sda", stat.S_IFBLK | 0o660, os.makedev(8, 0))
        os.chown(tree / "file1.txt", 1234, 56)
    image = base / "img.cramfs"
    subprocess.run(["mkfs.cramfs", str(tree), str(image)], check=True, capture_output=True)
    oracle = base / "oracle"
    subprocess.run(
        ["fsck.cramfs", f"--extract={oracle}", str(image)], check=True, capture_output=True
    )
    return image, oracle


@pytest.mark.fuse
@pytest.mark.parametrize("mm", [["--mm", "mmu"], ["--mm", "nommu-bounce", "--arena", "1536K"]])
def test_fuse_matches_fsck_cramfs(
    cramfs: tuple[Path, Path], mounter: Mounter, mm: list[str]
) -> None:
    image, oracle = cramfs
    m = mounter.fuse(image, *mm)
    problems = diff_trees(snapshot(oracle), snapshot(m.path), fields=FIELDS)
    assert not problems, problems
    line = [ln for ln in Path("/proc/mounts").read_text().splitlines() if str(m.path) in ln]
    assert line and line[0].split()[2] == "fuse.cramfs"
    assert m.alive and "unexpected" not in m.stderr()


def test_extract_matches_fsck_cramfs(cramfs: tuple[Path, Path], tmp_path: Path) -> None:
    image, oracle = cramfs
    r = nommufs("extract", str(image), str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    problems = diff_trees(snapshot(oracle), snapshot(tmp_path / "out"), fields=FIELDS)
    assert not problems, problems
    r = nommufs("fsck", str(image))
    assert r.returncode == 0, r.stdout + r.stderr
