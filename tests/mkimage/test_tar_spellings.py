"""mkfs.erofs's tar spellings: --tar and --tar=f, SRC - for a tar on stdin
(plain or compressed), and a clear refusal of index-only --tar=i."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.trees import build_small_tree


def _mkimage(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mkimage", "erofs", "-q", "-T", "7", "-U",
         "01234567-89ab-cdef-0123-456789abcdef", *args],
        input=stdin, capture_output=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tars(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("tar")
    tree = build_small_tree(base / "tree")
    plain, gz = base / "t.tar", base / "t.tar.gz"
    for path, mode in ((plain, "w"), (gz, "w:gz")):
        with tarfile.open(path, mode, format=tarfile.PAX_FORMAT) as t:  # type: ignore[call-overload]
            t.add(tree, arcname=".")
    return plain, gz


def test_tar_from_stdin_is_the_same_image(tars: tuple[Path, Path], tmp_path: Path) -> None:
    plain, gz = tars
    want = tmp_path / "file.img"
    r = _mkimage("--tar", "-z", "lz4", str(want), str(plain))
    assert r.returncode == 0, r.stderr
    for spelling, source in (("--tar=f", plain), ("--tar", gz), ("--tar=f", gz)):
        got = tmp_path / "stdin.img"
        r = _mkimage(spelling, "-z", "lz4", str(got), "-", stdin=source.read_bytes())
        assert r.returncode == 0, (spelling, source, r.stderr)
        assert got.read_bytes() == want.read_bytes(), (spelling, source)


@pytest.mark.parametrize(
    ("args", "stdin", "why"),
    [
        (["--tar=i"], None, "--tar=i/--tar=headerball: index-only tar images are not supported"),
        (["--tar=headerball"], None, "index-only tar images are not supported"),
        ([], b"", "SRC -: standard input is read as a tar file only (--tar)"),
        (["--tar"], b"not a tar at all" * 100, "standard input: cannot open tar file"),
    ],
)
def test_bad_tar_input(args: list[str], stdin: bytes | None, why: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    r = _mkimage(*args, str(out / "x.img"), "-", stdin=stdin)
    err = r.stderr.decode().strip()
    assert r.returncode == 1 and len(err.splitlines()) == 1, err
    assert err.startswith("mkimage erofs: ") and why in err, err
    assert os.listdir(out) == []
