"""``mkimage erofs`` options of the 1.9 era -- lzma, ``-z ALG,level=,dictsize=``
and alternatives, ``--max-extent-bytes``, ``--chunksize``, ``-E 48bit``,
``dot-omitted``, ``all-fragments``, ``force-chunk-indexes``, ``-x``,
``--offset`` -- each built twice with ``-T`` (byte-identical), mounted by the
kernel and read by nommufs, both equal to the source; and what each option
promises, checked in the image."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fusefs.erofs import format as f
from fusefs.erofs.fs import ErofsFilesystem
from fusefs.vfs import open_image, resolve, walk
from tests.conftest import Mounter, missing_kernel_erofs
from tests.erofs.corpus_tree import build_corpus_tree
from tests.mkimage.conftest import Build
from tests.trees import DEFAULT_FIELDS, Entry, diff_trees, snapshot, snapshot_fs

TIMING = ["-T", "1700000000", "--mkfs-time"]
VARIANTS = {
    "lzma": ["-z", "lzma"],
    "lzma9-dict64k-C16k": ["-z", "lzma,level=9,dictsize=65536", "-C", "16384"],
    "lzma-extreme-b1024-ztail": ["-z", "lzma,105", "-b", "1024", "-E", "ztailpacking"],
    "lz4hc10-alt-lzma": ["-z", "lz4hc,level=10:lzma"],
    "zstd-dict64k-frag": ["-z", "zstd,dictsize=65536", "-E", "fragments"],
    "deflate9-dict16k": ["-z", "deflate,level=9,dictsize=16384"],
    "lz4hc-maxext16k-C64k": ["-z", "lz4hc", "-C", "65536", "--max-extent-bytes", "16384"],
    "chunks-8k": ["--chunksize", "8192"],
    "chunks-16k-indexes-48bit": ["--chunksize", "16384", "-E", "force-chunk-indexes,48bit"],
    "48bit": ["-E", "48bit"],
    "lz4hc-48bit-dot-omitted": ["-z", "lz4hc", "-E", "dot-omitted"],
    "lzma-all-fragments": ["-z", "lzma", "-E", "all-fragments"],
    "x2": ["-x", "2"],
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small tree of tests/corpus/upstream-1.9.3, built once here."""
    return build_corpus_tree(tmp_path_factory.mktemp("options") / "tree")


@pytest.fixture(scope="module")
def source(tree: Path) -> dict[str, Entry]:
    return snapshot(tree)  # what every image must show


@pytest.mark.parametrize("name", VARIANTS)
def test_option_builds_reproducibly_and_reads_back(
    name: str, tree: Path, source: dict[str, Entry], build: Build, mounter: Mounter
) -> None:
    options = VARIANTS[name]
    a = build(tree, *options, *TIMING)
    b = build(tree, *options, *TIMING, "-j", "1")
    assert a.read_bytes() == b.read_bytes()
    with open_image(a) as fs:
        assert diff_trees(source, snapshot_fs(fs)) == []
        assert list(fs.fsck_extra()) == []
    if missing_kernel_erofs() is None:
        assert diff_trees(source, snapshot(mounter.kernel_erofs(a))) == []


def _fs(build: Build, tree: Path, *options: str) -> ErofsFilesystem:
    fs = open_image(build(tree, *options, *TIMING))
    assert isinstance(fs, ErofsFilesystem)
    return fs


def _files(fs: ErofsFilesystem) -> list[tuple[bytes, int]]:
    return [(i.path, int(i.ino)) for i in walk(fs) if i.attr.is_reg and i.attr.size]


def test_lzma_configuration(tree: Path, build: Build) -> None:
    with _fs(build, tree, "-z", "lzma,dictsize=65536:lz4hc", "-C", "16384") as fs:
        c = fs.sbi.compr
        assert c.available_algs == 1 << f.Z_EROFS_COMPRESSION_LZMA | 1 << f.Z_EROFS_COMPRESSION_LZ4
        assert c.lzma_dict_size == 65536
        assert c.lz4_max_pclusterblks == 4
        extents = [e for _p, ino in _files(fs) for e in fs.describe_inode(ino)["extents"]]
        formats = {e.get("format") for e in extents}
        assert "lzma" in formats and "lz4" not in formats  # the first algorithm compresses


def test_max_extent_bytes_bounds_every_extent(tree: Path, build: Build) -> None:
    with _fs(build, tree, "-z", "lz4hc", "-C", "65536", "--max-extent-bytes", "8192") as fs:
        extents = [e for _p, ino in _files(fs) for e in fs.describe_inode(ino)["extents"]]
        assert max(e["llen"] for e in extents if e["kind"] == "encoded") <= 8192
    with _fs(build, tree, "-z", "lz4hc", "-C", "65536") as fs:
        extents = [e for _p, ino in _files(fs) for e in fs.describe_inode(ino)["extents"]]
        # the zeros and the text: long extents
        assert max(e["llen"] for e in extents if e["kind"] == "encoded") > 8192


def test_chunksize_and_indexes(tree: Path, build: Build) -> None:
    with _fs(build, tree, "--chunksize", "16384", "-E", "force-chunk-indexes,48bit") as fs:
        inodes = [fs.inode(ino) for _p, ino in _files(fs)]
        assert {i.layout for i in inodes} == {f.EROFS_INODE_CHUNK_BASED}
        fmt = f.EROFS_CHUNK_FORMAT_INDEXES | f.EROFS_CHUNK_FORMAT_48BIT | 2  # 16 KiB chunks
        assert {i.chunkformat for i in inodes} == {fmt}
        sparse = fs.describe_inode(resolve(fs, "files/sparse"))["extents"]
        assert [e["pa"] is None for e in sparse] == [False, True, True, False]


def test_48bit_and_dot_omitted(tree: Path, build: Build) -> None:
    with _fs(build, tree, "-z", "lz4hc", "-E", "dot-omitted") as fs:
        sb = fs.sbi.sb
        assert sb.feature_incompat & f.EROFS_FEATURE_INCOMPAT_48BIT
        assert sb.rootnid_8b == fs.sbi.root_nid > 0 and sb.root_nid_2b == 0  # blocks_hi
        assert sb.epoch + sb.build_time == 1700000000
        crowd = resolve(fs, "crowd")
        assert fs.inode(crowd).dot_omitted
        assert [e.name for e in fs.readdir(crowd)][:3] == [b".", b"-first", b".."]
        # compact inodes with nlink 1 are NLINK_1 ones: their i_nb is not nlink
        one = fs.inode(resolve(fs, "files/text-40000"))
        assert one.version == f.EROFS_INODE_LAYOUT_COMPACT and one.nlink == 1
        raw = fs.image.slice(one.iloc, 2, structure="test")
        assert int.from_bytes(raw, "little") >> f.EROFS_I_NLINK_1_BIT & 1


def test_all_fragments_and_xattr_tolerance(tree: Path, build: Build) -> None:
    with _fs(build, tree, "-z", "zstd", "-E", "all-fragments", "-x", "3") as fs:
        for path, ino in _files(fs):
            assert [e["kind"] for e in fs.describe_inode(ino)["extents"]] == ["fragment"], path
        assert fs.sbi.sb.packed_nid
        # three files share user.common: -x 3 keeps it inline, -x 2 shares it
        assert fs.inode(resolve(fs, "xattrs/shared-1")).xattr_isize > 12
    with _fs(build, tree, "-x", "2") as fs:
        assert fs.inode(resolve(fs, "xattrs/shared-1")).xattr_isize == 16  # header + one id


def test_no_xattrs_with_negative_tolerance(
    tree: Path, source: dict[str, Entry], build: Build
) -> None:
    with _fs(build, tree, "-x", "-1") as fs:
        shown = snapshot_fs(fs)
        assert all(not e.xattrs for e in shown.values())
        others = tuple(x for x in DEFAULT_FIELDS if x != "xattrs")
        assert diff_trees(source, shown, fields=others) == []


def test_offset(tree: Path, source: dict[str, Entry], build: Build, mounter: Mounter) -> None:
    plain = build(tree, "-z", "lz4", *TIMING)
    shifted = build(tree, "-z", "lz4", "--offset", "12288", *TIMING)
    data = shifted.read_bytes()
    assert data[:12288] == bytes(12288) and data[12288:] == plain.read_bytes()
    with open_image(shifted, offset=12288) as fs:
        assert diff_trees(source, snapshot_fs(fs)) == []
    if missing_kernel_erofs() is None:
        loop = subprocess.run(
            ["losetup", "--find", "--show", "--read-only", "--offset", "12288", str(shifted)],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        try:
            mnt = mounter.kernel_erofs(Path(loop))
            assert diff_trees(source, snapshot(mnt)) == []
            mounter.close()
        finally:
            subprocess.run(["losetup", "-d", loop], check=False)
    assert os.path.getsize(shifted) == 12288 + os.path.getsize(plain)
