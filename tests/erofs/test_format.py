"""The shared on-disk declarations: sizes, round trips, checksums, encodings."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from fusefs.erofs import format as f
from fusefs.errors import CorruptImageError


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


def test_crc32c_vectors() -> None:
    assert f"{f.crc32c_standard(b'123456789'):08X}" == "E3069283"
    assert f.crc32c(b"") == 0xFFFFFFFF
    # the erofs raw state after the magic and a zero checksum field
    assert f.crc32c(bytes.fromhex("e2e1f5e000000000")) == 0x5045B54A


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
    assert f.xattr_split_name(b"user.foo") == (1, b"foo")
    assert f.xattr_split_name(b"system.posix_acl_access") == (2, b"")
    assert f.xattr_split_name(b"security.selinux") == (6, b"selinux")
    assert f.xattr_split_name(b"system.other") is None


def test_dirent_blocks_pack_unpack() -> None:
    names = sorted([b".", b"..", *(f"name-{i:04d}".encode() * (1 + i % 5) for i in range(300))])
    entries = [(n, 100 + i, 1) for i, n in enumerate(names)]
    blocks = f.dirent_blocks(entries, 4096)
    assert len(blocks) > 1
    seen = []
    for blk in blocks:
        raw = f.pack_dirent_block(blk)
        assert len(raw) <= 4096
        got = f.unpack_dirent_block(raw + bytes(4096 - len(raw)), 4096)
        seen += [(e.name, e.nid, e.file_type) for e in got]
    assert seen == entries
    with pytest.raises(CorruptImageError):
        f.unpack_dirent_block(bytes(4096), 4096)


def test_compact_layout() -> None:
    lay = f.compact_layout(ebase=1176, total=40, two_b=True)  # 1176 % 32 == 24
    assert lay.init4 == 2 and lay.two == 32 and lay.rest4 == 6
    assert lay.position(0) == (1176, 4)
    assert lay.position(2) == (1184, 2) and 1184 % 32 == 0
    assert lay.position(34) == (1184 + 64, 4)
    assert lay.next_pack_offset(39) == lay.end
    nolay = f.compact_layout(ebase=1176, total=3, two_b=False)
    assert nolay.two == 0 and nolay.position(2) == (1184, 4)


@pytest.mark.parametrize("amort", [4, 2])
def test_compact_pack_round_trip(amort: int) -> None:
    geo = f.pack_geometry(amort, 12)
    assert geo is not None
    assert geo.pack_size == (8 if amort == 4 else 32)
    rng = random.Random(amort)
    for _ in range(50):
        entries = [
            f.CompactEntry(rng.randrange(4), rng.randrange(1 << geo.lobits))
            for _ in range(geo.vcnt)
        ]
        base = rng.getrandbits(32)
        raw = f.encode_compact_pack(entries, base, geo)
        assert f.decode_compact_pack(raw, geo) == (entries, base)
    assert f.pack_geometry(2, 13) is None and f.pack_geometry(4, 15) is None


def test_compact_decode_block_addresses() -> None:
    geo = f.pack_geometry(2, 12)
    assert geo is not None
    # HEAD, NONHEAD(CBLKCNT 3), NONHEAD(d0 2), HEAD, HEAD ... big pcluster
    H, N = f.Z_EROFS_LCLUSTER_TYPE_HEAD1, f.Z_EROFS_LCLUSTER_TYPE_NONHEAD
    ents = [
        f.CompactEntry(H, 0),
        f.CompactEntry(N, 0x800 | 3),
        f.CompactEntry(N, 2),
        f.CompactEntry(H, 100),
    ]
    ents += [f.CompactEntry(H, 0)] * (16 - len(ents))
    d = f.decode_compact_entry(ents, 50, 3, 12, True)
    assert d.blkaddr == 53 and d.clusterofs == 100
    assert f.decode_compact_entry(ents, 50, 0, 12, True).blkaddr == 50
    assert f.decode_compact_entry(ents, 50, 4, 12, True).blkaddr == 54
    n1 = f.decode_compact_entry(ents, 50, 1, 12, True)
    assert (n1.delta0, n1.compressedblks, n1.delta1) == (1, 3, 2)


@pytest.mark.skipif(
    shutil.which("mkfs.erofs") is None, reason="mkfs.erofs (erofs-utils) is not installed"
)
def test_superblock_checksum_matches_mkfs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"hello")
    img = tmp_path / "img"
    subprocess.run(["mkfs.erofs", "--quiet", str(img), str(src)], check=True, capture_output=True)
    raw = img.read_bytes()
    sb = f.SuperBlock.unpack_from(raw, f.EROFS_SUPER_OFFSET)
    assert sb.magic == f.EROFS_SUPER_MAGIC_V1
    assert sb.feature_compat & f.EROFS_FEATURE_COMPAT_SB_CHKSUM
    region = raw[f.EROFS_SUPER_OFFSET : f.EROFS_SUPER_OFFSET + f.sb_checksum_length(sb.blkszbits)]
    assert f.superblock_checksum(region) == sb.checksum
    assert f.verify_superblock_checksum(region)
    broken = bytearray(region)
    broken[200] ^= 1
    assert not f.verify_superblock_checksum(broken)
