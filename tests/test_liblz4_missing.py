"""Without the system's liblz4 only lz4 itself stops working, with one line.

The library is really absent for the command: it runs in a private mount
namespace where liblz4's file is covered by /dev/null (``unshare -m`` and a
bind mount; needs root), so dlopen fails as on a machine without the package.
The images are built before, outside that namespace.
"""

from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import mkfs_erofs
from tests.trees import build_small_tree

MISSING = "liblz4 is not installed (Debian package liblz4-1)"


def _liblz4_file() -> str | None:
    for d in ("/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"):
        p = os.path.join(d, "liblz4.so.1")
        if os.path.exists(p):
            return os.path.realpath(p)
    return None


@pytest.fixture(scope="module")
def without_liblz4() -> list[str]:
    """A command prefix that runs its command with liblz4 hidden."""
    lib = _liblz4_file()
    if os.geteuid() != 0 or shutil.which("unshare") is None or lib is None:
        pytest.skip("hiding liblz4 needs root, unshare(1) and liblz4.so.1 to hide")
    script = 'mount --make-rprivate / && mount --bind /dev/null "$0" && exec "$@"'
    prefix = ["unshare", "-m", "sh", "-c", script, lib]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import ctypes; ctypes.CDLL('liblz4.so.1')"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert probe.returncode != 0, "liblz4 still loads inside the namespace"
    assert ctypes.util.find_library("lz4")  # and outside it, it is there
    return prefix


def _run(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, sys.executable, "-m", "fusefs", *args],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def _one_line(r: subprocess.CompletedProcess[str], *, code: int = 1) -> str:
    err = r.stderr.strip()
    assert r.returncode == code, (r.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_everything_but_lz4_works(without_liblz4: list[str], tmp_path: Path) -> None:
    tree = build_small_tree(tmp_path / "tree")
    plain = mkfs_erofs(tmp_path / "plain.erofs", tree)
    r = _run(without_liblz4, "--version")
    assert r.returncode == 0 and r.stdout.startswith("nommufs "), r.stderr
    r = _run(without_liblz4, "-h")
    assert r.returncode == 0 and "mkimage" in r.stdout, r.stderr
    cram = tmp_path / "tree.cramfs"
    r = _run(without_liblz4, "mkimage", "cramfs", str(tree), str(cram))
    assert r.returncode == 0, r.stderr
    for image in (cram, plain):
        r = _run(without_liblz4, "cat", str(image), "file5.txt")
        assert r.returncode == 0, r.stderr
        assert r.stdout.encode() == (tree / "file5.txt").read_bytes()
    r = _run(without_liblz4, "mkimage", "erofs", "-z", "zstd", str(tmp_path / "z.erofs"), str(tree))
    assert r.returncode == 0, r.stderr


def test_lz4_says_so_in_one_line(without_liblz4: list[str], tmp_path: Path) -> None:
    tree = build_small_tree(tmp_path / "tree")
    image = mkfs_erofs(tmp_path / "lz4.erofs", tree, "-zlz4")
    err = _one_line(_run(without_liblz4, "cat", str(image), "file5.txt"))
    assert err.startswith("nommufs cat: ") and MISSING in err, err
    r = _run(without_liblz4, "fsck", str(image))
    assert r.returncode == 1 and f"/file5.txt: {MISSING}" in r.stdout + r.stderr, r
    out = tmp_path / "out" / "new.erofs"
    out.parent.mkdir()
    for alg in ("lz4", "lz4hc,9"):
        err = _one_line(_run(without_liblz4, "mkimage", "erofs", "-z", alg, str(out), str(tree)))
        assert err == f"nommufs mkimage: {MISSING}", err
    assert os.listdir(out.parent) == []
