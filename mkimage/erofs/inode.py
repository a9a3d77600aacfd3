"""Per-inode plans: which core (compact/extended), which data layout, and
how many bytes the inode takes in the metadata area; then its encoding."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from fusefs.erofs.format import (
    CHUNK_BLOCKMAP,
    CHUNK_INDEX_SIZE,
    EROFS_CHUNK_FORMAT_INDEXES,
    EROFS_I_NLINK_1_BIT,
    EROFS_INODE_LAYOUT_COMPACT,
    EROFS_INODE_LAYOUT_EXTENDED,
    CompactInode,
    DataLayout,
    ExtendedInode,
    MapHeader,
    i_format,
    new_encode_dev,
    round_up,
    xattr_icount,
)
from mkimage.erofs.zmap import Lcluster
from mkimage.errors import BuildError
from mkimage.tree import Node, show

U16 = 0xFFFF
U32 = 0xFFFFFFFF


@dataclass(slots=True)
class Inode:
    """One inode of the image (all names of a hard link share it)."""

    node: Node
    ino: int
    mtime_ns: int
    xattr_body: bytes = b""
    extended: bool = False
    compact_mtime: int = 0  # i_mtime of a compact inode (seconds after the epoch)
    layout: DataLayout = DataLayout.EROFS_INODE_FLAT_PLAIN
    size: int = 0
    inline: bytes = b""  # FLAT_INLINE tail
    data_blocks: int = 0  # blocks in a data region
    startblk: int = 0
    # compressed files
    map_header: MapHeader | None = None
    lclusters: list[Lcluster] = field(default_factory=list)
    rebase_at: list[int] = field(default_factory=list)  # block addresses in trailer (zmap.rebase)
    compact: bool = False
    two_b: bool = False
    big: bool = False
    physical_blocks: int = 0
    # chunk-based files: block of each chunk relative to startblk, None = hole
    chunks: list[int | None] = field(default_factory=list)
    chunkformat: int = 0  # i_u of a chunk-based inode: chunk bits, INDEXES, 48BIT
    # 48BIT: a compact non-directory inode with nlink 1 says so in i_format
    # (NLINK_1) and keeps the high bits of its address in i_nb
    nlink_1: bool = False
    dot_omitted: bool = False  # a directory without its "." dirent
    nid: int = 0
    trailer: bytes = b""
    whole_fragment: bool = False  # -E fragments: all data in the packed inode

    @property
    def core_size(self) -> int:
        return ExtendedInode.SIZE if self.extended else CompactInode.SIZE

    @property
    def base_size(self) -> int:
        """Core plus inline xattrs: where trailers (tail, map, chunk table) start."""
        return self.core_size + len(self.xattr_body)


def choose_core(
    ino: Inode, epoch: int, *, force_compact: bool, force_extended: bool, relative: bool = False
) -> None:
    """Compact where every field fits and the mtime is exactly the epoch
    (kernels before 6.15 show the epoch for every compact inode), extended
    otherwise; ``-E force-inode-*`` override (compact then keeps mtime
    seconds relative to the epoch and loses nanoseconds).  ``relative``
    (48BIT images, which need 6.15+): compact also where the mtime is whole
    seconds within 2^32 of the epoch, as mkfs.erofs 1.9 writes them."""
    n = ino.node
    fits = ino.size <= U32 and n.uid <= U16 and n.gid <= U16 and n.nlink <= U16
    secs, nsec = divmod(ino.mtime_ns, 1_000_000_000)
    exact = ino.mtime_ns == epoch * 1_000_000_000
    if relative and not nsec and 0 <= secs - epoch <= U32:
        exact = True
    if force_extended or not fits:
        ino.extended = True
    elif force_compact or exact:
        ino.extended = False
        ino.compact_mtime = min(max(secs - epoch, 0), U32)
    else:
        ino.extended = True


_COMPRESSED = (DataLayout.EROFS_INODE_COMPRESSED_FULL, DataLayout.EROFS_INODE_COMPRESSED_COMPACT)


def trailer_offset(ino: Inode) -> int:
    """Where the layout-specific trailer starts, relative to the inode."""
    if ino.layout in _COMPRESSED:
        return round_up(ino.base_size, 8)
    if ino.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
        # erofs: the chunk table is aligned to its entry size
        indexes = ino.chunkformat & EROFS_CHUNK_FORMAT_INDEXES
        return round_up(ino.base_size, CHUNK_INDEX_SIZE if indexes else CHUNK_BLOCKMAP.size)
    return ino.base_size


def i_u(ino: Inode, addr: int) -> int:
    """``i_u``, given the inode's :func:`address`."""
    if ino.layout == DataLayout.EROFS_INODE_CHUNK_BASED:
        return ino.chunkformat  # le16 format, le16 reserved
    mode = ino.node.mode
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        rdev = ino.node.rdev
        return new_encode_dev(os.major(rdev), os.minor(rdev))
    return addr & U32  # a compressed file's block count, else its first block


def address(ino: Inode) -> int:
    """The block address ``i_u`` and ``i_nb`` share (48 bits under 48BIT):
    the first data block, or a compressed file's block count."""
    layout = ino.layout
    if layout in _COMPRESSED:
        return ino.physical_blocks
    if ino.data_blocks == 0 or layout == DataLayout.EROFS_INODE_CHUNK_BASED:
        return 0
    mode = ino.node.mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        return 0
    return ino.startblk


def encode(ino: Inode, trailer: bytes | None = None) -> bytes:
    """Core, inline xattrs, padding and trailer (``ino.trailer`` unless
    given): the inode's bytes in the metadata area."""
    n = ino.node
    xattrs = ino.xattr_body
    icount = xattr_icount(len(xattrs))
    extended = ino.extended
    version = EROFS_INODE_LAYOUT_EXTENDED if extended else EROFS_INODE_LAYOUT_COMPACT
    fmt = i_format(version, ino.layout)
    # erofs (6.15+): bit 4 is NLINK_1 for compact non-directories, DOT_OMITTED for directories
    if ino.dot_omitted or (ino.nlink_1 and not extended):
        fmt |= 1 << EROFS_I_NLINK_1_BIT
    addr = address(ino)
    hi = addr >> 32
    if hi > U16:
        raise BuildError(f"{show(n.path)}: block address beyond 48 bits")
    core: CompactInode | ExtendedInode
    if extended:
        secs, nsec = divmod(ino.mtime_ns, 1_000_000_000)
        core = ExtendedInode(
            fmt, icount, n.mode & U16, hi, ino.size, i_u(ino, addr), ino.ino, n.uid, n.gid,
            secs, nsec, n.nlink,
        )  # fmt: skip
    else:
        if hi and not ino.nlink_1:
            raise BuildError(
                f"{show(n.path)}: a compact inode with nlink {n.nlink} cannot hold block "
                f"address {addr} (use -E 48bit or -E force-inode-extended)"
            )
        i_nb = hi if ino.nlink_1 else n.nlink
        core = CompactInode(
            fmt, icount, n.mode & U16, i_nb, ino.size, ino.compact_mtime, i_u(ino, addr),
            ino.ino, n.uid, n.gid,
        )  # fmt: skip
    head = core.pack() + xattrs
    pad = trailer_offset(ino) - len(head)
    return b"".join((head, bytes(pad), ino.trailer if trailer is None else trailer))
