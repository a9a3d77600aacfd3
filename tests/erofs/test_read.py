"""Images made by Debian's mkfs.erofs over a sample of its options, read through
``ErofsFilesystem`` (via ``open_image``) and compared with the source tree
field by field."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from fusefs.erofs.fs import ErofsFilesystem
from fusefs.vfs import MemoryConfig, open_image, resolve
from tests.conftest import Mounter, missing_kernel_erofs
from tests.conftest import mkfs_erofs as mkfs
from tests.erofs.helpers import rich_tree_for_mkfs
from tests.trees import DEFAULT_FIELDS, Entry, diff_trees, snapshot, snapshot_fs

# (id, mkfs.erofs options, fields not preserved by those options)
VARIANTS: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("plain", [], ()),
    ("lz4hc-compact2b", ["-zlz4hc"], ()),
    ("lz4-64k", ["-zlz4", "-C65536"], ()),
    ("lz4hc12-1m-ztail", ["-zlz4hc,12", "-C1048576", "-Eztailpacking"], ()),
    ("lz4-legacy", ["-zlz4", "-Elegacy-compress"], ()),
    ("lz4hc-16k-legacy", ["-zlz4hc,9", "-C16384", "-Elegacy-compress"], ()),
    ("lz4hc-ztail-4k", ["-zlz4hc", "-Eztailpacking"], ()),
    ("noinline", ["-Enoinline_data"], ()),
    (
        "compact-T-allroot",
        ["-Eforce-inode-compact", "-T1000000000", "--all-root"],
        ("mtime_ns", "uid", "gid"),
    ),
    ("extended", ["-Eforce-inode-extended", "-x1"], ()),
    ("chunks-8k-indexes", ["--chunksize=8192", "-Eforce-chunk-indexes"], ()),
    ("chunks-4k-blockmap", ["--chunksize=4096", "-Eforce-inode-blockmap"], ()),
    (
        "lz4-32k-compact-T",
        ["-zlz4", "-C32768", "-Eforce-inode-compact", "-T0", "--all-root"],
        ("mtime_ns", "uid", "gid"),
    ),
]
FAST = {"plain", "lz4hc-compact2b", "lz4-legacy", "lz4hc12-1m-ztail"}


@pytest.fixture(scope="module")
def rich_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rich_tree_for_mkfs(tmp_path_factory.mktemp("erofs-rich") / "tree")


@pytest.fixture(scope="module")
def source(rich_tree: Path) -> dict[str, Entry]:
    return snapshot(rich_tree)


def _fields(ignore: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(x for x in DEFAULT_FIELDS if x not in ignore)


def _diff(
    expected: dict[str, Entry], actual: dict[str, Entry], ignore: tuple[str, ...]
) -> list[str]:
    # Directory mtimes change while the tree is built and are not what this
    # compares; the root's owner is the source directory's.
    problems = diff_trees(expected, actual, fields=_fields(ignore))
    return [p for p in problems if not (p.split(":")[0] in (".",) and "mtime_ns" in p)]


@pytest.mark.parametrize(
    "variant",
    [pytest.param(v, id=v[0], marks=() if v[0] in FAST else (pytest.mark.slow,)) for v in VARIANTS],
)
def test_mkfs_variant_reads_like_source(
    variant: tuple[str, list[str], tuple[str, ...]],
    rich_tree: Path,
    source: dict[str, Entry],
    tmp_path: Path,
) -> None:
    name, options, ignore = variant
    img = mkfs(tmp_path / f"{name}.img", rich_tree, *options)
    with open_image(img, MemoryConfig(arena_bytes=32 << 20)) as fs:
        assert isinstance(fs, ErofsFilesystem)
        got = snapshot_fs(fs)
        problems = _diff(source, got, ignore)
        assert not problems, "\n".join(problems[:30])
        assert list(fs.fsck_extra()) == []
        st = fs.memory_stats()
        assert st["vmaps_live"] == 0 and st["frames_used"] >= 0


def test_lookup_readdir_offsets_and_errors(rich_tree: Path, tmp_path: Path) -> None:
    img = mkfs(tmp_path / "img", rich_tree)
    with open_image(img) as fs:
        crowd = resolve(fs, "crowd")
        entries = list(fs.readdir(crowd))
        names = [e.name for e in entries]
        assert names[:2] == [b".", b".."] and len(names) == 3002
        assert names == sorted(names)
        # every name is found by the binary search, across directory blocks
        for e in entries[2::97]:
            assert fs.lookup(crowd, e.name) == e.ino
        # readdir resumes after any offset
        for k in (0, 1, 500, 3001):
            rest = [e.name for e in fs.readdir(crowd, entries[k].offset)]
            assert rest == names[k + 1 :]
        from fusefs.errors import FsError, NoAttributeError, NotADirectoryFsError, NotFoundError

        with pytest.raises(NotFoundError):
            fs.lookup(crowd, b"entry-99999")
        with pytest.raises(NotFoundError):
            fs.lookup(crowd, b"")
        f = resolve(fs, "files/text-4097")
        with pytest.raises(NotADirectoryFsError):
            fs.lookup(f, b"x")
        with pytest.raises(NoAttributeError):
            fs.getxattr(f, b"user.nothing")
        with pytest.raises(FsError):
            fs.readlink(f)
        assert fs.read(f, 4090, 100) == (rich_tree / "files/text-4097").read_bytes()[4090:]
        assert fs.read(f, 5000, 10) == b""
        assert fs.statfs().block_size == 4096
        d = fs.describe()
        assert d["format"] == "erofs" and "sb_chksum" in d["feature_compat"]
        di = fs.describe_inode(f)
        assert (
            di["layout"] in ("EROFS_INODE_FLAT_INLINE", "EROFS_INODE_FLAT_PLAIN") and di["extents"]
        )


def test_hard_links_share_an_ino(rich_tree: Path, tmp_path: Path) -> None:
    img = mkfs(tmp_path / "img", rich_tree, "-zlz4hc")
    with open_image(img) as fs:
        a = resolve(fs, "links/hard-a")
        assert resolve(fs, "hard-c") == a == resolve(fs, "links/hard-b")
        assert fs.getattr(a).nlink == 3
        assert fs.root != 1 and all(e.ino != 1 for e in fs.readdir(fs.root))


@pytest.mark.skipif(not Path("/dev").exists(), reason="no /dev")
def test_fsck_erofs_agrees_images_are_clean(rich_tree: Path, tmp_path: Path) -> None:
    img = mkfs(tmp_path / "img", rich_tree, "-zlz4hc", "-C16384")
    proc = subprocess.run(["fsck.erofs", str(img)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    with open_image(img) as fs:
        assert list(fs.fsck_extra()) == []
        for item in snapshot_fs(fs, xattrs=False).values():
            assert stat.S_IFMT(item.mode) != 0


def _with_long_prefix(image: bytes, entry_pos: int, infix: bytes) -> bytes:
    """Add a long xattr name prefix table (one prefix: ``user.`` + ``infix``)
    in a new last block and point the inline entry at ``entry_pos`` to it."""
    import struct

    from fusefs.erofs import format as f
    from fusefs.erofs.hash import superblock_checksum

    out = bytearray(image)
    table_at = len(out)
    record = struct.pack("<HB", 1 + len(infix), f.EROFS_XATTR_INDEX_USER) + infix
    out += record + bytes(4096 - len(record))
    sb_at = f.EROFS_SUPER_OFFSET
    sb = f.SuperBlock.unpack_from(out, sb_at)
    import dataclasses

    sb = dataclasses.replace(
        sb,
        feature_incompat=sb.feature_incompat | f.EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES,
        xattr_prefix_count=1,
        xattr_prefix_start=table_at // 4,
        blocks_lo=sb.blocks_lo + 1,
    )
    out[sb_at : sb_at + f.SuperBlock.SIZE] = sb.pack()
    out[entry_pos + 1] = f.EROFS_XATTR_LONG_PREFIX | 0
    length = f.sb_checksum_length(sb.blkszbits)
    out[sb_at + 4 : sb_at + 8] = superblock_checksum(out[sb_at : sb_at + length]).to_bytes(
        4, "little"
    )
    return bytes(out)


def test_long_xattr_name_prefixes(tmp_path: Path, mounter: Mounter) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"x")
    os.setxattr(src / "f", "user.xxxabc", b"value")
    img = mkfs(tmp_path / "img", src)
    with open_image(img) as fs:
        assert isinstance(fs, ErofsFilesystem)
        inode = fs.inode(resolve(fs, "f"))
        entry_pos = inode.xattr_pos + 12  # no shared ids: the first inline entry
    patched = tmp_path / "long.img"
    patched.write_bytes(_with_long_prefix(img.read_bytes(), entry_pos, b"pre"))
    with open_image(patched) as fs:
        f_ino = resolve(fs, "f")
        assert fs.listxattr(f_ino) == [b"user.prexxxabc"]
        assert fs.getxattr(f_ino, b"user.prexxxabc") == b"value"
        assert "xattr_prefixes" in fs.describe()["feature_incompat"]
    # the kernel agrees, where it can be asked
    if missing_kernel_erofs() is None:
        mnt = mounter.kernel_erofs(patched)
        assert os.listxattr(mnt / "f") == ["user.prexxxabc"]
        assert os.getxattr(mnt / "f", "user.prexxxabc") == b"value"
