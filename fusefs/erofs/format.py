"""The EROFS on-disk format, declared once for the reader and the writer.

Declarations only: structures as precompiled little-endian ``struct.Struct``
objects with a frozen dataclass each (``unpack_from(buf, off)`` / ``pack()``),
the kernel's constants under the kernel's names, the id NewTypes, and small
pure helpers that say where things are or how big they are (``i_format``
bits, rdev, xattr entry sizes, map header and full index positions).  The
kernel keeps the same in ``fs/erofs/erofs_fs.h`` (``include/erofs_fs.h`` in
erofs-utils) and checks the sizes in ``erofs_check_ondisk_layout_definitions``;
so does this module, at import.

The algorithms over these structures live beside it, one concern each, for
the reader and the writer alike: :mod:`fusefs.erofs.hash` (superblock crc32c,
xattr name filter xxh32), :mod:`fusefs.erofs.dirent` (directory blocks) and
:mod:`fusefs.erofs.zindex` (lcluster indexes).  Sources (Linux kernel):
fs/erofs/erofs_fs.h and Documentation/filesystems/erofs.rst.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import ClassVar, Final, NamedTuple, NewType

Nid = NewType("Nid", int)
BlkAddr = NewType("BlkAddr", int)

# ---------------------------------------------------------------------------
# Superblock and features

EROFS_SUPER_MAGIC_V1: Final = 0xE0F5E1E2
EROFS_SUPER_OFFSET: Final = 1024
EROFS_SB_BASE_SIZE: Final = 128
EROFS_SB_EXTSLOT_SIZE: Final = 16
EROFS_MIN_BLKSZBITS: Final = 9  # 512-byte blocks
EROFS_MAX_BLKSZBITS: Final = 16  # 64 KiB blocks (kernel: <= PAGE_SHIFT of the host)
EROFS_ISLOTBITS: Final = 5  # nids count 32-byte slots
EROFS_SLOTSIZE: Final = 1 << EROFS_ISLOTBITS
EROFS_NAME_LEN: Final = 255
EROFS_NULL_ADDR: Final = 0xFFFFFFFF  # chunk hole / unused start block (32-bit forms)
EROFS_NULL_ADDR_48: Final = (1 << 48) - 1  # the same in 48 bits (48BIT forms)
EROFS_DEVT_SLOT_SIZE: Final = 128


class CompatFeature(enum.IntFlag):
    """``feature_compat``: unknown bits are ignored."""

    EROFS_FEATURE_COMPAT_SB_CHKSUM = 0x01
    EROFS_FEATURE_COMPAT_MTIME = 0x02
    EROFS_FEATURE_COMPAT_XATTR_FILTER = 0x04
    EROFS_FEATURE_COMPAT_SHARED_EA_IN_METABOX = 0x08
    EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX = 0x10
    EROFS_FEATURE_COMPAT_ISHARE_XATTRS = 0x20


class IncompatFeature(enum.IntFlag):
    """``feature_incompat``: any bit a reader does not know refuses the image.

    Several names share one bit, as in the kernel."""

    EROFS_FEATURE_INCOMPAT_ZERO_PADDING = 0x001
    EROFS_FEATURE_INCOMPAT_COMPR_CFGS = 0x002
    EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER = 0x002
    EROFS_FEATURE_INCOMPAT_CHUNKED_FILE = 0x004
    EROFS_FEATURE_INCOMPAT_DEVICE_TABLE = 0x008
    EROFS_FEATURE_INCOMPAT_COMPR_HEAD2 = 0x008
    EROFS_FEATURE_INCOMPAT_ZTAILPACKING = 0x010
    EROFS_FEATURE_INCOMPAT_FRAGMENTS = 0x020
    EROFS_FEATURE_INCOMPAT_DEDUPE = 0x020
    EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES = 0x040
    EROFS_FEATURE_INCOMPAT_48BIT = 0x080
    EROFS_FEATURE_INCOMPAT_METABOX = 0x100


EROFS_FEATURE_COMPAT_SB_CHKSUM: Final = CompatFeature.EROFS_FEATURE_COMPAT_SB_CHKSUM
EROFS_FEATURE_COMPAT_MTIME: Final = CompatFeature.EROFS_FEATURE_COMPAT_MTIME
EROFS_FEATURE_COMPAT_XATTR_FILTER: Final = CompatFeature.EROFS_FEATURE_COMPAT_XATTR_FILTER
EROFS_FEATURE_COMPAT_SHARED_EA_IN_METABOX: Final = (
    CompatFeature.EROFS_FEATURE_COMPAT_SHARED_EA_IN_METABOX
)
EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX: Final = CompatFeature.EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX
EROFS_FEATURE_COMPAT_ISHARE_XATTRS: Final = CompatFeature.EROFS_FEATURE_COMPAT_ISHARE_XATTRS
EROFS_FEATURE_INCOMPAT_ZERO_PADDING: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_ZERO_PADDING
EROFS_FEATURE_INCOMPAT_LZ4_0PADDING: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_ZERO_PADDING
EROFS_FEATURE_INCOMPAT_COMPR_CFGS: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_COMPR_CFGS
EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER
EROFS_FEATURE_INCOMPAT_CHUNKED_FILE: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE
EROFS_FEATURE_INCOMPAT_DEVICE_TABLE: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE
EROFS_FEATURE_INCOMPAT_COMPR_HEAD2: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_COMPR_HEAD2
EROFS_FEATURE_INCOMPAT_ZTAILPACKING: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_ZTAILPACKING
EROFS_FEATURE_INCOMPAT_FRAGMENTS: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_FRAGMENTS
EROFS_FEATURE_INCOMPAT_DEDUPE: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_DEDUPE
EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES
EROFS_FEATURE_INCOMPAT_48BIT: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_48BIT
EROFS_FEATURE_INCOMPAT_METABOX: Final = IncompatFeature.EROFS_FEATURE_INCOMPAT_METABOX
EROFS_ALL_FEATURE_INCOMPAT: Final = 0x1FF  # every bit the 6.18 kernel knows

# One display name per incompat bit (bits with two names show both).
INCOMPAT_NAMES: Final[dict[int, str]] = {
    0x001: "zero_padding",
    0x002: "compr_cfgs|big_pcluster",
    0x004: "chunked_file",
    0x008: "device_table|compr_head2",
    0x010: "ztailpacking",
    0x020: "fragments|dedupe",
    0x040: "xattr_prefixes",
    0x080: "48bit",
    0x100: "metabox",
}
COMPAT_NAMES: Final[dict[int, str]] = {
    0x01: "sb_chksum",
    0x02: "mtime",
    0x04: "xattr_filter",
    0x08: "shared_ea_in_metabox",
    0x10: "plain_xattr_pfx",
    0x20: "ishare_xattrs",
}


def feature_names(bits: int, names: dict[int, str]) -> list[str]:
    """Names of the set bits; unknown bits appear as ``unknown-0x..``."""
    out = []
    bit = 1
    while bit <= bits:
        if bits & bit:
            out.append(names.get(bit, f"unknown-{bit:#x}"))
        bit <<= 1
    return out


_SB = struct.Struct("<IIIBBHQqIIII16s16sIHHHBBIQBBHIQ8s")
_SB_EXT_METABOX = struct.Struct("<Q8x")
EROFS_SB_METABOX_NID_OFFSET: Final = 0x80  # metabox_nid: the first extension slot


@dataclass(frozen=True, slots=True)
class SuperBlock:
    """``struct erofs_super_block``: 128 bytes at byte 1024 of the image."""

    SIZE: ClassVar[int] = 128

    magic: int = EROFS_SUPER_MAGIC_V1
    checksum: int = 0
    feature_compat: int = 0
    blkszbits: int = 12
    sb_extslots: int = 0
    root_nid_2b: int = 0  # root nid; high 16 bits of the block count under 48BIT
    inos: int = 0
    epoch: int = 0  # base seconds of compact-inode mtimes (was build_time)
    fixed_nsec: int = 0
    blocks_lo: int = 0
    meta_blkaddr: int = 0
    xattr_blkaddr: int = 0
    uuid: bytes = bytes(16)
    volume_name: bytes = bytes(16)
    feature_incompat: int = 0
    u1: int = 0  # available_compr_algs (COMPR_CFGS) or lz4_max_distance
    extra_devices: int = 0
    devt_slotoff: int = 0
    dirblkbits: int = 0
    xattr_prefix_count: int = 0
    xattr_prefix_start: int = 0
    packed_nid: int = 0
    xattr_filter_reserved: int = 0
    ishare_xattr_prefix_id: int = 0
    reserved: int = 0
    build_time: int = 0
    rootnid_8b: int = 0
    reserved2: bytes = bytes(8)

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> SuperBlock:
        return cls(*_SB.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _SB.pack(
            self.magic, self.checksum, self.feature_compat, self.blkszbits, self.sb_extslots,
            self.root_nid_2b, self.inos, self.epoch, self.fixed_nsec, self.blocks_lo,
            self.meta_blkaddr, self.xattr_blkaddr, self.uuid, self.volume_name,
            self.feature_incompat, self.u1, self.extra_devices, self.devt_slotoff,
            self.dirblkbits, self.xattr_prefix_count, self.xattr_prefix_start, self.packed_nid,
            self.xattr_filter_reserved, self.ishare_xattr_prefix_id, self.reserved,
            self.build_time, self.rootnid_8b, self.reserved2,
        )  # fmt: skip

    @property
    def block_size(self) -> int:
        return 1 << self.blkszbits

    @property
    def sb_size(self) -> int:
        return EROFS_SB_BASE_SIZE + EROFS_SB_EXTSLOT_SIZE * self.sb_extslots

    @property
    def is_48bit(self) -> bool:
        return bool(self.feature_incompat & EROFS_FEATURE_INCOMPAT_48BIT)

    @property
    def root_nid(self) -> int:
        if self.is_48bit and self.rootnid_8b:
            return self.rootnid_8b
        return self.root_nid_2b

    @property
    def blocks(self) -> int:
        if self.is_48bit and self.rootnid_8b:
            return self.blocks_lo | (self.root_nid_2b << 32)
        return self.blocks_lo


def metabox_nid_from(buf: bytes | bytearray | memoryview, off: int) -> int:
    """``metabox_nid``, the first extended superblock slot (needs sb_extslots >= 1)."""
    return int(_SB_EXT_METABOX.unpack_from(buf, off)[0])


def metabox_slot(metabox_nid: int) -> bytes:
    """The first extended superblock slot holding ``metabox_nid``."""
    return _SB_EXT_METABOX.pack(metabox_nid)


def sb_checksum_length(blkszbits: int) -> int:
    """Bytes the superblock checksum covers from offset 1024 (see
    :func:`fusefs.erofs.hash.superblock_checksum`): the rest of the
    superblock's block, or one block when blocks are <= 1024 bytes."""
    bs = 1 << blkszbits
    return bs - EROFS_SUPER_OFFSET if bs > EROFS_SUPER_OFFSET else bs


# ---------------------------------------------------------------------------
# Inodes

EROFS_INODE_LAYOUT_COMPACT: Final = 0
EROFS_INODE_LAYOUT_EXTENDED: Final = 1
EROFS_I_VERSION_BIT: Final = 0
EROFS_I_DATALAYOUT_BIT: Final = 1
EROFS_I_DATALAYOUT_BITS: Final = 3
EROFS_I_NLINK_1_BIT: Final = 4  # 6.15+: compact non-dir with nlink 1 (48BIT only)
EROFS_I_DOT_OMITTED_BIT: Final = 4  # 6.15+: directory without a "." dirent
EROFS_I_ALL: Final = (1 << 5) - 1  # bits a 6.15+ kernel accepts in i_format

# A nid with bit 63 set names a slot inside the metabox inode's data (METABOX).
EROFS_DIRENT_NID_METABOX_BIT: Final = 63
EROFS_DIRENT_NID_MASK: Final = (1 << EROFS_DIRENT_NID_METABOX_BIT) - 1


def nid_in_metabox(nid: int) -> bool:
    return bool(nid >> EROFS_DIRENT_NID_METABOX_BIT)


class DataLayout(enum.IntEnum):
    EROFS_INODE_FLAT_PLAIN = 0
    EROFS_INODE_COMPRESSED_FULL = 1
    EROFS_INODE_FLAT_INLINE = 2
    EROFS_INODE_COMPRESSED_COMPACT = 3
    EROFS_INODE_CHUNK_BASED = 4


EROFS_INODE_FLAT_PLAIN: Final = DataLayout.EROFS_INODE_FLAT_PLAIN
EROFS_INODE_COMPRESSED_FULL: Final = DataLayout.EROFS_INODE_COMPRESSED_FULL
EROFS_INODE_FLAT_INLINE: Final = DataLayout.EROFS_INODE_FLAT_INLINE
EROFS_INODE_COMPRESSED_COMPACT: Final = DataLayout.EROFS_INODE_COMPRESSED_COMPACT
EROFS_INODE_CHUNK_BASED: Final = DataLayout.EROFS_INODE_CHUNK_BASED
EROFS_INODE_DATALAYOUT_MAX: Final = 5


def i_format(version: int, layout: int) -> int:
    """``i_format`` from the inode version (0 compact, 1 extended) and data layout."""
    return (version << EROFS_I_VERSION_BIT) | (layout << EROFS_I_DATALAYOUT_BIT)


def i_format_version(fmt: int) -> int:
    return (fmt >> EROFS_I_VERSION_BIT) & 1


def i_format_layout(fmt: int) -> int:
    return (fmt >> EROFS_I_DATALAYOUT_BIT) & ((1 << EROFS_I_DATALAYOUT_BITS) - 1)


# i_u of a chunk-based inode: le16 format
EROFS_CHUNK_FORMAT_BLKBITS_MASK: Final = 0x001F
EROFS_CHUNK_FORMAT_INDEXES: Final = 0x0020
EROFS_CHUNK_FORMAT_48BIT: Final = 0x0040
EROFS_CHUNK_FORMAT_ALL: Final = 0x007F

_COMPACT = struct.Struct("<HHHHIIIIHHI")
_EXTENDED = struct.Struct("<HHHHQIIIIqII16x")


@dataclass(frozen=True, slots=True)
class CompactInode:
    """``struct erofs_inode_compact`` (32 bytes)."""

    SIZE: ClassVar[int] = 32

    i_format: int
    i_xattr_icount: int
    i_mode: int
    i_nb: int  # nlink, or startblk_hi/blocks_hi with NLINK_1
    i_size: int
    i_mtime: int  # seconds after the superblock's epoch
    i_u: int
    i_ino: int
    i_uid: int
    i_gid: int
    i_reserved: int = 0

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> CompactInode:
        return cls(*_COMPACT.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _COMPACT.pack(
            self.i_format, self.i_xattr_icount, self.i_mode, self.i_nb, self.i_size,
            self.i_mtime, self.i_u, self.i_ino, self.i_uid, self.i_gid, self.i_reserved,
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExtendedInode:
    """``struct erofs_inode_extended`` (64 bytes)."""

    SIZE: ClassVar[int] = 64

    i_format: int
    i_xattr_icount: int
    i_mode: int
    i_nb: int  # startblk_hi/blocks_hi under 48BIT, else 0
    i_size: int
    i_u: int
    i_ino: int
    i_uid: int
    i_gid: int
    i_mtime: int
    i_mtime_nsec: int
    i_nlink: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> ExtendedInode:
        return cls(*_EXTENDED.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _EXTENDED.pack(
            self.i_format, self.i_xattr_icount, self.i_mode, self.i_nb, self.i_size, self.i_u,
            self.i_ino, self.i_uid, self.i_gid, self.i_mtime, self.i_mtime_nsec, self.i_nlink,
        )  # fmt: skip


def new_encode_dev(major: int, minor: int) -> int:
    """The kernel's ``new_encode_dev``: how a device number is stored in ``i_u``."""
    return (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFF) << 12)


def new_decode_dev(value: int) -> tuple[int, int]:
    """``(major, minor)`` from an ``i_u`` device number."""
    major = (value >> 8) & 0xFFF
    minor = (value & 0xFF) | ((value >> 12) & 0xFFF00)
    return major, minor


# ---------------------------------------------------------------------------
# Chunk-based files


class ChunkIndex(NamedTuple):
    """``struct erofs_inode_chunk_index`` (8 bytes, with EROFS_CHUNK_FORMAT_INDEXES)."""

    startblk_hi: int  # 48BIT only (was "advise")
    device_id: int
    startblk_lo: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> ChunkIndex:
        return cls(*_CHUNK_INDEX.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _CHUNK_INDEX.pack(self.startblk_hi, self.device_id, self.startblk_lo)


_CHUNK_INDEX = struct.Struct("<HHI")
CHUNK_INDEX_SIZE: Final = _CHUNK_INDEX.size
CHUNK_BLOCKMAP = struct.Struct("<I")  # 4-byte block map entry: le32 startblk

# ---------------------------------------------------------------------------
# Device table


_DEVICE_SLOT = struct.Struct("<64sII56x")


@dataclass(frozen=True, slots=True)
class DeviceSlot:
    """``struct erofs_deviceslot`` (128 bytes)."""

    SIZE: ClassVar[int] = 128

    tag: bytes
    blocks_lo: int
    uniaddr_lo: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> DeviceSlot:
        return cls(*_DEVICE_SLOT.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _DEVICE_SLOT.pack(self.tag, self.blocks_lo, self.uniaddr_lo)


# ---------------------------------------------------------------------------
# Directories


class FileType(enum.IntEnum):
    EROFS_FT_UNKNOWN = 0
    EROFS_FT_REG_FILE = 1
    EROFS_FT_DIR = 2
    EROFS_FT_CHRDEV = 3
    EROFS_FT_BLKDEV = 4
    EROFS_FT_FIFO = 5
    EROFS_FT_SOCK = 6
    EROFS_FT_SYMLINK = 7


EROFS_FT_UNKNOWN: Final = FileType.EROFS_FT_UNKNOWN
EROFS_FT_REG_FILE: Final = FileType.EROFS_FT_REG_FILE
EROFS_FT_DIR: Final = FileType.EROFS_FT_DIR
EROFS_FT_CHRDEV: Final = FileType.EROFS_FT_CHRDEV
EROFS_FT_BLKDEV: Final = FileType.EROFS_FT_BLKDEV
EROFS_FT_FIFO: Final = FileType.EROFS_FT_FIFO
EROFS_FT_SOCK: Final = FileType.EROFS_FT_SOCK
EROFS_FT_SYMLINK: Final = FileType.EROFS_FT_SYMLINK
EROFS_FT_MAX: Final = 8

# S_IFMT bits <-> file type (fs_umode_to_ftype)
_S_IFMT_TO_FT: Final[dict[int, FileType]] = {
    0o100000: FileType.EROFS_FT_REG_FILE,
    0o040000: FileType.EROFS_FT_DIR,
    0o020000: FileType.EROFS_FT_CHRDEV,
    0o060000: FileType.EROFS_FT_BLKDEV,
    0o010000: FileType.EROFS_FT_FIFO,
    0o140000: FileType.EROFS_FT_SOCK,
    0o120000: FileType.EROFS_FT_SYMLINK,
}
_FT_TO_S_IFMT: Final[dict[int, int]] = {int(v): k for k, v in _S_IFMT_TO_FT.items()}


def ftype_from_mode(mode: int) -> FileType:
    """The dirent ``file_type`` of an inode mode (EROFS_FT_UNKNOWN if none)."""
    return _S_IFMT_TO_FT.get(mode & 0o170000, FileType.EROFS_FT_UNKNOWN)


def mode_type_from_ftype(ftype: int) -> int:
    """The S_IFMT bits of a dirent ``file_type`` (0 for unknown)."""
    return _FT_TO_S_IFMT.get(ftype, 0)


# Public so that the dirent block codec can decode a block's dirents as plain
# tuples (a dataclass per dirent costs six times as much).
DIRENT_STRUCT: Final = struct.Struct("<QHBB")


@dataclass(frozen=True, slots=True)
class Dirent:
    """``struct erofs_dirent`` (12 bytes); names follow all dirents of the block."""

    SIZE: ClassVar[int] = 12

    nid: int
    nameoff: int
    file_type: int
    reserved: int = 0

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> Dirent:
        return cls(*DIRENT_STRUCT.unpack_from(buf, off))

    def pack(self) -> bytes:
        return DIRENT_STRUCT.pack(self.nid, self.nameoff, self.file_type, self.reserved)


# ---------------------------------------------------------------------------
# Extended attributes

EROFS_XATTR_INDEX_USER: Final = 1
EROFS_XATTR_INDEX_POSIX_ACL_ACCESS: Final = 2
EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT: Final = 3
EROFS_XATTR_INDEX_TRUSTED: Final = 4
EROFS_XATTR_INDEX_LUSTRE: Final = 5
EROFS_XATTR_INDEX_SECURITY: Final = 6
EROFS_XATTR_LONG_PREFIX: Final = 0x80
EROFS_XATTR_LONG_PREFIX_MASK: Final = 0x7F
EROFS_XATTR_FILTER_BITS: Final = 32
EROFS_XATTR_FILTER_DEFAULT: Final = 0xFFFFFFFF
EROFS_XATTR_FILTER_SEED: Final = 0x25BBE08F

# Short name prefixes by e_name_index; the two ACL indexes name a whole xattr.
XATTR_PREFIXES: Final[dict[int, bytes]] = {
    EROFS_XATTR_INDEX_USER: b"user.",
    EROFS_XATTR_INDEX_POSIX_ACL_ACCESS: b"system.posix_acl_access",
    EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT: b"system.posix_acl_default",
    EROFS_XATTR_INDEX_TRUSTED: b"trusted.",
    EROFS_XATTR_INDEX_LUSTRE: b"lustre.",
    EROFS_XATTR_INDEX_SECURITY: b"security.",
}


_XATTR_IBODY_HEADER = struct.Struct("<IB7x")
_XATTR_ENTRY = struct.Struct("<BBH")
_XATTR_LONG_PREFIX = struct.Struct("<HB")


@dataclass(frozen=True, slots=True)
class XattrIbodyHeader:
    """``struct erofs_xattr_ibody_header`` (12 bytes), followed by
    ``h_shared_count`` le32 shared xattr ids and then inline entries."""

    SIZE: ClassVar[int] = 12

    h_name_filter: int
    h_shared_count: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> XattrIbodyHeader:
        return cls(*_XATTR_IBODY_HEADER.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _XATTR_IBODY_HEADER.pack(self.h_name_filter, self.h_shared_count)


@dataclass(frozen=True, slots=True)
class XattrEntry:
    """``struct erofs_xattr_entry`` (4 bytes), then name suffix and value."""

    SIZE: ClassVar[int] = 4

    e_name_len: int
    e_name_index: int
    e_value_size: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> XattrEntry:
        return cls(*_XATTR_ENTRY.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _XATTR_ENTRY.pack(self.e_name_len, self.e_name_index, self.e_value_size)


@dataclass(frozen=True, slots=True)
class XattrLongPrefix:
    """``struct erofs_xattr_long_prefix`` header: ``size`` counts the base
    index byte and the infix (record = le16 size + size bytes, 4-aligned)."""

    SIZE: ClassVar[int] = 3

    size: int
    base_index: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> XattrLongPrefix:
        return cls(*_XATTR_LONG_PREFIX.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _XATTR_LONG_PREFIX.pack(self.size, self.base_index)


def round_up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def xattr_entry_size(name_len: int, value_size: int) -> int:
    """Bytes an xattr entry occupies (4-byte aligned)."""
    return round_up(XattrEntry.SIZE + name_len + value_size, 4)


def xattr_ibody_size(icount: int) -> int:
    """``xattr_isize`` from ``i_xattr_icount``."""
    return 0 if icount == 0 else XattrIbodyHeader.SIZE + 4 * (icount - 1)


def xattr_icount(ibody_size: int) -> int:
    """``i_xattr_icount`` for an inline xattr area of ``ibody_size`` bytes (0: none)."""
    if ibody_size == 0:
        return 0
    if ibody_size < XattrIbodyHeader.SIZE or ibody_size % 4:
        raise ValueError(f"xattr ibody size {ibody_size} is not 12 + 4k")
    return (ibody_size - XattrIbodyHeader.SIZE) // 4 + 1


# ---------------------------------------------------------------------------
# Compression: algorithms, configuration records, map header, indexes


class CompressionAlgorithm(enum.IntEnum):
    Z_EROFS_COMPRESSION_LZ4 = 0
    Z_EROFS_COMPRESSION_LZMA = 1
    Z_EROFS_COMPRESSION_DEFLATE = 2
    Z_EROFS_COMPRESSION_ZSTD = 3


Z_EROFS_COMPRESSION_LZ4: Final = CompressionAlgorithm.Z_EROFS_COMPRESSION_LZ4
Z_EROFS_COMPRESSION_LZMA: Final = CompressionAlgorithm.Z_EROFS_COMPRESSION_LZMA
Z_EROFS_COMPRESSION_DEFLATE: Final = CompressionAlgorithm.Z_EROFS_COMPRESSION_DEFLATE
Z_EROFS_COMPRESSION_ZSTD: Final = CompressionAlgorithm.Z_EROFS_COMPRESSION_ZSTD
Z_EROFS_COMPRESSION_MAX: Final = 4
# Reader-internal formats of uncompressed (PLAIN) extents.
Z_EROFS_COMPRESSION_SHIFTED: Final = Z_EROFS_COMPRESSION_MAX
Z_EROFS_COMPRESSION_INTERLACED: Final = Z_EROFS_COMPRESSION_MAX + 1
ALGORITHM_NAMES: Final[dict[int, str]] = {0: "lz4", 1: "lzma", 2: "deflate", 3: "zstd"}

Z_EROFS_PCLUSTER_MAX_SIZE: Final = 1 << 20  # largest pcluster (kernel)
Z_EROFS_PCLUSTER_MAX_DSIZE: Final = 12 << 20  # largest decoded extent one mapping may return
Z_EROFS_LZ4_MIN_DISTANCE: Final = 0  # (u1 == 0 means the 64 KiB default)
LZ4_MAX_DISTANCE_PAGES_DEFAULT: Final = 16

_LZ4_CFGS = struct.Struct("<HH10x")
_LZMA_CFGS = struct.Struct("<IH8x")
_DEFLATE_CFGS = struct.Struct("<B5x")
_ZSTD_CFGS = struct.Struct("<BB4x")
COMPR_CFG_HEADER = struct.Struct("<H")  # le16 length before each record


@dataclass(frozen=True, slots=True)
class Lz4Cfgs:
    """``struct z_erofs_lz4_cfgs`` (14 bytes)."""

    SIZE: ClassVar[int] = 14

    max_distance: int
    max_pclusterblks: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> Lz4Cfgs:
        return cls(*_LZ4_CFGS.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _LZ4_CFGS.pack(self.max_distance, self.max_pclusterblks)


@dataclass(frozen=True, slots=True)
class LzmaCfgs:
    """``struct z_erofs_lzma_cfgs`` (14 bytes)."""

    SIZE: ClassVar[int] = 14

    dict_size: int
    format: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> LzmaCfgs:
        return cls(*_LZMA_CFGS.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _LZMA_CFGS.pack(self.dict_size, self.format)


@dataclass(frozen=True, slots=True)
class DeflateCfgs:
    """``struct z_erofs_deflate_cfgs`` (6 bytes)."""

    SIZE: ClassVar[int] = 6

    windowbits: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> DeflateCfgs:
        return cls(*_DEFLATE_CFGS.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _DEFLATE_CFGS.pack(self.windowbits)


@dataclass(frozen=True, slots=True)
class ZstdCfgs:
    """``struct z_erofs_zstd_cfgs`` (6 bytes); window = 1 << (windowlog + 10)."""

    SIZE: ClassVar[int] = 6

    format: int
    windowlog: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> ZstdCfgs:
        return cls(*_ZSTD_CFGS.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _ZSTD_CFGS.pack(self.format, self.windowlog)


# Record size per algorithm id, for the cfg records after the superblock.
COMPR_CFG_SIZES: Final[dict[int, int]] = {
    Z_EROFS_COMPRESSION_LZ4: Lz4Cfgs.SIZE,
    Z_EROFS_COMPRESSION_LZMA: LzmaCfgs.SIZE,
    Z_EROFS_COMPRESSION_DEFLATE: DeflateCfgs.SIZE,
    Z_EROFS_COMPRESSION_ZSTD: ZstdCfgs.SIZE,
}

Z_EROFS_ADVISE_COMPACTED_2B: Final = 0x0001
Z_EROFS_ADVISE_EXTENTS: Final = 0x0001  # same bit, on COMPRESSED_FULL (48BIT)
Z_EROFS_ADVISE_BIG_PCLUSTER_1: Final = 0x0002
Z_EROFS_ADVISE_BIG_PCLUSTER_2: Final = 0x0004
Z_EROFS_ADVISE_INLINE_PCLUSTER: Final = 0x0008
Z_EROFS_ADVISE_INTERLACED_PCLUSTER: Final = 0x0010
Z_EROFS_ADVISE_FRAGMENT_PCLUSTER: Final = 0x0020
Z_EROFS_FRAGMENT_INODE_BIT: Final = 7  # of h_clusterbits: the whole file is a fragment

_MAP_HEADER = struct.Struct("<HHHBB")


@dataclass(frozen=True, slots=True)
class MapHeader:
    """``struct z_erofs_map_header`` (8 bytes at ``round_up(inode end, 8)``).

    ``h_fragmentoff`` (le32 at 0) overlays ``h_reserved1`` and ``h_idata_size``."""

    SIZE: ClassVar[int] = 8

    h_reserved1: int
    h_idata_size: int
    h_advise: int
    h_algorithmtype: int
    h_clusterbits: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> MapHeader:
        return cls(*_MAP_HEADER.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _MAP_HEADER.pack(
            self.h_reserved1,
            self.h_idata_size,
            self.h_advise,
            self.h_algorithmtype,
            self.h_clusterbits,
        )

    @classmethod
    def with_fragmentoff(
        cls, fragmentoff: int, h_advise: int, h_algorithmtype: int, h_clusterbits: int
    ) -> MapHeader:
        return cls(
            fragmentoff & 0xFFFF, fragmentoff >> 16, h_advise, h_algorithmtype, h_clusterbits
        )

    @property
    def h_fragmentoff(self) -> int:
        return self.h_reserved1 | (self.h_idata_size << 16)

    @property
    def whole_file_fragment(self) -> bool:
        return bool(self.h_clusterbits & (1 << Z_EROFS_FRAGMENT_INODE_BIT))

    @property
    def h_extents(self) -> int:
        """Encoded extents (48BIT, Z_EROFS_ADVISE_EXTENTS): the extent count,
        ``h_extents_lo`` (le32 at 0) and ``h_extents_hi`` (le16 at 6)."""
        return self.h_fragmentoff | (self.h_algorithmtype << 32) | (self.h_clusterbits << 40)

    @classmethod
    def with_extents(cls, nexts: int, h_advise: int) -> MapHeader:
        hi = nexts >> 32
        return cls(nexts & 0xFFFF, (nexts >> 16) & 0xFFFF, h_advise, hi & 0xFF, hi >> 8)

    @property
    def whole_file_fragmentoff(self) -> int:
        """The le64 of the header with bit 63 cleared (whole-file fragment)."""
        raw = int.from_bytes(self.pack(), "little")
        return raw & ~(1 << 63)


def map_header_pos(inode_offset: int, inode_isize: int, xattr_isize: int) -> int:
    """Byte position of the map header: 8-byte aligned after core and xattrs."""
    return round_up(inode_offset + inode_isize + xattr_isize, 8)


class LclusterType(enum.IntEnum):
    Z_EROFS_LCLUSTER_TYPE_PLAIN = 0
    Z_EROFS_LCLUSTER_TYPE_HEAD1 = 1
    Z_EROFS_LCLUSTER_TYPE_NONHEAD = 2
    Z_EROFS_LCLUSTER_TYPE_HEAD2 = 3


Z_EROFS_LCLUSTER_TYPE_PLAIN: Final = 0
Z_EROFS_LCLUSTER_TYPE_HEAD1: Final = 1
Z_EROFS_LCLUSTER_TYPE_NONHEAD: Final = 2
Z_EROFS_LCLUSTER_TYPE_HEAD2: Final = 3
Z_EROFS_LCLUSTER_TYPE_MAX: Final = 4
Z_EROFS_LI_LCLUSTER_TYPE_MASK: Final = 0x3
Z_EROFS_LI_PARTIAL_REF: Final = 1 << 15
Z_EROFS_LI_D0_CBLKCNT: Final = 1 << 11  # NONHEAD delta[0]: this is a block count
Z_EROFS_FULL_INDEX_START: Final = 16  # full indexes start 16 bytes after the map header

_FULL_INDEX = struct.Struct("<HHI")


@dataclass(frozen=True, slots=True)
class LclusterIndex:
    """``struct z_erofs_lcluster_index`` (8 bytes, COMPRESSED_FULL)."""

    SIZE: ClassVar[int] = 8

    di_advise: int
    di_clusterofs: int
    di_u: int  # blkaddr (HEAD/PLAIN) or delta[0] | delta[1] << 16 (NONHEAD)

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, off: int = 0) -> LclusterIndex:
        return cls(*_FULL_INDEX.unpack_from(buf, off))

    def pack(self) -> bytes:
        return _FULL_INDEX.pack(self.di_advise, self.di_clusterofs, self.di_u)

    @classmethod
    def head(
        cls, lctype: int, clusterofs: int, blkaddr: int, *, partial_ref: bool = False
    ) -> LclusterIndex:
        advise = lctype | (Z_EROFS_LI_PARTIAL_REF if partial_ref else 0)
        return cls(advise, clusterofs, blkaddr)

    @classmethod
    def nonhead(cls, delta0: int, delta1: int) -> LclusterIndex:
        return cls(Z_EROFS_LCLUSTER_TYPE_NONHEAD, 0, (delta0 & 0xFFFF) | ((delta1 & 0xFFFF) << 16))

    @property
    def type(self) -> int:
        return self.di_advise & Z_EROFS_LI_LCLUSTER_TYPE_MASK

    @property
    def partial_ref(self) -> bool:
        return bool(self.di_advise & Z_EROFS_LI_PARTIAL_REF)

    @property
    def blkaddr(self) -> int:
        return self.di_u

    @property
    def delta0(self) -> int:
        return self.di_u & 0xFFFF

    @property
    def delta1(self) -> int:
        return self.di_u >> 16


def full_index_pos(header_pos: int, lcn: int) -> int:
    """Byte position of lcluster ``lcn``'s full index."""
    return header_pos + Z_EROFS_FULL_INDEX_START + LclusterIndex.SIZE * lcn


# Encoded extents (48BIT): a COMPRESSED_FULL inode with Z_EROFS_ADVISE_EXTENTS
# stores extent records instead of lcluster indexes, at
# round_up(header_pos + 8, recsz); advise bits 1-2 give the record size.
Z_EROFS_ADVISE_EXTRECSZ_BIT: Final = 1
Z_EROFS_ADVISE_EXTRECSZ_MASK: Final = 0x3
Z_EROFS_EXTENT_PLEN_PARTIAL: Final = 1 << 27
Z_EROFS_EXTENT_PLEN_FMT_BIT: Final = 28  # 0: raw, else algorithm + 1
Z_EROFS_EXTENT_PLEN_MASK: Final = (Z_EROFS_PCLUSTER_MAX_SIZE << 1) - 1

_EXTENT = struct.Struct("<IIIII12x")


def extent_recsize(h_advise: int) -> int:
    """Bytes of one encoded extent record: 4, 8, 16 or 32 (the leading
    fields of :class:`ZExtent`)."""
    return 4 << ((h_advise >> Z_EROFS_ADVISE_EXTRECSZ_BIT) & Z_EROFS_ADVISE_EXTRECSZ_MASK)


class ZExtent(NamedTuple):
    """``struct z_erofs_extent`` (32 bytes; shorter records keep the leading fields)."""

    plen: int  # bits 0-20 length, 27 PARTIAL, 28-31 format
    pstart_lo: int
    pstart_hi: int
    lstart_lo: int
    lstart_hi: int

    @classmethod
    def unpack_from(cls, buf: bytes | bytearray | memoryview, recsz: int, off: int = 0) -> ZExtent:
        raw = bytes(buf[off : off + recsz]).ljust(_EXTENT.size, b"\0")
        return cls(*_EXTENT.unpack(raw))

    def pack(self, recsz: int) -> bytes:
        return _EXTENT.pack(*self)[:recsz]


# Compact indexes: packs of ``vcnt`` fields of ``encodebits`` bits followed
# by a le32 base block address.  4B packs: 8 bytes, 2 lclusters; 2B packs:
# 32 bytes, 16 lclusters.  Their codec is fusefs.erofs.zindex.
COMPACT_4B_VCNT: Final = 2
COMPACT_2B_VCNT: Final = 16
COMPACT_4B_PACK: Final = 8
COMPACT_2B_PACK: Final = 32


# ---------------------------------------------------------------------------
# Sizes, as the kernel checks them at build time (BUILD_BUG_ON in
# erofs_check_ondisk_layout_definitions).  Not ``assert``: ``python -O``
# would strip it.


def _check_size(structure: str, expected: int, *sizes: int) -> None:
    """Refuse the import when a declared layout is not ``expected`` bytes."""
    for size in sizes:
        if size != expected:
            raise RuntimeError(
                f"fusefs.erofs.format: {structure} is {size} bytes, expected {expected}"
            )


_check_size("struct erofs_super_block", 128, _SB.size, SuperBlock.SIZE)
_check_size("the superblock extension slot", EROFS_SB_EXTSLOT_SIZE, _SB_EXT_METABOX.size)
_check_size("struct erofs_inode_compact", 32, _COMPACT.size, CompactInode.SIZE)
_check_size("struct erofs_inode_extended", 64, _EXTENDED.size, ExtendedInode.SIZE)
_check_size("struct erofs_inode_chunk_index", 8, _CHUNK_INDEX.size)
_check_size("a chunk block map entry", 4, CHUNK_BLOCKMAP.size)
_check_size("struct erofs_deviceslot", EROFS_DEVT_SLOT_SIZE, _DEVICE_SLOT.size, DeviceSlot.SIZE)
_check_size("struct erofs_dirent", 12, DIRENT_STRUCT.size, Dirent.SIZE)
_check_size("struct erofs_xattr_ibody_header", 12, _XATTR_IBODY_HEADER.size, XattrIbodyHeader.SIZE)
_check_size("struct erofs_xattr_entry", 4, _XATTR_ENTRY.size, XattrEntry.SIZE)
_check_size("struct erofs_xattr_long_prefix", 3, _XATTR_LONG_PREFIX.size, XattrLongPrefix.SIZE)
_check_size("struct z_erofs_lz4_cfgs", 14, _LZ4_CFGS.size, Lz4Cfgs.SIZE)
_check_size("struct z_erofs_lzma_cfgs", 14, _LZMA_CFGS.size, LzmaCfgs.SIZE)
_check_size("struct z_erofs_deflate_cfgs", 6, _DEFLATE_CFGS.size, DeflateCfgs.SIZE)
_check_size("struct z_erofs_zstd_cfgs", 6, _ZSTD_CFGS.size, ZstdCfgs.SIZE)
_check_size("struct z_erofs_map_header", 8, _MAP_HEADER.size, MapHeader.SIZE)
_check_size("struct z_erofs_lcluster_index", 8, _FULL_INDEX.size, LclusterIndex.SIZE)
_check_size("struct z_erofs_extent", 32, _EXTENT.size)
