"""Directory entries and inodes (fs/cramfs/inode.c: get_cramfs_inode, cramfs_readdir).

An entry is a 12-byte inode followed by its name, NUL-padded to a multiple
of 4; a directory's entries are one contiguous run of ``size`` bytes from
``offset * 4``.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from dataclasses import dataclass

from fusefs.cramfs.format import CRAMFS_INODE_SIZE, CramfsInode, Endian
from fusefs.errors import CorruptImageError
from fusefs.modes import FILE_TYPES
from fusefs.vfs import ImageBytes


@dataclass(frozen=True, slots=True)
class RawEntry:
    """One directory entry: where its inode is, the inode, its name."""

    pos: int  # byte offset of the 12-byte inode in the image
    inode: CramfsInode
    name: bytes

    @property
    def end(self) -> int:
        return self.pos + CRAMFS_INODE_SIZE + (self.inode.namelen << 2)


def read_inode(image: ImageBytes, endian: Endian, pos: int, limit: int) -> CramfsInode:
    """The inode at byte ``pos``, checked against the structure rules."""
    if pos + CRAMFS_INODE_SIZE > limit:
        raise CorruptImageError(
            f"inode lies outside the {limit}-byte filesystem", structure="cramfs inode", offset=pos
        )
    ino = CramfsInode.unpack_from(
        image.slice(pos, CRAMFS_INODE_SIZE, structure="cramfs inode"), endian
    )
    check_inode(ino, pos, limit)
    return ino


def check_inode(ino: CramfsInode, pos: int, limit: int) -> None:
    """What util-linux fsck.cramfs --extract requires of every inode."""

    def bad(reason: str) -> CorruptImageError:
        return CorruptImageError(reason, structure="cramfs inode", offset=pos)

    fmt = stat.S_IFMT(ino.mode)
    if fmt not in FILE_TYPES:
        raise bad(f"bogus mode {ino.mode:#o}")
    data = ino.offset << 2
    if data >= limit and ino.offset:
        raise bad(f"data offset {data:#x} is beyond the {limit}-byte filesystem")
    if fmt == stat.S_IFDIR:
        if not ino.offset and ino.size:
            raise bad("directory has zero offset and non-zero size")
    elif fmt == stat.S_IFREG:
        if bool(ino.offset) != bool(ino.size):
            raise bad(f"file has size {ino.size} and data offset {data:#x}")
    elif fmt == stat.S_IFLNK:
        if not ino.offset or not ino.size:
            raise bad("symbolic link has zero offset or zero size")
    else:
        if ino.offset:
            raise bad("special file has non-zero offset")
        if fmt in (stat.S_IFIFO, stat.S_IFSOCK) and ino.size:
            raise bad("fifo or socket has non-zero size")


def iter_dir(
    image: ImageBytes, endian: Endian, dir_inode: CramfsInode, limit: int
) -> Iterator[RawEntry]:
    """The entries of a directory in on-disk order, each checked."""
    pos = dir_inode.offset << 2
    end = pos + dir_inode.size
    if dir_inode.size and end > limit:
        raise CorruptImageError(
            f"directory of {dir_inode.size} bytes runs past the {limit}-byte filesystem",
            structure="cramfs directory",
            offset=pos,
        )
    while pos < end:
        inode = read_inode(image, endian, pos, limit)
        nlen = inode.namelen << 2
        if not nlen:
            raise CorruptImageError(
                "filename length is zero", structure="cramfs dirent", offset=pos
            )
        if pos + CRAMFS_INODE_SIZE + nlen > end:
            raise CorruptImageError(
                "entry runs past the end of its directory", structure="cramfs dirent", offset=pos
            )
        raw = bytes(image.slice(pos + CRAMFS_INODE_SIZE, nlen, structure="cramfs dirent name"))
        name = raw.rstrip(b"\0")
        # a name has at most 3 NULs of padding and none inside
        if not name or len(raw) - len(name) > 3 or b"\0" in name:
            raise CorruptImageError("bad filename length", structure="cramfs dirent", offset=pos)
        if b"/" in name or name in (b".", b".."):
            raise CorruptImageError(
                f"illegal filename {name!r}", structure="cramfs dirent", offset=pos
            )
        yield RawEntry(pos, inode, name)
        pos += CRAMFS_INODE_SIZE + nlen
