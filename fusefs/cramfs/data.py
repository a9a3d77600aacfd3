"""Block mapping of a file's data record (fs/cramfs/inode.c: cramfs_read_folio).

A record is ``u32 ptr[nr_blocks]`` followed by the blocks.  Every pointer is
decoded to an :class:`Extent` here, with its start and length bounded by the
filesystem, so the readers below never see an unchecked offset.
"""

from __future__ import annotations

from dataclasses import dataclass

from fusefs.cramfs.format import (
    CRAMFS_BLK_DIRECT_PTR_SHIFT,
    CRAMFS_BLK_FLAG_DIRECT_PTR,
    CRAMFS_BLK_FLAG_UNCOMPRESSED,
    CRAMFS_BLK_FLAGS,
    CRAMFS_BLOCK_SIZE,
    CRAMFS_MAX_BLOCK_LEN,
    CramfsInode,
    nr_blocks,
    u16,
    u32,
)
from fusefs.cramfs.super import SuperInfo
from fusefs.errors import CorruptImageError
from fusefs.vfs import ImageBytes


@dataclass(frozen=True, slots=True)
class Extent:
    """Where block ``index`` of a file is stored."""

    index: int
    start: int  # first byte of the stored data (after the u16 prefix of direct compressed blocks)
    length: int  # stored bytes; 0 is a hole
    uncompressed: bool
    direct: bool
    pointer: int  # the raw pointer, for inspect

    @property
    def hole(self) -> bool:
        return self.length == 0


class BlockMap:
    """The decoded block pointers of one regular file or symlink."""

    def __init__(self, image: ImageBytes, si: SuperInfo, inode: CramfsInode, pos: int) -> None:
        self.image = image
        self.si = si
        self.size = inode.size
        self.pos = pos  # the inode's position, for messages
        self.table = inode.offset << 2
        self.nr = nr_blocks(inode.size)
        self.table_end = self.table + 4 * self.nr
        if self.table_end > si.size:
            raise self._bad(
                f"block pointer table of {self.nr} entries runs past the filesystem", self.table
            )
        raw = image.slice(self.table, 4 * self.nr, structure="cramfs block pointers", nid=pos)
        self.pointers: list[int] = [p for (p,) in u32(si.endian).iter_unpack(raw)]
        self._u16 = u16(si.endian)
        self._ext = bool(si.sb.flags & 0x800)

    def _bad(self, reason: str, offset: int) -> CorruptImageError:
        return CorruptImageError(reason, structure="cramfs data", offset=offset, nid=self.pos)

    def expected_len(self, index: int) -> int:
        """Bytes block ``index`` holds once decompressed."""
        if index == self.nr - 1 and self.size % CRAMFS_BLOCK_SIZE:
            return self.size % CRAMFS_BLOCK_SIZE
        return CRAMFS_BLOCK_SIZE

    def _direct_start(self, ptr: int) -> int:
        return (ptr & ~CRAMFS_BLK_FLAGS) << CRAMFS_BLK_DIRECT_PTR_SHIFT

    def _prefix(self, start: int) -> int:
        """The u16 length in front of a direct compressed block."""
        raw = self.image.slice(start, 2, structure="cramfs block length", nid=self.pos)
        (n,) = self._u16.unpack(raw)
        return int(n)

    def _implied_start(self, index: int) -> int:
        if index == 0:
            return self.table_end
        q = self.pointers[index - 1]
        if q & CRAMFS_BLK_FLAG_DIRECT_PTR:
            qs = self._direct_start(q)
            if q & CRAMFS_BLK_FLAG_UNCOMPRESSED:
                return qs + CRAMFS_BLOCK_SIZE
            return qs + 2 + self._prefix(qs)
        return q & ~CRAMFS_BLK_FLAGS

    def extent(self, index: int) -> Extent:
        """Block ``index`` decoded per the four pointer-flag combinations, bounds-checked."""
        if not 0 <= index < self.nr:
            raise self._bad(f"block {index} beyond the file's {self.nr} blocks", self.table)
        ptr = self.pointers[index]
        flags = ptr & CRAMFS_BLK_FLAGS
        if flags and not self._ext:
            raise self._bad(
                f"block pointer {ptr:#x} uses extension flags not in the superblock",
                self.table + 4 * index,
            )
        unc = bool(flags & CRAMFS_BLK_FLAG_UNCOMPRESSED)
        direct = bool(flags & CRAMFS_BLK_FLAG_DIRECT_PTR)
        if direct:
            start = self._direct_start(ptr)
            if unc:
                # the last block holds the remainder; the kernel reads a
                # page-multiple file's U+D last block as a hole (fsck_extra says so)
                length = self.expected_len(index)
            else:
                length = self._prefix(start)
                start += 2
        else:
            start = self._implied_start(index)
            end = ptr & ~CRAMFS_BLK_FLAGS
            if end < start:
                raise self._bad(
                    f"block {index} ends at {end:#x} before it starts at {start:#x}", start
                )
            length = end - start
        if length > (CRAMFS_BLOCK_SIZE if unc else CRAMFS_MAX_BLOCK_LEN):
            raise self._bad(f"block {index} of {length} bytes is too large", start)
        if start + length > self.si.size or start < self.si.start:
            raise self._bad(
                f"block {index} ({length} bytes at {start:#x}) lies outside the filesystem", start
            )
        return Extent(index, start, length, unc, direct, ptr)
