"""The format's hashes: crc32c and the superblock checksum, xxh32 and the
xattr name filter bit."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fusefs.erofs import format as f
from fusefs.erofs.hash import (
    crc32c,
    crc32c_standard,
    superblock_checksum,
    verify_superblock_checksum,
    xattr_filter_bit,
    xxh32,
)


def test_crc32c_vectors() -> None:
    assert f"{crc32c_standard(b'123456789'):08X}" == "E3069283"
    assert crc32c(b"") == 0xFFFFFFFF
    # the erofs raw state after the magic and a zero checksum field
    assert crc32c(bytes.fromhex("e2e1f5e000000000")) == 0x5045B54A


def test_xxh32_vectors() -> None:
    assert xxh32(b"") == 0x02CC5D05
    assert xxh32(b"abc") == 0x32D153FF
    assert xxh32(b"Nobody inspects the spammish repetition") == 0xE2293B2F  # >= 16 bytes


def test_xattr_filter_bit() -> None:
    seed = f.EROFS_XATTR_FILTER_SEED + f.EROFS_XATTR_INDEX_USER
    assert xattr_filter_bit(f.EROFS_XATTR_INDEX_USER, b"foo") == xxh32(b"foo", seed) % 32


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
    assert superblock_checksum(region) == sb.checksum
    assert verify_superblock_checksum(region)
    broken = bytearray(region)
    broken[200] ^= 1
    assert not verify_superblock_checksum(broken)
