"""Corrupt and hostile cramfs images give clean one-line errors, in bounded time."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusefs.cramfs.format import CRC_OFFSET, image_crc
from fusefs.cramfs.fs import CramfsFilesystem
from fusefs.errors import CorruptImageError, FsError
from fusefs.vfs import MemoryConfig, open_image, walk
from mmshim.mmap import MAP_PRIVATE, PROT_READ, AddressSpace, MmapError
from tests.cramfs.helpers import ELF, mkfs_cramfs, mkimage
from tests.trees import build_small_tree


@pytest.fixture(scope="module")
def seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    base = tmp_path_factory.mktemp("corrupt")
    src = build_small_tree(base / "src")
    (src / "true").write_bytes(ELF.read_bytes()[:20000])
    return [
        mkimage(src, base / "xip.img", "-X", "-X", "--xip", "true", "-z").read_bytes(),
        mkfs_cramfs(src, base / "mkfs.img", "-b", "4096", "-N", "big").read_bytes(),
    ]


def _fix_crc(img: bytearray) -> None:
    order = "<" if img[:4] == b"\x45\x3d\xcd\x28" else ">"
    (size,) = struct.unpack_from(order + "I", img, 4)
    if 76 <= size <= len(img):
        struct.pack_into(order + "I", img, CRC_OFFSET, image_crc(img, 0, size))


def exercise(path: Path) -> None:
    """Everything a user can do with an image; only FsError may come out."""
    with open_image(path, MemoryConfig(arena_bytes=1 << 20)) as fs:
        fs.describe()
        list(fs.fsck_extra())
        for item in walk(fs, on_error=lambda _p, _e: None):
            fs.describe_inode(item.ino)
            if item.attr.is_reg:
                fs.read(item.ino, 0, 1 << 20)
                assert isinstance(fs, CramfsFilesystem)
                space = AddressSpace(fs.arena)
                try:
                    vma = space.mmap(
                        fs.mappable(item.ino), 0, item.attr.size or 1, PROT_READ, MAP_PRIVATE
                    )
                    vma.populate()
                except MmapError:
                    pass
                finally:
                    space.close()
            elif item.attr.is_lnk:
                fs.readlink(item.ino)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    which=st.integers(0, 1),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), min_size=1, max_size=6),
    fix_crc=st.booleans(),
)
def test_corruption_gives_only_fs_errors(
    seeds: list[bytes],
    tmp_path_factory: pytest.TempPathFactory,
    which: int,
    edits: list[tuple[int, int]],
    fix_crc: bool,
) -> None:
    img = bytearray(seeds[which])
    for pos, value in edits:
        # half the edits land in the metadata (superblock, directories, pointer tables)
        at = pos % 512 if pos & 1 else pos % len(img)
        img[at] = value
    if fix_crc:
        _fix_crc(img)  # so the corruption reaches past the CRC check
    path = tmp_path_factory.mktemp("c") / "bad.img"
    path.write_bytes(bytes(img))
    t0 = time.monotonic()
    try:
        exercise(path)
    except FsError as e:
        assert "\n" not in str(e)
    assert time.monotonic() - t0 < 10


def _write(tmp_path: Path, img: bytearray) -> Path:
    _fix_crc(img)
    p = tmp_path / "bad.img"
    p.write_bytes(bytes(img))
    return p


def _inode_le(mode: int, size: int, namelen: int, offset: int) -> bytes:
    return struct.pack("<III", mode, size, namelen | offset << 6)


def test_named_errors(seeds: list[bytes], tmp_path: Path) -> None:
    good = seeds[0]
    # CRC
    img = bytearray(good)
    img[200] ^= 0xFF
    (tmp_path / "crc.img").write_bytes(bytes(img))
    with pytest.raises(CorruptImageError, match=r"cramfs superblock @0x0: crc mismatch"):
        open_image(tmp_path / "crc.img")
    # size beyond the file
    img = bytearray(good)
    struct.pack_into("<I", img, 4, len(img) + 4096)
    with pytest.raises(CorruptImageError, match="beyond the end"):
        open_image(_write(tmp_path, img))
    # root not a directory
    img = bytearray(good)
    struct.pack_into("<H", img, 64, 0o100644)
    with pytest.raises(CorruptImageError, match="root inode is not a directory"):
        open_image(_write(tmp_path, img))
    # unknown feature flag
    img = bytearray(good)
    struct.pack_into("<I", img, 8, 0x3 | 0x1000)
    with pytest.raises(FsError, match="unsupported feature flags 0x1000"):
        open_image(_write(tmp_path, img))


def test_directory_cycle_is_detected(tmp_path: Path) -> None:
    # root holds one directory "d" whose entries are the root's own entries
    sb_end = 76
    entry = _inode_le(0o040755, 12 + 4, 1, sb_end >> 2) + b"d\0\0\0"
    body = bytearray(4096)
    sb = struct.pack(
        "<IIII16sIIII16s", 0x28CD3D45, 4096, 3, 0, b"Compressed ROMFS", 0, 0, 0, 2, b"loop"
    )
    body[:64] = sb
    body[64:76] = _inode_le(0o040755, len(entry), 0, sb_end >> 2)
    body[76 : 76 + len(entry)] = entry
    p = _write(tmp_path, body)
    with pytest.raises(CorruptImageError, match="directory cycle"):
        open_image(p)


def test_block_pointer_errors(tmp_path: Path) -> None:
    data = zlib.compress(b"a" * 100)
    table = 76 + 16
    body = bytearray(4096)
    body[:64] = struct.pack(
        "<IIII16sIIII16s", 0x28CD3D45, 4096, 3, 0, b"Compressed ROMFS", 0, 0, 1, 2, b"x"
    )
    body[64:76] = _inode_le(0o040755, 16, 0, 76 >> 2)
    body[76:92] = _inode_le(0o100644, 100, 1, table >> 2) + b"f\0\0\0"
    for ptr, msg in (
        (table + 4 + len(data) + 9000, "too large"),
        (table + 4 + 5, "inflates to|decompression error"),  # a cut zlib stream
        (0x80000000 | (table + 4 + len(data)), "extension flags not in the superblock"),
        (table - 8, "ends at"),
    ):
        struct.pack_into("<I", body, table, ptr)
        body[table + 4 : table + 4 + len(data)] = data
        p = _write(tmp_path, body)
        with open_image(p) as fs:
            ino = fs.lookup(fs.root, b"f")
            with pytest.raises(CorruptImageError, match=msg):
                fs.read(ino, 0, 200)


def test_image_cut_short_while_open_reads_as_corruption(tmp_path: Path) -> None:
    """Page-cache reads take their blocks from the image file (``pread``),
    not from the flash mapping: a file truncated under an open image makes
    the blocks that are gone corruption, never SIGBUS."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "victim.txt").write_bytes(b"compressible victim text " * 4000)
    image = mkfs_cramfs(src, tmp_path / "cut.img")
    fs = open_image(image, MemoryConfig(arena_bytes=1 << 20))
    try:
        ino = next(it.ino for it in walk(fs) if it.path == b"victim.txt")
        image.write_bytes(b"")  # truncated to nothing, the inode is the same
        with pytest.raises(CorruptImageError, match="shorter than when it was opened"):
            fs.read(ino, 0, 100000)
    finally:
        fs.close()
