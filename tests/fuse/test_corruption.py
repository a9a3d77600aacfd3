"""Corrupted images under FUSE: broken files answer with clean errors, the
rest still reads, and the daemon keeps serving."""

from __future__ import annotations

import errno
import os
import random
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import FuseMount, Mounter, mkfs_erofs
from tests.trees import build_small_tree

pytestmark = pytest.mark.fuse

CLEAN_ERRNOS = {errno.EIO, errno.EUCLEAN, errno.EOPNOTSUPP, errno.ENOMEM, errno.ENOENT,
                errno.ENOTDIR, errno.EINVAL, errno.ENODATA, errno.ELOOP, errno.ENAMETOOLONG,
                errno.E2BIG, errno.ERANGE}


def _dump(image: Path, *args: str) -> str:
    return subprocess.run(
        ["dump.erofs", *args, str(image)], capture_output=True, text=True, check=True
    ).stdout


def inode_offset(image: Path, path: str) -> int:
    """Byte offset of the inode of ``path`` (from dump.erofs)."""
    meta = _field(r"inode metadata start block:\s+(\d+)", _dump(image, "-s"))
    nid = _field(r"NID:\s+(\d+)", _dump(image, f"--path={path}"))
    return meta * 4096 + nid * 32


def _field(pattern: str, text: str) -> int:
    m = re.search(pattern, text)
    assert m, text
    return int(m.group(1))


def first_extent(image: Path, path: str) -> int:
    """Physical byte offset of the first extent of ``path``."""
    out = _dump(image, "-e", f"--path={path}")
    m = re.search(r"^\s*0:.*\|\s*\d+\s*:\s*(\d+)\.\.", out, re.M)
    assert m, out
    return int(m.group(1))


def patched(image: Path, out: Path, at: int, data: bytes) -> Path:
    raw = bytearray(image.read_bytes())
    raw[at : at + len(data)] = data
    out.write_bytes(bytes(raw))
    return out


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_small_tree(tmp_path_factory.mktemp("src") / "tree")
    (root / "victim.txt").write_bytes(b"compressible victim text " * 4000)
    return root


def _serving(m: FuseMount, src: Path) -> None:
    """The daemon is still up, and an untouched file still reads."""
    assert m.alive, m.stderr()
    assert os.path.ismount(m.path)
    os.stat(m.path)
    assert (m.path / "sub" / "deeper" / "hello").read_bytes() == b"hello, world\n"
    assert "unexpected" not in m.stderr(), m.stderr()


def _expect_clean_error(fn: object) -> int:
    with pytest.raises(OSError) as info:
        fn()  # type: ignore[operator]
    assert info.value.errno in CLEAN_ERRNOS, info.value
    return info.value.errno or 0


def test_bad_inode_layout(src: Path, tmp_path: Path, mounter: Mounter) -> None:
    image = mkfs_erofs(tmp_path / "plain.erofs", src, "-Enoinline_data,nosbcrc")
    at = inode_offset(image, "/sub/random.bin")  # i_format: bad version and layout
    bad = patched(image, tmp_path / "bad.erofs", at, b"\xff\xff")
    m = mounter.fuse(bad)
    _expect_clean_error(lambda: (m.path / "sub" / "random.bin").read_bytes())
    _serving(m, src)


def test_data_block_beyond_the_image(src: Path, tmp_path: Path, mounter: Mounter) -> None:
    image = mkfs_erofs(tmp_path / "plain.erofs", src, "-Enoinline_data,nosbcrc")
    at = inode_offset(image, "/sub/random.bin") + 16  # i_u: raw_blkaddr
    bad = patched(image, tmp_path / "bad.erofs", at, (0x7FFFFFF0).to_bytes(4, "little"))
    m = mounter.fuse(bad)
    _expect_clean_error(lambda: (m.path / "sub" / "random.bin").read_bytes())
    assert (m.path / "file5.txt").read_bytes() == (src / "file5.txt").read_bytes()
    _serving(m, src)


def test_garbage_compressed_data(src: Path, tmp_path: Path, mounter: Mounter) -> None:
    image = mkfs_erofs(tmp_path / "lz4.erofs", src, "-zlz4", "-C4096", "-Enosbcrc")
    at = first_extent(image, "/victim.txt")
    bad = patched(image, tmp_path / "bad.erofs", at, b"\xff" * 4096)
    m = mounter.fuse(bad)
    _expect_clean_error(lambda: (m.path / "victim.txt").read_bytes())
    _serving(m, src)


def _read_everything(root: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
                os.listxattr(p, follow_symlinks=False)
                if os.path.islink(p):
                    os.readlink(p)
                elif os.path.isfile(p) and st.st_size < (8 << 20):
                    with open(p, "rb") as f:
                        f.read()
            except OSError as e:
                assert e.errno in CLEAN_ERRNOS, (p, e)


@pytest.mark.slow
def test_random_corruption_sample(src: Path, tmp_path: Path, mounter: Mounter) -> None:
    image = mkfs_erofs(tmp_path / "lz4.erofs", src, "-zlz4hc", "-C16384", "-Eztailpacking,nosbcrc")
    raw = image.read_bytes()
    meta_end = min(len(raw), 4 * 4096)
    rng = random.Random(1234)
    served = 0
    for i in range(10):
        bad = bytearray(raw)
        for _ in range(8):
            # past the superblock itself
            at = rng.randrange(1024 + 128, meta_end)
            bad[at] = rng.randrange(256)
        path = tmp_path / f"bad{i}.erofs"
        path.write_bytes(bytes(bad))
        m = mounter.try_fuse(path)
        if isinstance(m, str):
            assert len(m.strip().splitlines()) == 1, m
            assert "Traceback" not in m, m
            continue
        _read_everything(m.path)
        assert m.alive, m.stderr()
        assert os.path.ismount(m.path)
        os.stat(m.path)
        assert "unexpected" not in m.stderr(), m.stderr()
        m.unmount()
        served += 1
    assert served > 0  # the sample exercised the daemon, not only the refusals


def test_image_file_truncated_under_the_mount(src: Path, tmp_path: Path, mounter: Mounter) -> None:
    """Someone cuts the image file short while it is mounted (``cp`` over it
    begins so): what is gone answers EUCLEAN, the daemon keeps serving (it
    reads the file, never faults on its mapping), and it unmounts cleanly."""
    image = mkfs_erofs(tmp_path / "victim.erofs", src, "-zlz4hc")
    m = mounter.fuse(image)
    assert (m.path / "file5.txt").read_bytes() == (src / "file5.txt").read_bytes()
    os.truncate(image, 4096)  # only the superblock's block is left
    for rel in ("victim.txt", "sub/random.bin"):
        got = _expect_clean_error(lambda rel=rel: (m.path / rel).read_bytes())
        assert got == errno.EUCLEAN, (rel, got)
    try:  # a tiny inline file: its metadata may have been read (and kept) already
        assert (m.path / "sub" / "deeper" / "hello").read_bytes() == b"hello, world\n"
    except OSError as e:
        assert e.errno == errno.EUCLEAN, e
    assert m.alive, m.stderr()
    assert os.path.ismount(m.path)
    os.stat(m.path)
    assert "unexpected" not in m.stderr(), m.stderr()
