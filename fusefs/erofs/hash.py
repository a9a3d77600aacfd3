"""The two hashes of the EROFS format and what each one covers.

crc32c (Castagnoli) checksums the superblock's block when
EROFS_FEATURE_COMPAT_SB_CHKSUM is set; xxh32 hashes xattr names into each
inode's name filter (EROFS_FEATURE_COMPAT_XATTR_FILTER).  The reader
verifies, the writer stores, both through this module.

The kernel takes both hashes from ``lib/`` (``crc32c()``, ``xxh32()`` in
``lib/xxhash.c``) and applies them in ``fs/erofs/super.c``
(``erofs_superblock_csum_verify``) and ``fs/erofs/xattr.c``
(``erofs_getxattr``).  erofs-utils keeps ``erofs_crc32c`` in
``include/erofs/internal.h``, ``xxh32`` in ``lib/xxhash.c``, and applies them
in ``lib/super.c`` (``erofs_enable_sb_chksum``) and ``lib/xattr.c``
(``erofs_export_xattr_ibody``).
"""

from __future__ import annotations

from typing import Final

from fusefs.erofs.format import EROFS_XATTR_FILTER_BITS, EROFS_XATTR_FILTER_SEED

_M32: Final = 0xFFFFFFFF

# ---------------------------------------------------------------------------
# crc32c ("Castagnoli", reflected poly 0x82F63B78) and the superblock checksum


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes | bytearray | memoryview, crc: int = 0xFFFFFFFF) -> int:
    """The raw CRC-32C state after ``data`` starting from ``crc`` (no final
    inversion): the erofs variant.  The standard CRC-32C of ``data`` is
    ``crc32c(data) ^ 0xFFFFFFFF``."""
    table = _CRC32C_TABLE
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c_standard(data: bytes | bytearray | memoryview) -> int:
    """The usual CRC-32C (iSCSI) of ``data``."""
    return crc32c(data) ^ _M32


def superblock_checksum(region: bytes | bytearray | memoryview) -> int:
    """The checksum of ``region`` = ``image[1024 : 1024 + sb_checksum_length]``
    (:func:`fusefs.erofs.format.sb_checksum_length`); the checksum field
    inside it (bytes 4..8) counts as zero."""
    mv = memoryview(region).cast("B")
    # erofs: the superblock checksum is crc32c over the block with the field zeroed
    state = crc32c(bytes(mv[0:4]) + b"\0\0\0\0")
    return crc32c(mv[8:], state)


def verify_superblock_checksum(region: bytes | bytearray | memoryview) -> bool:
    stored = int.from_bytes(bytes(memoryview(region)[4:8]), "little")
    return stored == superblock_checksum(region)


# ---------------------------------------------------------------------------
# xxh32 and the xattr name filter

_XXH_P1: Final = 0x9E3779B1
_XXH_P2: Final = 0x85EBCA77
_XXH_P3: Final = 0xC2B2AE3D
_XXH_P4: Final = 0x27D4EB2F
_XXH_P5: Final = 0x165667B1


def _rotl32(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def xxh32(data: bytes, seed: int = 0) -> int:
    """XXH32 of ``data`` (the hash of the xattr name filter)."""
    n = len(data)
    i = 0
    if n >= 16:
        v = [
            (seed + _XXH_P1 + _XXH_P2) & _M32,
            (seed + _XXH_P2) & _M32,
            seed & _M32,
            (seed - _XXH_P1) & _M32,
        ]
        while i + 16 <= n:
            for k in range(4):
                lane = int.from_bytes(data[i + 4 * k : i + 4 * k + 4], "little")
                v[k] = (_rotl32((v[k] + lane * _XXH_P2) & _M32, 13) * _XXH_P1) & _M32
            i += 16
        h = (_rotl32(v[0], 1) + _rotl32(v[1], 7) + _rotl32(v[2], 12) + _rotl32(v[3], 18)) & _M32
    else:
        h = (seed + _XXH_P5) & _M32
    h = (h + n) & _M32
    while i + 4 <= n:
        lane = int.from_bytes(data[i : i + 4], "little")
        h = (_rotl32((h + lane * _XXH_P3) & _M32, 17) * _XXH_P4) & _M32
        i += 4
    while i < n:
        h = (_rotl32((h + data[i] * _XXH_P5) & _M32, 11) * _XXH_P1) & _M32
        i += 1
    h ^= h >> 15
    h = (h * _XXH_P2) & _M32
    h ^= h >> 13
    h = (h * _XXH_P3) & _M32
    h ^= h >> 16
    return h


def xattr_filter_bit(name_index: int, suffix: bytes) -> int:
    """The name-filter bit of an xattr (short prefix index, name without it):
    ``xxh32(suffix, EROFS_XATTR_FILTER_SEED + index) % 32``; a set bit in
    ``h_name_filter`` means no xattr of the inode hashes there."""
    return xxh32(suffix, (EROFS_XATTR_FILTER_SEED + name_index) & _M32) & (
        EROFS_XATTR_FILTER_BITS - 1
    )
