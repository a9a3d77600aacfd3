"""cramfs on-disk format, declared once for the reader and the writer.

Sources (Linux kernel): include/uapi/linux/cramfs_fs.h, fs/cramfs/README and
Documentation/filesystems/cramfs.rst.
cramfs is host-endian: the kernel never swaps, so an image is either
little- or big-endian and every u32 (superblock, inode words, block pointers)
and the u16 prefix of direct compressed blocks is read in that order.  The
inode is three u32 words of C bitfields; the bit positions differ by byte
order, hence the explicit shifts and masks below.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Final, Literal

Endian = Literal["little", "big"]

CRAMFS_MAGIC: Final = 0x28CD3D45
CRAMFS_SIGNATURE: Final = b"Compressed ROMFS"
CRAMFS_BLOCK_SIZE: Final = 4096
CRAMFS_PAD_SIZE: Final = 512  # the optional boot area in front of the superblock
CRAMFS_SB_SIZE: Final = 76
CRAMFS_INODE_SIZE: Final = 12
CRAMFS_DEFAULT_NAME: Final = b"Compressed"

# superblock flags
CRAMFS_FLAG_FSID_VERSION_2: Final = 0x00000001
CRAMFS_FLAG_SORTED_DIRS: Final = 0x00000002
CRAMFS_FLAG_HOLES: Final = 0x00000100
CRAMFS_FLAG_WRONG_SIGNATURE: Final = 0x00000200
CRAMFS_FLAG_SHIFTED_ROOT_OFFSET: Final = 0x00000400
CRAMFS_FLAG_EXT_BLOCK_POINTERS: Final = 0x00000800
# bits 0-7 are compatible; anything else outside this set makes the kernel refuse the image
CRAMFS_SUPPORTED_FLAGS: Final = 0xFF | 0x100 | 0x200 | 0x400 | 0x800

# extended block pointers (kernel >= 4.15)
CRAMFS_BLK_FLAG_UNCOMPRESSED: Final = 1 << 31
CRAMFS_BLK_FLAG_DIRECT_PTR: Final = 1 << 30
CRAMFS_BLK_FLAGS: Final = CRAMFS_BLK_FLAG_UNCOMPRESSED | CRAMFS_BLK_FLAG_DIRECT_PTR
CRAMFS_BLK_DIRECT_PTR_SHIFT: Final = 2

# field widths of struct cramfs_inode
CRAMFS_MODE_WIDTH: Final = 16
CRAMFS_UID_WIDTH: Final = 16
CRAMFS_SIZE_WIDTH: Final = 24
CRAMFS_GID_WIDTH: Final = 8
CRAMFS_NAMELEN_WIDTH: Final = 6
CRAMFS_OFFSET_WIDTH: Final = 26
CRAMFS_MAXPATHLEN: Final = ((1 << CRAMFS_NAMELEN_WIDTH) - 1) << 2  # 252
CRAMFS_MAX_FILE_SIZE: Final = (1 << CRAMFS_SIZE_WIDTH) - 1
# the kernel refuses compressed blocks longer than two pages
CRAMFS_MAX_BLOCK_LEN: Final = 2 * CRAMFS_BLOCK_SIZE

_FMT: Final = {"little": "<", "big": ">"}


def u32(endian: Endian) -> struct.Struct:
    return struct.Struct(_FMT[endian] + "I")


def u16(endian: Endian) -> struct.Struct:
    return struct.Struct(_FMT[endian] + "H")


@dataclass(frozen=True, slots=True)
class CramfsInode:
    """struct cramfs_inode, decoded.  ``offset`` is in 4-byte units."""

    mode: int
    uid: int
    size: int
    gid: int
    namelen: int  # name length in 4-byte units
    offset: int

    def pack(self, endian: Endian) -> bytes:
        """The 12 on-disk bytes; every field must already fit its width."""
        for name, value, width in (
            ("mode", self.mode, CRAMFS_MODE_WIDTH),
            ("uid", self.uid, CRAMFS_UID_WIDTH),
            ("size", self.size, CRAMFS_SIZE_WIDTH),
            ("gid", self.gid, CRAMFS_GID_WIDTH),
            ("namelen", self.namelen, CRAMFS_NAMELEN_WIDTH),
            ("offset", self.offset, CRAMFS_OFFSET_WIDTH),
        ):
            if not 0 <= value < (1 << width):
                raise ValueError(f"cramfs inode {name} {value} does not fit {width} bits")
        if endian == "little":
            w0 = self.mode | self.uid << 16
            w1 = self.size | self.gid << 24
            w2 = self.namelen | self.offset << 6
        else:
            w0 = self.mode << 16 | self.uid
            w1 = self.size << 8 | self.gid
            w2 = self.namelen << 26 | self.offset
        return _INODE[endian].pack(w0, w1, w2)

    @classmethod
    def unpack_from(cls, buf: memoryview | bytes, endian: Endian) -> CramfsInode:
        w0, w1, w2 = _INODE[endian].unpack_from(buf)
        if endian == "little":
            return cls(w0 & 0xFFFF, w0 >> 16, w1 & 0xFFFFFF, w1 >> 24, w2 & 0x3F, w2 >> 6)
        return cls(w0 >> 16, w0 & 0xFFFF, w1 >> 8, w1 & 0xFF, w2 >> 26, w2 & 0x03FFFFFF)


_INODE: Final = {e: struct.Struct(_FMT[e] + "III") for e in ("little", "big")}


@dataclass(frozen=True, slots=True)
class CramfsSuper:
    """struct cramfs_super (76 bytes; the root inode is its last 12)."""

    magic: int
    size: int
    flags: int
    future: int
    signature: bytes
    crc: int
    edition: int
    blocks: int
    files: int
    name: bytes
    root: CramfsInode

    def pack(self, endian: Endian) -> bytes:
        head = _SUPER[endian].pack(
            self.magic,
            self.size,
            self.flags,
            self.future,
            self.signature,
            self.crc,
            self.edition,
            self.blocks,
            self.files,
            self.name,
        )
        return head + self.root.pack(endian)

    @classmethod
    def unpack_from(cls, buf: memoryview | bytes, endian: Endian) -> CramfsSuper:
        magic, size, flags, future, sig, crc, edition, blocks, files, name = _SUPER[
            endian
        ].unpack_from(buf)
        root = CramfsInode.unpack_from(bytes(buf[64:76]), endian)
        return cls(magic, size, flags, future, sig, crc, edition, blocks, files, name, root)


_SUPER: Final = {e: struct.Struct(_FMT[e] + "IIII16sIIII16s") for e in ("little", "big")}
CRC_OFFSET: Final = 32  # fsid.crc inside the superblock

assert _SUPER["little"].size + CRAMFS_INODE_SIZE == CRAMFS_SB_SIZE
assert _INODE["little"].size == CRAMFS_INODE_SIZE


def detect_endian(first4: bytes) -> Endian | None:
    """The byte order whose u32 reading of ``first4`` is the magic, if any."""
    if len(first4) < 4:
        return None
    if int.from_bytes(first4, "little") == CRAMFS_MAGIC:
        return "little"
    if int.from_bytes(first4, "big") == CRAMFS_MAGIC:
        return "big"
    return None


def image_crc(image: bytes | bytearray | memoryview, start: int, size: int) -> int:
    """CRC-32 over ``[start, size)`` with the 4-byte crc field taken as zero."""
    crc = zlib.crc32(image[start : start + CRC_OFFSET])
    crc = zlib.crc32(b"\0\0\0\0", crc)
    crc = zlib.crc32(image[start + CRC_OFFSET + 4 : size], crc)
    return crc & 0xFFFFFFFF


def padded_name_len(n: int) -> int:
    """Bytes a name of ``n`` bytes takes on disk: NUL-padded to 4, no extra NUL."""
    return (n + 3) & ~3


def nr_blocks(size: int) -> int:
    return (size + CRAMFS_BLOCK_SIZE - 1) // CRAMFS_BLOCK_SIZE


def rdev_encode(major: int, minor: int) -> int:
    """The kernel decodes device inodes with the old 8:8 encoding."""
    return major << 8 | minor


def rdev_decode(value: int) -> tuple[int, int]:
    return (value >> 8) & 0xFF, value & 0xFF
