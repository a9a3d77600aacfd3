"""Inodes: compact and extended cores, validated (after ``fs/erofs/inode.c``)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from fusefs.erofs import format as f
from fusefs.erofs.format import Nid
from fusefs.erofs.super import ErofsSuper
from fusefs.errors import CorruptImageError, UnsupportedFeatureError
from fusefs.modes import HasMode
from fusefs.vfs import ImageBytes

if TYPE_CHECKING:
    from fusefs.erofs.data import MetaBuf

_STRUCT = "erofs inode"
_VALID_TYPES = frozenset(
    {
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFCHR,
        stat.S_IFBLK,
        stat.S_IFIFO,
        stat.S_IFSOCK,
    }
)
# erofs: i_size is signed 64-bit in the kernel; anything beyond this is nonsense
_MAX_SIZE = (1 << 63) - 1
# The kernel's EROFS_NULL_ADDR (-1ULL) as a start block: a FLAT_PLAIN inode
# whose start block is all ones in its width (32 or 48 bits) reads as zeros.
NULL_STARTBLK: Final = -1


@dataclass(frozen=True, slots=True)
class ErofsInode(HasMode):
    """One inode's core, decoded.  Positions (``iloc``, ``xattr_pos``,
    ``inline_pos``) are byte offsets in ``meta``: the image, or the metabox
    inode's data for a nid with the metabox bit (see :mod:`fusefs.erofs.data`)."""

    nid: Nid
    iloc: int  # byte offset of the core in ``meta``
    version: int  # 0 compact, 1 extended
    layout: int  # EROFS_INODE_*
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    mtime: int
    mtime_nsec: int
    i_u: int
    i_ino: int
    xattr_icount: int
    inode_isize: int
    xattr_isize: int
    # FLAT_PLAIN/FLAT_INLINE/dir/symlink: first data block, 48 bits with
    # ``i_nb`` (extended, or compact with NLINK_1); NULL_STARTBLK for a hole file
    startblk: int
    dot_omitted: bool  # a directory without a "." dirent (6.15+)
    meta: MetaBuf = field(compare=False, repr=False)

    @property
    def ftype(self) -> int:
        return stat.S_IFMT(self.mode)

    @property
    def in_metabox(self) -> bool:
        return f.nid_in_metabox(self.nid)

    @property
    def xattr_pos(self) -> int:
        return self.iloc + self.inode_isize

    @property
    def inline_pos(self) -> int:
        """Where inline data (tail, chunk table, map header area) starts."""
        return self.iloc + self.inode_isize + self.xattr_isize

    @property
    def is_compressed(self) -> bool:
        return self.layout in (f.EROFS_INODE_COMPRESSED_FULL, f.EROFS_INODE_COMPRESSED_COMPACT)

    @property
    def rdev(self) -> int:
        """The device number as ``os.makedev`` encodes it (0 for non-devices)."""
        if stat.S_ISCHR(self.mode) or stat.S_ISBLK(self.mode):
            return os.makedev(*f.new_decode_dev(self.i_u))
        return 0

    @property
    def chunkformat(self) -> int:
        return self.i_u & 0xFFFF

    @property
    def layout_name(self) -> str:
        return f.DataLayout(self.layout).name


def read_inode(image: ImageBytes, meta: MetaBuf, sbi: ErofsSuper, nid: Nid) -> ErofsInode:
    """Read and validate inode ``nid`` from ``meta`` (the image, or the
    metabox for a nid with the metabox bit); ``image`` bounds its data."""
    if nid < 0 or nid & f.EROFS_DIRENT_NID_MASK >= 1 << 58:
        raise CorruptImageError(f"nid {nid} out of range", structure=_STRUCT, nid=nid)
    iloc = sbi.nid_offset(nid)
    head = meta.slice(iloc, f.CompactInode.SIZE, structure=_STRUCT, nid=nid)
    ifmt = int.from_bytes(bytes(head[0:2]), "little")
    if ifmt & ~f.EROFS_I_ALL:
        raise UnsupportedFeatureError(
            f"erofs inode nid {nid}: i_format {ifmt:#x} has unsupported bits"
        )
    version = f.i_format_version(ifmt)
    layout = f.i_format_layout(ifmt)
    bit4 = bool(ifmt >> f.EROFS_I_NLINK_1_BIT & 1)
    if layout >= f.EROFS_INODE_DATALAYOUT_MAX:
        raise UnsupportedFeatureError(f"erofs inode nid {nid}: unknown data layout {layout}")
    if version == f.EROFS_INODE_LAYOUT_EXTENDED:
        raw = meta.slice(iloc, f.ExtendedInode.SIZE, structure=_STRUCT, nid=nid)
        e = f.ExtendedInode.unpack_from(raw)
        isize = f.ExtendedInode.SIZE
        mode, nlink, uid, gid, size = e.i_mode, e.i_nlink, e.i_uid, e.i_gid, e.i_size
        mtime, nsec, i_u, ino, icount = e.i_mtime, e.i_mtime_nsec, e.i_u, e.i_ino, e.i_xattr_icount
        # erofs (6.15+): i_nb of an extended inode is always startblk_hi
        # (mkfs wrote 0 in the field before it had a name)
        blk_hi, addrbits = e.i_nb, 48
    else:
        c = f.CompactInode.unpack_from(head)
        isize = f.CompactInode.SIZE
        mode, uid, gid, size = c.i_mode, c.i_uid, c.i_gid, c.i_size
        mtime, nsec, i_u, ino, icount = (
            sbi.sb.epoch + c.i_mtime,
            sbi.sb.fixed_nsec,
            c.i_u,
            c.i_ino,
            c.i_xattr_icount,
        )
        if bit4 and not stat.S_ISDIR(mode):
            # erofs: NLINK_1 -- nlink is 1 and i_nb holds startblk_hi/blocks_hi
            nlink, blk_hi, addrbits = 1, c.i_nb, 48
        else:
            nlink, blk_hi, addrbits = c.i_nb, 0, 32
    if stat.S_IFMT(mode) not in _VALID_TYPES:
        raise CorruptImageError(
            f"bad file type in mode {mode:#o}", structure=_STRUCT, nid=nid, offset=iloc
        )
    if size > _MAX_SIZE:
        raise CorruptImageError(f"negative size {size}", structure=_STRUCT, nid=nid, offset=iloc)
    if nsec >= 1_000_000_000:
        raise CorruptImageError(
            f"mtime nanoseconds {nsec} >= 1e9", structure=_STRUCT, nid=nid, offset=iloc
        )
    startblk = i_u | (blk_hi << 32)
    if layout == f.EROFS_INODE_FLAT_PLAIN and startblk == (1 << addrbits) - 1:
        startblk = NULL_STARTBLK
    xattr_isize = f.xattr_ibody_size(icount)
    meta.check(iloc, isize + xattr_isize, structure="erofs inode xattrs", nid=nid)
    inode = ErofsInode(
        nid=nid,
        iloc=iloc,
        version=version,
        layout=layout,
        mode=mode,
        nlink=nlink,
        uid=uid,
        gid=gid,
        size=size,
        mtime=mtime,
        mtime_nsec=nsec,
        i_u=i_u,
        i_ino=ino,
        xattr_icount=icount,
        inode_isize=isize,
        xattr_isize=xattr_isize,
        startblk=startblk,
        dot_omitted=bit4 and stat.S_ISDIR(mode),
        meta=meta,
    )
    _check_layout(image, sbi, inode)
    return inode


def _check_layout(image: ImageBytes, sbi: ErofsSuper, ino: ErofsInode) -> None:
    """Claimed sizes against the image, before anything is allocated for them."""
    bs = sbi.block_size
    nid = ino.nid
    if ino.layout == f.EROFS_INODE_FLAT_PLAIN:
        if ino.size and ino.startblk != NULL_STARTBLK:
            nblocks = -(-ino.size // bs)
            image.check(ino.startblk * bs, nblocks * bs if ino.size % bs == 0 else ino.size,
                        structure="erofs plain data", nid=nid)  # fmt: skip
    elif ino.layout == f.EROFS_INODE_FLAT_INLINE:
        nblocks = -(-ino.size // bs)
        tail = ino.size - (nblocks - 1) * bs if ino.size else 0
        if nblocks > 1:
            image.check(
                ino.startblk * bs, (nblocks - 1) * bs, structure="erofs inline-layout data", nid=nid
            )
        ino.meta.check(ino.inline_pos, tail, structure="erofs inline tail", nid=nid)
        if ino.inline_pos % bs + tail > bs:
            raise CorruptImageError(
                f"inline tail of {tail} bytes at {ino.inline_pos:#x} crosses a block boundary",
                structure=_STRUCT,
                nid=nid,
                offset=ino.inline_pos,
            )
    elif ino.layout == f.EROFS_INODE_CHUNK_BASED:
        if not sbi.has(f.EROFS_FEATURE_INCOMPAT_CHUNKED_FILE):
            raise CorruptImageError(
                "chunk-based inode without the chunked_file feature", structure=_STRUCT, nid=nid
            )
        fmt = ino.chunkformat
        if fmt & ~f.EROFS_CHUNK_FORMAT_ALL:
            raise UnsupportedFeatureError(
                f"erofs inode nid {nid}: unsupported chunk format {fmt:#x}"
            )
