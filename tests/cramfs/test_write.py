"""Images nommufs writes: util-linux fsck.cramfs, read-back, reproducibility, limits, XIP layout."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from fusefs.cramfs.data import BlockMap
from fusefs.cramfs.fs import CramfsFilesystem
from fusefs.vfs import Ino, MemoryConfig, open_image, resolve
from mkimage.errors import BuildError
from tests.cramfs.helpers import (
    CRAMFS_FIELDS,
    IS_ROOT,
    LONG_NAMES,
    compare,
    cramfs_args,
    expected,
    fsck_cramfs,
    mkimage,
)
from tests.trees import diff_trees, snapshot

HAVE_FSCK = shutil.which("fsck.cramfs") is not None

PLAIN = [
    ("default", ()),
    ("holes", ("-z",)),
    ("pad-big", ("-p", "-N", "big")),
    ("edition-name", ("-e", "9", "-n", "label", "-c", "zlib,9")),
    ("all-root", ("-q",)),
]
EXTENDED = [
    ("x", ("-x", "-z")),
    ("X", ("-X",)),
    ("XX", ("-X", "-X", "-N", "big")),
    ("XX-glob", ("-X", "-X", "--xip", "*.sh", "--xip", "files/random-4096")),
]


@pytest.mark.parametrize(
    ("label", "options"), PLAIN + EXTENDED, ids=[o[0] for o in PLAIN + EXTENDED]
)
def test_image_reads_back_like_the_source(
    label: str,
    options: tuple[str, ...],
    cram_tree: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = mkimage(cram_tree, tmp_path / f"{label}.img", *options)
    warnings = capsys.readouterr().err
    if "-q" in options:
        exp = expected(cram_tree)
        for e in exp.values():
            e.uid = e.gid = 0
        with open_image(image) as fs:
            from tests.trees import snapshot_fs

            assert diff_trees(exp, snapshot_fs(fs, xattrs=False), fields=CRAMFS_FIELDS) == []
    else:
        assert compare(cram_tree, image) == []
    # every loss is reported: the long names, and (as root) the big uid/gid
    for name in LONG_NAMES:
        assert f"names/{name}: name of {len(name.encode())} bytes truncated" in warnings
    if IS_ROOT and "-q" not in options:
        assert "perms/owned-big: uid 100000 truncated to 34464" in warnings
        assert "perms/owned-big: gid 70000 truncated to 112" in warnings
    with open_image(image) as fs:
        assert list(fs.fsck_extra()) == []
    if (label, options) in PLAIN and HAVE_FSCK:
        extracted = tmp_path / "fsck-extract"
        r = fsck_cramfs(image, extracted)
        assert r.returncode == 0, r.stderr
        # util-linux's own extraction agrees with the source on data and types
        exp = expected(cram_tree)
        got = snapshot(extracted, xattrs=False)
        fields = ("target", "data_sha") + (() if not IS_ROOT else ("rdev",))
        assert diff_trees(exp, got, fields=fields, ignore_paths=["."]) == []


def test_reproducible(cram_tree: Path, tmp_path: Path) -> None:
    for opts in ((), ("-X", "-X", "-z", "-p")):
        a = mkimage(cram_tree, tmp_path / "a.img", *opts).read_bytes()
        b = mkimage(cram_tree, tmp_path / "b.img", *opts).read_bytes()
        assert a == b


def _blockmap(fs: CramfsFilesystem, path: str) -> BlockMap:
    ino = resolve(fs, path)
    return fs.blockmap(Ino(ino))


@pytest.mark.parametrize("xx", [1, 2])
def test_xip_files_are_aligned_and_contiguous(xx: int, cram_tree: Path, tmp_path: Path) -> None:
    image = mkimage(cram_tree, tmp_path / "xip.img", *(["-X"] * xx))
    with open_image(image, MemoryConfig(arena_bytes=1 << 22)) as fs:
        assert isinstance(fs, CramfsFilesystem)
        assert "ext_block_pointers" in fs.describe()["features"]
        bm = _blockmap(fs, "bin/true")
        exts = [bm.extent(i) for i in range(bm.nr)]
        assert all(e.uncompressed and e.direct for e in exts)
        first = exts[0].start
        assert first % (4096 if xx == 2 else 8) == 0
        assert [e.start for e in exts] == [first + i * 4096 for i in range(bm.nr)]
        assert fs.xip_pages(resolve(fs, "bin/true")) == (first, bm.nr)
        if xx == 2:
            # the rest of the last page is zero, so the last page maps in place too
            tail = bytes(fs.image.view[exts[-1].start + exts[-1].length : first + bm.nr * 4096])
            assert tail == bytes(len(tail))
        # page-multiple XIP file: last block raw but not direct (kernel reads U+D there as a hole)
        pm = _blockmap(fs, "bin/pagemult")
        pexts = [pm.extent(i) for i in range(pm.nr)]
        assert all(e.direct for e in pexts[:-1])
        assert pexts[-1].uncompressed and not pexts[-1].direct
        assert pexts[-1].start == pexts[-2].start + 4096
        # the script is not ELF: compressed as usual
        sh = _blockmap(fs, "bin/script.sh")
        assert not sh.extent(0).direct
        assert fs.describe()["xip_files"] == 2
    assert compare(cram_tree, image) == []


def test_util_linux_fsck_rejects_extended_pointers_ours_accepts(
    cram_tree: Path, tmp_path: Path
) -> None:
    image = mkimage(cram_tree, tmp_path / "x.img", "-X", "-X")
    if HAVE_FSCK:
        assert fsck_cramfs(image).returncode != 0  # "unsupported filesystem features"
    with open_image(image) as fs:
        assert list(fs.fsck_extra()) == []


def _run(src: Path, out: Path, *opts: str) -> None:
    mkimage(src, out, *opts)


def test_too_large_file_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "huge", "wb") as f:
        f.truncate(1 << 24)
    out = tmp_path / "out.img"
    with pytest.raises(BuildError, match=r"huge: 16777216 bytes is more than cramfs's 16777215"):
        _run(src, out)
    assert sorted(os.listdir(tmp_path)) == ["src"]


@pytest.mark.skipif(not IS_ROOT, reason="creating device nodes needs root")
def test_big_device_numbers_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mknod(src / "big", 0o600 | stat.S_IFCHR, os.makedev(300, 7))
    with pytest.raises(BuildError, match=r"big: device 300:7 does not fit"):
        _run(src, tmp_path / "out.img")
    assert not (tmp_path / "out.img").exists()


def test_bad_flags(tmp_path: Path) -> None:
    from fusefs.cmdline import UsageError
    from mkimage.cramfs import cli

    for bad in (["-b", "8192"], ["-c", "lz4"], ["-e", "x"], ["-c", "zlib,12"], ["-r", "-N", "big"]):
        with pytest.raises(UsageError):
            cramfs_args(*bad, "src", "out")
    with pytest.raises(BuildError, match="--xip needs -X"):
        cli.run(cramfs_args("--xip", "*", str(tmp_path), str(tmp_path / "o.img")))


def test_r_reverses_the_byte_order_as_mkcramfs_does(tmp_path: Path) -> None:
    """-r is "reverse endian-ness" in the mkcramfs Buildroot and OpenWrt
    ship (util-linux mkfs.cramfs has no -r); owners to root is -q only."""
    import sys

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"cramfs " * 1000)
    other = {"little": "big", "big": "little"}[sys.byteorder]
    reversed_ = mkimage(src, tmp_path / "r.img", "-r").read_bytes()
    assert reversed_ == mkimage(src, tmp_path / "n.img", "-N", other).read_bytes()
    assert reversed_ != mkimage(src, tmp_path / "h.img").read_bytes()
    assert not cramfs_args("-r", str(src), "out").all_root


def test_empty_tree(tmp_path: Path) -> None:
    src = tmp_path / "empty"
    src.mkdir()
    image = mkimage(src, tmp_path / "e.img")
    assert os.path.getsize(image) == 4096
    if HAVE_FSCK:
        assert fsck_cramfs(image, tmp_path / "x").returncode == 0
    assert compare(src, image) == []


def test_own_fsck_passes_xip_images_and_names_the_page_multiple_hazard(
    cram_tree: Path, tmp_path: Path
) -> None:
    import struct

    from fusefs.cramfs.format import CRC_OFFSET, image_crc
    from tests.conftest import nommufs

    image = mkimage(cram_tree, tmp_path / "xip.img", "-X", "-X")
    r = nommufs("fsck", str(image))
    assert r.returncode == 0, r.stderr
    # make the page-multiple file end in a U+D block, as mkcramfs -X -X would
    img = bytearray(image.read_bytes())
    with open_image(image) as fs:
        assert isinstance(fs, CramfsFilesystem)
        bm = _blockmap(fs, "bin/pagemult")
        prev = bm.extent(bm.nr - 2)
        at = bm.table + 4 * (bm.nr - 1)
    struct.pack_into("<I", img, at, (prev.start + 4096) >> 2 | 0xC0000000)
    struct.pack_into("<I", img, CRC_OFFSET, image_crc(img, 0, len(img)))
    bad = tmp_path / "hazard.img"
    bad.write_bytes(bytes(img))
    r = nommufs("fsck", str(bad))
    assert r.returncode != 0
    assert b"is a page multiple and its last block is uncompressed+direct" in r.stdout + r.stderr
    with open_image(bad) as fs:
        # we read the real bytes (the kernel would return zeros for that page)
        assert (
            fs.read(resolve(fs, "bin/pagemult"), 0, 1 << 20)
            == (cram_tree / "bin/pagemult").read_bytes()
        )


def test_device_table_and_all_root(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "dev").mkdir(parents=True)
    (src / "etc").mkdir()
    (src / "etc" / "motd").write_bytes(b"hi\n")
    table = tmp_path / "devs.txt"
    table.write_text(
        "# name type mode uid gid major minor start inc count\n"
        "/dev/console c 600 0 5 5 1 - - -\n"
        "/dev/ttyS c 660 0 5 4 64 0 1 3\n"
        "/dev/mtdblock b 640 0 6 31 0 0 1 2\n"
    )
    image = mkimage(src, tmp_path / "d.img", "-D", str(table), "-q")
    with open_image(image) as fs:
        names = sorted(
            e.name for e in fs.readdir(resolve(fs, "dev")) if e.name not in (b".", b"..")
        )
        assert names == [
            b"console", b"mtdblock0", b"mtdblock1", b"ttyS0", b"ttyS1", b"ttyS2",
        ]  # fmt: skip
        a = fs.getattr(resolve(fs, "dev/ttyS2"))
        assert stat.S_ISCHR(a.mode) and a.mode & 0o777 == 0o660
        assert (os.major(a.rdev), os.minor(a.rdev)) == (4, 66) and (a.uid, a.gid) == (0, 5)
        b = fs.getattr(resolve(fs, "dev/mtdblock1"))
        assert stat.S_ISBLK(b.mode) and (os.major(b.rdev), os.minor(b.rdev)) == (31, 1)
        assert fs.getattr(resolve(fs, "etc/motd")).uid == 0
    if HAVE_FSCK:
        assert fsck_cramfs(image).returncode == 0


def test_cli_reports_losses_on_stderr_and_fails_cleanly(cram_tree: Path, tmp_path: Path) -> None:
    from tests.conftest import nommufs

    out = tmp_path / "cli.img"
    r = nommufs("mkimage", "cramfs", "-n", "a-name-longer-than-16", str(cram_tree), str(out))
    assert r.returncode == 0, r.stderr
    err = r.stderr.decode()
    assert "warning: volume name truncated to 16 bytes" in err
    assert "name of 255 bytes truncated to 252" in err
    if IS_ROOT:
        assert "uid 100000 truncated to 34464" in err
    with open_image(out) as fs:
        assert fs.describe()["name"] == "a-name-longer-th"
    r = nommufs("mkimage", "cramfs", str(tmp_path / "missing"), str(tmp_path / "no.img"))
    assert r.returncode != 0 and len(r.stderr.decode().strip().splitlines()) == 1
    assert not (tmp_path / "no.img").exists()
    assert [p for p in os.listdir(tmp_path) if p.endswith(".tmp")] == []


@pytest.mark.skipif(shutil.which("mkfs.cramfs") is None, reason="no mkfs.cramfs")
@pytest.mark.parametrize("options", [(), ("-N", "big"), ("-p", "-e", "5", "-n", "lbl")])
def test_byte_identical_to_mkfs_cramfs(
    options: tuple[str, ...], cram_tree_short: Path, tmp_path: Path
) -> None:
    """Same layout, order, dedup, truncation and zlib level 6 as util-linux
    (zlib output itself is the system zlib's, shared by Python and mkfs.cramfs)."""
    from tests.cramfs.helpers import mkfs_cramfs

    theirs = mkfs_cramfs(cram_tree_short, tmp_path / "u.img", "-b", "4096", *options).read_bytes()
    ours = mkimage(cram_tree_short, tmp_path / "n.img", *options).read_bytes()
    assert ours == theirs
