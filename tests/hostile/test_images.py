"""The hand-made hostile images (tests/hostile/corpus.py) through the library,
the command line and a FUSE mount."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import BinaryIO

import pytest

from fusefs.errors import CorruptImageError
from fusefs.vfs import MemoryConfig, open_image, resolve
from tests.conftest import Mounter, nommufs
from tests.hostile import corpus

CORPUS = corpus.CORPUS
PACKED = CORPUS / "erofs-packed-loop.img"
NAMES = CORPUS / "erofs-hostile-names.img"
HOLE = CORPUS / "valid-erofs-chunk-hole-2e43.img"
STRATEGIES = ["vmap", "bounce", "contig-folio", "percpu-buffer"]


@pytest.mark.parametrize("name", list(corpus.IMAGES))
def test_committed_images_are_what_the_script_makes(name: str) -> None:
    assert (CORPUS / name).read_bytes() == corpus.build(name)
    assert (CORPUS / "hostile.txt").read_text() == corpus.describe()


def _nids() -> tuple[int, int]:
    """(nid of big, the packed nid): the loop's two ends."""
    return corpus.nid_of(PACKED, b"big"), corpus.nid_of(PACKED, b"small")


@pytest.mark.parametrize("decompress", STRATEGIES)
def test_packed_loop_is_corruption_naming_both_nids_and_holds_nothing(decompress: str) -> None:
    big, packed = _nids()
    cfg = MemoryConfig(decompress=decompress, arena_bytes=1 << 20)  # type: ignore[arg-type]
    fs = open_image(PACKED, cfg)
    try:
        for _ in range(3):
            with pytest.raises(CorruptImageError) as e:
                fs.read(resolve(fs, "big"), 0, 4096)
            assert e.value.errno == errno.EUCLEAN
            assert f"nid {big}" in str(e.value) and f"nid {packed}" in str(e.value)
            for path, at in (("small", 0), ("d/other", 0), ("raw.bin", 4096)):
                with pytest.raises(CorruptImageError):
                    fs.read(resolve(fs, path), at, 4096)
            # raw.bin's first block is its own pcluster, no fragment: it reads right
            assert fs.read(resolve(fs, "raw.bin"), 0, 4096) == corpus.RAW_BIN[:4096]
        assert fs.readlink(resolve(fs, "link")) == b"d/other"
        st = fs.memory_stats()
        assert st["vmaps_live"] == 0
        # no buffer left behind (percpu-buffer keeps the one reserved at open)
        assert st["frames_used"] == st["frames_page_cache"] + st["frames_percpu"]
    finally:
        fs.close()  # raises when a page reference or mapping is still held


def test_fsck_reports_the_packed_loop_and_its_summary() -> None:
    big, packed = _nids()
    r = nommufs("fsck", str(PACKED))
    err, out = r.stderr.decode(), r.stdout.decode()
    assert r.returncode == 1, err
    assert f"/big: erofs packed inode nid {packed}: loop through the packed inode: " \
           f"reading nid {big}" in err  # fmt: skip
    assert "still held" not in err
    assert out.startswith(f"{PACKED}: 4 problem(s); 7 inodes, 2 directories, 4 files")


@pytest.mark.fuse
def test_fuse_answers_euclean_for_the_loop_and_serves_the_rest(
    mounter: Mounter, tmp_path: Path
) -> None:
    stats = tmp_path / "stats.json"
    m = mounter.fuse(PACKED, "--stats", str(stats))
    for name in ("big", "small", "raw.bin", "d/other"):
        for _ in range(2):
            with pytest.raises(OSError) as e:
                (m.path / name).read_bytes()
            assert e.value.errno == errno.EUCLEAN, name
    assert sorted(os.listdir(m.path)) == ["big", "d", "link", "raw.bin", "small"]
    assert os.listdir(m.path / "d") == ["other"]
    assert os.readlink(m.path / "link") == "d/other"
    assert (m.path / "link").is_symlink() and stat.S_ISDIR(os.stat(m.path / "d").st_mode)
    assert [os.stat(m.path / n).st_size for n in ("big", "raw.bin", "small")] == [24000, 8192, 15]
    m.unmount()
    assert m.proc.returncode == 0, m.stderr()
    log = m.stderr()
    assert "still held" not in log and "unexpected" not in log.lower(), log
    final = json.loads(stats.read_text())
    assert final["mounted"] is False
    assert final["vmaps_live"] == 0


def test_names_are_escaped_everywhere(tmp_path: Path) -> None:
    r = nommufs("ls", "-R", str(NAMES))
    out, err = r.stdout.decode(), r.stderr.decode()
    assert "a\\n/bc" in out.splitlines() and "\\x1b[31mred\\x1b[0m" in out.splitlines()
    assert "\x1b" not in out + err
    assert err.splitlines() == ["nommufs ls: dirent: /d/a\\n/bc: name contains '/'"]
    r = nommufs("fsck", str(NAMES))
    err = r.stderr.decode()
    assert r.returncode == 1 and "\x1b" not in err and "\n/bc" not in err
    assert all(line.isprintable() for line in err.splitlines())
    assert "/d/a\\n/bc: dirent: /d/a\\n/bc: name contains '/'" in err.splitlines()
    r = nommufs("extract", str(NAMES), str(tmp_path / "x"))
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
    assert not (tmp_path / "x").exists()
    r = nommufs("cat", str(NAMES), "esc/" + os.fsdecode(corpus.ESC_NAME))
    assert r.returncode == 0 and r.stdout == b"red\n"
    r = nommufs("cat", str(NAMES), "esc/\x1b]0;title\x07")
    assert r.returncode == 1
    assert r.stderr.decode() == "nommufs cat: \\x1b]0;title\\x07: no such entry\n"


def _cat_into(out: BinaryIO, image: str, path: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "fusefs", "cat", image, path]
    return subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, timeout=20, check=False)


def test_a_claimed_8_tib_hole_costs_nothing(tmp_path: Path) -> None:
    """2^43 bytes of one hole chunk in an 8 KiB image: the data ranges say so,
    and fsck, extract and cat into a file finish at once, holes left holes."""
    assert HOLE.stat().st_size == 8192
    with open_image(HOLE) as fs:
        ino = resolve(fs, "hole")
        assert fs.getattr(ino).size == 1 << 43
        assert list(fs.data_ranges(ino)) == []
        assert fs.read(ino, (1 << 43) - 10, 100) == bytes(10)
    r = nommufs("fsck", str(HOLE), timeout=20)
    assert r.returncode == 0 and b"0 bytes of data read" in r.stdout, r.stderr
    r = nommufs("extract", str(HOLE), str(tmp_path / "x"), timeout=20)
    assert r.returncode == 0, r.stderr
    st = os.stat(tmp_path / "x" / "hole")
    assert st.st_size == 1 << 43 and st.st_blocks == 0
    with open(tmp_path / "cat.out", "wb") as out:
        r = _cat_into(out, str(HOLE), "hole")
    assert r.returncode == 0, r.stderr
    st = os.stat(tmp_path / "cat.out")
    assert st.st_size == 1 << 43 and st.st_blocks == 0


def sparse_tree(tmp_path: Path, gap: int) -> Path:
    """A tree of one file, ``sparse``: 4 bytes, a hole to ``gap``, 4 bytes."""
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "sparse", "wb") as f:
        f.write(b"head")
        f.seek(gap)
        f.write(b"tail")
    return src


def test_cat_into_a_file_keeps_the_data_and_the_holes(tmp_path: Path) -> None:
    src = sparse_tree(tmp_path, 3 << 20)
    img = tmp_path / "s.img"
    corpus.mkimage(img, src, "--chunksize", "4096")
    with open(tmp_path / "out", "wb") as out:
        out.write(b"x" * 10)  # cat appends where the file offset is, as cat(1)
        out.flush()
        r = _cat_into(out, str(img), "sparse")
    assert r.returncode == 0, r.stderr
    data = (tmp_path / "out").read_bytes()
    assert data == b"x" * 10 + (src / "sparse").read_bytes()
    assert os.stat(tmp_path / "out").st_blocks * 512 < 1 << 20
    piped = nommufs("cat", str(img), "sparse").stdout
    assert piped == (src / "sparse").read_bytes()


def test_cramfs_holes_are_data_ranges_too(tmp_path: Path) -> None:
    src = sparse_tree(tmp_path, 5 << 20)
    img = tmp_path / "c.img"
    r = nommufs("mkimage", "cramfs", "-z", str(src), str(img))
    assert r.returncode == 0, r.stderr
    with open_image(img) as fs:
        assert list(fs.data_ranges(resolve(fs, "sparse"))) == [(0, 4096), (5 << 20, 4)]
    r = nommufs("fsck", str(img))
    assert r.returncode == 0 and b"4100 bytes of data read" in r.stdout, r.stdout
    r = nommufs("extract", str(img), str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr
    out = tmp_path / "x" / "sparse"
    assert out.read_bytes() == (src / "sparse").read_bytes()
    assert os.stat(out).st_blocks * 512 <= 64 << 10
