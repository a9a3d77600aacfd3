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


BOMB = CORPUS / "valid-erofs-dedupe-bomb.img"
BOMB_SIZE = 495 << 23


def test_a_dedupe_bomb_is_checked_once_per_pcluster() -> None:
    """12 KiB claiming 3.9 GiB: 495 extents of one 8 MiB zstd pcluster.  fsck
    decodes that pcluster once and finds the image clean (the kernel mounts
    it); before each extent was decoded again (3.9 GiB, 12.8 s)."""
    from fusefs.commands.fsck import check

    assert BOMB.stat().st_size == 12288
    with open_image(BOMB) as fs:
        ino = resolve(fs, "big")
        assert fs.getattr(ino).size == BOMB_SIZE
        extents = list(fs.data_extents(ino))
        assert len(extents) == 495 and len({e.source for e in extents}) == 1
        report = check(fs)
        st = fs.memory_stats()
        assert report.clean, report.problems
        assert report.bytes_read == 8 << 20 and report.bytes_shared == BOMB_SIZE - (8 << 20)
        assert st["pclusters_decoded"] == 1 and st["bytes_decompressed"] == 8 << 20
        # what fsck skipped is what a reader gets
        assert fs.read(ino, BOMB_SIZE - 5, 10) == b"xxxxx"
    r = nommufs("fsck", str(BOMB), timeout=60)
    assert r.returncode == 0 and r.stdout.decode().endswith(
        f"clean; 2 inodes, 1 directories, 1 files, {8 << 20} bytes of data read"
        f" ({BOMB_SIZE - (8 << 20)} more are extents of the same sources)\n"
    ), r.stderr


def test_fsck_stops_reading_past_what_the_image_can_hold() -> None:
    """The same extents made distinct (each pcluster one byte longer: the
    zero padding before the frame grows), so no identity helps: the file
    wants more than MAX_RATIO times the image's size, so fsck reports it
    and reads none of it."""
    from fusefs.commands import fsck

    img = bytearray(BOMB.read_bytes())
    with open_image(BOMB) as fs:
        extents = list(fs.data_extents(resolve(fs, "big")))
    inode_end = 12288 - 8 * 495  # the records fill the rest of the metadata block
    for i in range(495):
        at = inode_end + 8 * i
        plen = int.from_bytes(img[at : at + 4], "little")
        img[at : at + 8] = (plen - i).to_bytes(4, "little") + (4096 + i).to_bytes(4, "little")
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"nommufs-bomb-{os.getpid()}.img"
    try:
        path.write_bytes(img)
        with open_image(path) as fs:
            distinct = list(fs.data_extents(resolve(fs, "big")))
            assert len({e.source for e in distinct}) == 495 == len(extents)
            assert fs.read(resolve(fs, "big"), BOMB_SIZE - 5, 10) == b"xxxxx"  # valid still
            before = fs.memory_stats()["pclusters_decoded"]
            report = fsck.check(fs)
            assert report.bytes_read == 0 and fs.memory_stats()["pclusters_decoded"] == before
        assert report.problems == [
            f"/big: its {BOMB_SIZE} bytes of data would take fsck past"
            f" {fsck.MAX_RATIO * 12288} bytes read, {fsck.MAX_RATIO} times this 12288-byte"
            " image: its extents overlap or want a pcluster again and again; the data of"
            " this and later files is not read"
        ]
    finally:
        path.unlink(missing_ok=True)


def test_extract_and_cat_refuse_what_does_not_fit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claimed 3.9 GiB against 16 MiB free: one line naming the file,
    nothing written, before any data is decoded."""
    import types

    from fusefs.commands import extract
    from fusefs.commands._common import NoSpaceError

    def small(_where: object) -> types.SimpleNamespace:
        return types.SimpleNamespace(f_bavail=4096, f_frsize=4096)

    monkeypatch.setattr(os, "statvfs", small)
    with open_image(BOMB) as fs:
        with pytest.raises(NoSpaceError) as e:
            extract.extract(fs, tmp_path / "x")
        assert fs.memory_stats()["pclusters_decoded"] == 0
    assert str(e.value) == (
        f"extracting (/big: {BOMB_SIZE} bytes the largest file) needs {BOMB_SIZE} bytes,"
        f" the filesystem of {tmp_path} has {16 << 20} free"
    )
    assert os.listdir(tmp_path) == []
    # the same through the command line, into a real 16 MiB tmpfs (root only)
    tmpfs = tmp_path / "tmpfs"
    tmpfs.mkdir()
    if os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(tmpfs)], check=False
    ).returncode:
        return
    try:
        r = nommufs("extract", str(BOMB), str(tmpfs / "x"), timeout=20)
        assert r.returncode == 1 and len(r.stderr.splitlines()) == 1, r.stderr
        assert b"/big: " in r.stderr and os.listdir(tmpfs) == []
        with open(tmpfs / "out", "wb") as out:
            r = _cat_into(out, str(BOMB), "big")
        assert r.returncode == 1
        assert r.stderr.decode() == (
            f"nommufs cat: big needs {BOMB_SIZE} bytes, the output's filesystem has"
            f" {16 << 20} free\n"
        )
        assert os.stat(tmpfs / "out").st_size == 0
        piped = subprocess.run(
            f"{sys.executable} -m fusefs cat {BOMB} big | head -c 100000000 | wc -c",
            shell=True, capture_output=True, timeout=60, check=True,
        )  # fmt: skip
        assert piped.stdout.strip() == b"100000000"  # into a pipe it streams
    finally:
        subprocess.run(["umount", str(tmpfs)], check=True)
