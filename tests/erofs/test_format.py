"""The shared on-disk declarations: sizes, round trips, field encodings."""

from __future__ import annotations

import os
import random

import pytest

from fusefs.erofs import format as f


def test_sizes() -> None:
    assert f.SuperBlock.SIZE == 128
    assert len(f.SuperBlock().pack()) == 128
    assert len(f.CompactInode(0, 0, 0, 0, 0, 0, 0, 0, 0, 0).pack()) == 32
    assert len(f.ExtendedInode(1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0).pack()) == 64
    assert len(f.Dirent(1, 12, 2).pack()) == 12
    assert len(f.XattrIbodyHeader(0, 0).pack()) == 12
    assert len(f.XattrEntry(1, 1, 1).pack()) == 4
    assert len(f.MapHeader(0, 0, 0, 0, 0).pack()) == 8
    assert len(f.LclusterIndex(0, 0, 0).pack()) == 8
    assert len(f.Lz4Cfgs(0xFFFF, 16).pack()) == 14
    assert len(f.LzmaCfgs(1 << 16, 0).pack()) == 14
    assert len(f.DeflateCfgs(15).pack()) == 6
    assert len(f.ZstdCfgs(0, 10).pack()) == 6
    assert len(f.ChunkIndex(0, 0, 5).pack()) == 8
    assert len(f.DeviceSlot(b"x", 1, 2).pack()) == 128


def test_round_trips() -> None:
    rng = random.Random(3)
    sb = f.SuperBlock(
        checksum=rng.getrandbits(32), feature_compat=3, blkszbits=12, root_nid_2b=36, inos=99,
        epoch=-5, fixed_nsec=7, blocks_lo=1234, uuid=rng.randbytes(16), volume_name=b"label",
        feature_incompat=0x13, u1=0xFFFF, packed_nid=77, build_time=8, rootnid_8b=0,
    )  # fmt: skip
    packed = sb.pack()
    assert f.SuperBlock.unpack_from(b"\0" * 5 + packed, 5) == f.SuperBlock.unpack_from(packed)
    assert f.SuperBlock.unpack_from(packed).pack() == packed
    assert f.SuperBlock.unpack_from(packed).volume_name.rstrip(b"\0") == b"label"
    for cls, args in (
        (f.CompactInode, (0x4, 3, 0o100644, 2, 77, 9, 5, 1, 1000, 1000, 0)),
        (f.ExtendedInode, (0x3, 0, 0o40755, 0, 1 << 40, 1, 2, 70000, 80000, -1, 999, 3)),
        (f.Dirent, (123456789012, 36, 7, 0)),
        (f.XattrIbodyHeader, (0xFFFFFFFF, 2)),
        (f.XattrEntry, (4, 1, 300)),
        (f.MapHeader, (1, 2, 0xF, 0x31, 0)),
        (f.LclusterIndex, (0x8001, 17, 999)),
        (f.Lz4Cfgs, (0xFFFF, 16)),
        (f.ZstdCfgs, (0, 10)),
        (f.XattrLongPrefix, (9, 1)),
    ):
        obj = cls(*args)
        assert cls.unpack_from(obj.pack()) == obj


def test_rdev() -> None:
    for major, minor in ((1, 3), (8, 0), (300, 70000), (0, 0), (4095, (1 << 20) - 1)):
        enc = f.new_encode_dev(major, minor)
        assert f.new_decode_dev(enc) == (major, minor)
        assert os.major(os.makedev(major, minor)) == major
    assert f.new_encode_dev(1, 3) == 0x103


def test_xattr_helpers() -> None:
    assert f.xattr_entry_size(4, 5) == 16
    assert f.xattr_entry_size(0, 0) == 4
    assert f.xattr_ibody_size(0) == 0
    assert f.xattr_ibody_size(1) == 12
    assert f.xattr_icount(f.xattr_ibody_size(9)) == 9


def test_layout_size_check_names_the_structure() -> None:
    f._check_size("struct erofs_dirent", 12, 12)
    with pytest.raises(RuntimeError, match="struct erofs_dirent is 13 bytes, expected 12"):
        f._check_size("struct erofs_dirent", 12, 12, 13)
