"""Finding and checking the cramfs superblock (fs/cramfs/inode.c: cramfs_read_super)."""

from __future__ import annotations

import stat
from dataclasses import dataclass

from fusefs.cramfs.format import (
    CRAMFS_FLAG_FSID_VERSION_2,
    CRAMFS_FLAG_SHIFTED_ROOT_OFFSET,
    CRAMFS_PAD_SIZE,
    CRAMFS_SB_SIZE,
    CRAMFS_SUPPORTED_FLAGS,
    CramfsSuper,
    Endian,
    detect_endian,
    image_crc,
)
from fusefs.errors import CorruptImageError, UnsupportedFeatureError
from fusefs.vfs import ImageBytes


@dataclass(frozen=True, slots=True)
class SuperInfo:
    """Where the superblock is, its byte order, and the decoded fields."""

    start: int  # 0, or 512 behind the boot pad
    endian: Endian
    sb: CramfsSuper
    size: int  # bytes of the image that belong to the filesystem

    @property
    def root_offset(self) -> int:
        """Byte offset of the root inode (inside the superblock)."""
        return self.start + CRAMFS_SB_SIZE - 12


def probe(image: ImageBytes) -> bool:
    """True when the cramfs magic is at 0 or 512, in either byte order."""
    for start in (0, CRAMFS_PAD_SIZE):
        if image.size >= start + CRAMFS_SB_SIZE and detect_endian(
            bytes(image.view[start : start + 4])
        ):
            return True
    return False


def read_super(image: ImageBytes) -> SuperInfo:
    """Find the superblock and check what the kernel and fsck check."""
    found: tuple[int, Endian] | None = None
    for start in (0, CRAMFS_PAD_SIZE):
        if image.size >= start + CRAMFS_SB_SIZE:
            endian = detect_endian(bytes(image.view[start : start + 4]))
            if endian is not None:
                found = (start, endian)
                break
    if found is None:
        raise CorruptImageError("no cramfs magic at 0 or 512", structure="cramfs superblock")
    start, endian = found
    raw = image.slice(start, CRAMFS_SB_SIZE, structure="cramfs superblock")
    sb = CramfsSuper.unpack_from(raw, endian)

    def bad(reason: str) -> CorruptImageError:
        return CorruptImageError(reason, structure="cramfs superblock", offset=start)

    unknown = sb.flags & ~CRAMFS_SUPPORTED_FLAGS
    if unknown:
        raise UnsupportedFeatureError(
            f"cramfs superblock @{start:#x}: unsupported feature flags {unknown:#x}"
        )
    if sb.flags & CRAMFS_FLAG_FSID_VERSION_2:
        if sb.size < start + CRAMFS_SB_SIZE:
            raise bad(f"size {sb.size} is smaller than the superblock")
        if sb.size > image.size:
            raise bad(f"size {sb.size} is beyond the end of the {image.size}-byte image")
        if sb.files == 0:
            raise bad("file count is zero")
        crc = image_crc(image.view, start, sb.size)
        if crc != sb.crc:
            raise bad(f"crc mismatch: stored {sb.crc:#010x}, computed {crc:#010x}")
        size = sb.size
    else:
        # old format: the kernel assumes 2^28; bound it by what we have
        size = image.size
    root = sb.root
    if not stat.S_ISDIR(root.mode):
        raise bad(f"root inode is not a directory (mode {root.mode:#o})")
    root_data = root.offset << 2
    if not sb.flags & CRAMFS_FLAG_SHIFTED_ROOT_OFFSET and root_data not in (
        0,
        start + CRAMFS_SB_SIZE,
    ):
        raise bad(f"bad root offset {root_data:#x} (expected {start + CRAMFS_SB_SIZE:#x})")
    if root_data == 0 and root.size:
        raise bad("root directory has zero offset and non-zero size")
    return SuperInfo(start, endian, sb, size)
