"""The public Python API (``import nommufs``): build, read by path, mount as a
context manager (foreground and daemon), and bad input as one clear error."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

import nommufs
from fusefs import mounttab
from tests.conftest import missing_fuse, require
from tests.trees import build_small_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_small_tree(tmp_path_factory.mktemp("api") / "tree")


@pytest.fixture(scope="module", params=["erofs", "cramfs"])
def image(
    request: pytest.FixtureRequest, tree: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("img") / f"t.{request.param}"
    options = {"z": "lz4hc", "C": 16384, "T": 0} if request.param == "erofs" else {}
    return nommufs.build_image(tree, out, format=request.param, **options)


def test_only_the_public_names_are_exported() -> None:
    assert set(nommufs.__all__) == {
        "Attr", "BuildError", "CorruptImageError", "FsError", "Image", "InvalidArgumentError",
        "Mount", "NotFoundError", "OutOfMemoryError", "UnsupportedFeatureError", "__version__",
        "build_image", "mount", "open_image",
    }  # fmt: skip
    assert all(hasattr(nommufs, n) for n in nommufs.__all__)


def test_read_by_path(tree: Path, image: Path) -> None:
    with nommufs.open_image(image, mm="nommu-contig", decompress="percpu-buffer",
                            arena="1536K") as img:  # fmt: skip
        assert img.format == image.suffix[1:]
        assert img.read_file("/sub/deeper/hello") == b"hello, world\n"
        assert img.read_file("link") == b"hello, world\n"  # symlinks followed
        assert img.readlink("link") == "sub/deeper/hello"
        want = (tree / "sub" / "random.bin").read_bytes()
        with img.open("sub/random.bin") as f:
            assert isinstance(f, io.BufferedReader) and f.readable() and not f.writable()
            assert f.read(10) == want[:10]
            f.seek(-7, os.SEEK_END)
            assert f.read() == want[-7:]
            f.seek(5000)
            assert f.read(3) == want[5000:5003] and f.tell() == 5003
        st = img.stat("sub/random.bin")
        assert st.is_reg and st.size == len(want) and stat.S_IMODE(st.mode) == 0o644
        assert img.stat("link", follow_symlinks=False).is_lnk
        walked = {d: (sorted(ds), sorted(fs)) for d, ds, fs in img.walk()}
        expect = {}
        for d, ds, fs in os.walk(tree):
            rel = "/" + os.path.relpath(d, tree).removeprefix(".").lstrip("/")
            expect[rel] = (sorted(ds), sorted(fs))
        assert walked == expect
        assert img.exists("file1.txt") and not img.exists("nope")
        assert img.memory_stats()["frames_total"] == 384


def test_read_errors(image: Path, tmp_path: Path) -> None:
    with nommufs.open_image(image) as img:
        with pytest.raises(nommufs.NotFoundError, match="nope"):
            img.read_file("nope")
        with pytest.raises(IsADirectoryError, match="sub: is a directory"):
            img.open("sub")
        with pytest.raises(NotADirectoryError):
            img.listdir("file1.txt")
    with pytest.raises(FileNotFoundError):
        nommufs.open_image(tmp_path / "missing.img")
    with pytest.raises(nommufs.InvalidArgumentError, match="bad size 'lots'"):
        nommufs.open_image(image, arena="lots")
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 8192)
    with pytest.raises(nommufs.UnsupportedFeatureError, match="not an EROFS or cramfs image"):
        nommufs.open_image(junk)


def test_build_errors_leave_nothing(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(nommufs.InvalidArgumentError, match="unrecognized arguments: --bogus"):
        nommufs.build_image(tree, out / "x.img", bogus=True)
    with pytest.raises(nommufs.BuildError, match="-z lz5: unknown compressor"):
        nommufs.build_image(tree, out / "x.img", z="lz5")
    with pytest.raises(nommufs.BuildError, match="missing-src"):
        nommufs.build_image(tmp_path / "missing-src", out / "x.img")
    assert os.listdir(out) == []


@pytest.mark.fuse
@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "daemon"])
def test_mount_context_manager(foreground: bool, image: Path, tmp_path: Path) -> None:
    require(missing_fuse())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with nommufs.mount(image, mnt, foreground=foreground, arena="2M") as m:
        assert (m.path / "sub" / "deeper" / "hello").read_bytes() == b"hello, world\n"
        assert m.alive and m.stats()["frames_total"] == 512
    assert mounttab.find_mount(mnt) is None and not m.alive
    assert m.stats()["mounted"] is False  # the daemon's last word, after unmounting


@pytest.mark.fuse
def test_mount_errors_are_clear_and_leave_nothing(image: Path, tmp_path: Path) -> None:
    require(missing_fuse())
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 8192)
    before = sorted(os.listdir(tmp_path))
    for foreground in (True, False):
        with pytest.raises(nommufs.FsError, match=f"^{tmp_path}/missing.img: No such file"):
            nommufs.mount(tmp_path / "missing.img", mnt, foreground=foreground)
        with pytest.raises(nommufs.FsError, match=r"no-dir: mount point does not exist$"):
            nommufs.mount(image, tmp_path / "no-dir", foreground=foreground)
        with pytest.raises(nommufs.FsError, match="not an EROFS or cramfs image"):
            nommufs.mount(junk, mnt, foreground=foreground)
        assert mounttab.find_mount(mnt) is None
        assert sorted(os.listdir(tmp_path)) == before
