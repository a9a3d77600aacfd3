"""Writing a cramfs image from a scanned :class:`mkimage.tree.Tree`.

Layout (reference section 1 and the writer checklist, section 10)::

    [512-byte pad with -p][superblock][directory area][data records][zeros to 4096]

The directory area holds the root's entry list, then every subdirectory's
list in depth-first pre-order; the data records follow in depth-first tree
order, the first one exactly at the end of the directory area (util-linux
``fsck.cramfs`` checks that).  All offsets are absolute from byte 0.

What cramfs cannot store is lost by rule, and every loss of information is
reported through ``warn``: uid above 16 bits and gid above 8 bits are
truncated (as mkfs.cramfs does), names longer than 252 bytes are cut on a
UTF-8 boundary (as mkcramfs does).  Sizes of 2^24 bytes or more, device
numbers above 255 and offsets beyond the 26-bit field are refused with a
:class:`BuildError` naming the path.  Timestamps, xattrs and hard-link
identity do not exist in cramfs: as in mkfs.cramfs, files and symlinks with
identical contents (hard links or copies) share one data record, and each
name is its own inode with nlink 1.  Without -z/-x/-X the output is
byte-identical to util-linux ``mkfs.cramfs -b 4096`` (same zlib level 6).

The ``HOLES`` superblock flag is never set: it is informational (the kernel
and fsck treat a zero-length block as a hole regardless) and util-linux
``fsck.cramfs`` rejects images that carry it.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import stat
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from fusefs.cramfs.format import (
    CRAMFS_BLK_DIRECT_PTR_SHIFT,
    CRAMFS_BLK_FLAG_DIRECT_PTR,
    CRAMFS_BLK_FLAG_UNCOMPRESSED,
    CRAMFS_BLOCK_SIZE,
    CRAMFS_DEFAULT_NAME,
    CRAMFS_FLAG_EXT_BLOCK_POINTERS,
    CRAMFS_FLAG_FSID_VERSION_2,
    CRAMFS_FLAG_SORTED_DIRS,
    CRAMFS_INODE_SIZE,
    CRAMFS_MAGIC,
    CRAMFS_MAX_FILE_SIZE,
    CRAMFS_MAXPATHLEN,
    CRAMFS_OFFSET_WIDTH,
    CRAMFS_PAD_SIZE,
    CRAMFS_SB_SIZE,
    CRAMFS_SIGNATURE,
    CRC_OFFSET,
    CramfsInode,
    CramfsSuper,
    Endian,
    image_crc,
    nr_blocks,
    padded_name_len,
    rdev_encode,
    u32,
)
from fusefs.elf import is_elf_program
from mkimage.errors import BuildError
from mkimage.tree import Node, Tree, show

Warn = Callable[[str], None]

# a directory list or data record must start below 2^26 words (256 MiB)
MAX_OFFSET: Final = (1 << CRAMFS_OFFSET_WIDTH) << 2
XIP_ALIGN_NOMMU: Final = 8  # mkcramfs -X: only contiguity matters without an MMU
XIP_ALIGN_MMU: Final = CRAMFS_BLOCK_SIZE  # -X -X: page-aligned for an MMU


@dataclass(frozen=True, slots=True)
class CramfsOptions:
    """What ``nommufs mkimage cramfs`` was asked for (mkcramfs spellings in the CLI)."""

    endian: Endian = "little" if sys.byteorder == "little" else "big"
    edition: int = 0
    name: bytes = CRAMFS_DEFAULT_NAME
    holes: bool = False  # -z
    pad: bool = False  # -p
    ext_pointers: bool = False  # -x: store blocks that do not compress raw (flag U)
    xip: int = 0  # -X count: 0 none, 1 nommu alignment, 2 MMU page alignment
    xip_globs: tuple[str, ...] = ()  # --xip GLOB; empty: ELF executables and libraries
    level: int = 6  # zlib level (util-linux uses compress(): 6)

    def __post_init__(self) -> None:
        if not 0 <= self.edition < 1 << 32:
            raise BuildError(f"edition {self.edition} does not fit 32 bits")
        if not 0 <= self.level <= 9:
            raise BuildError(f"zlib level {self.level} is not 0..9")
        if not 0 <= self.xip <= 2:
            raise BuildError("-X may be given at most twice")


@dataclass(slots=True)
class _Entry:
    """A node as it will be stored: final name and fields, and where it goes."""

    node: Node
    name: bytes
    uid: int
    gid: int
    size: int
    children: list[_Entry] = field(default_factory=list)
    offset: int = 0  # bytes: directory list or data record (0: none)


@dataclass(slots=True)
class BuildReport:
    """What was written, for ``-v`` and the tests."""

    size: int = 0
    files: int = 0
    blocks: int = 0
    holes: int = 0
    raw_blocks: int = 0
    shared: int = 0  # files and symlinks stored as a reference to an identical record
    xip_files: list[bytes] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _truncate_name(name: bytes) -> bytes:
    """At most 252 bytes, cut on a UTF-8 character boundary when the name is UTF-8."""
    cut = name[:CRAMFS_MAXPATHLEN]
    try:
        name.decode()
    except UnicodeDecodeError:
        return cut
    while cut:
        try:
            cut.decode()
            return cut
        except UnicodeDecodeError:
            cut = cut[:-1]
    return cut


class CramfsWriter:
    """Lays out and writes one image; use :func:`build_cramfs`."""

    def __init__(self, tree: Tree, opts: CramfsOptions, warn: Warn) -> None:
        self.tree = tree
        self.opts = opts
        self.report = BuildReport()
        self._warn_fn = warn
        self.u32 = u32(opts.endian)
        self.start = CRAMFS_PAD_SIZE if opts.pad else 0
        self.ext_used = False

    def warn(self, msg: str) -> None:
        self.report.warnings.append(msg)
        self._warn_fn(msg)

    # -- checking and converting the tree ----------------------------------------------

    def _entry(self, node: Node, name: bytes) -> _Entry:
        where = show(node.path) or "/"
        uid, gid = node.uid, node.gid
        if uid >= 1 << 16:
            uid &= 0xFFFF
            self.warn(f"{where}: uid {node.uid} truncated to {uid} (cramfs has 16-bit uids)")
        if gid >= 1 << 8:
            gid &= 0xFF
            self.warn(f"{where}: gid {node.gid} truncated to {gid} (cramfs has 8-bit gids)")
        fmt = stat.S_IFMT(node.mode)
        if fmt == stat.S_IFREG:
            size = node.size
            if size > CRAMFS_MAX_FILE_SIZE:
                raise BuildError(
                    f"{where}: {size} bytes is more than cramfs's"
                    f" {CRAMFS_MAX_FILE_SIZE}-byte file limit"
                )
        elif fmt == stat.S_IFLNK:
            size = len(node.target or b"")
            if not size:
                raise BuildError(f"{where}: empty symlink target")
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            major, minor = os.major(node.rdev), os.minor(node.rdev)
            if major > 255 or minor > 255:
                raise BuildError(
                    f"{where}: device {major}:{minor} does not fit cramfs's 8-bit major/minor"
                )
            size = rdev_encode(major, minor)
        else:
            size = 0
        entry = _Entry(node, name, uid, gid, size)
        if node.is_dir:
            seen: dict[bytes, bytes] = {}
            for child in node.children:
                cname = child.name
                if len(cname) > CRAMFS_MAXPATHLEN:
                    short = _truncate_name(cname)
                    self.warn(
                        f"{show(child.path)}: name of {len(cname)} bytes truncated to {len(short)}"
                        f" (cramfs names are at most {CRAMFS_MAXPATHLEN} bytes)"
                    )
                    cname = short
                if cname in seen:
                    raise BuildError(
                        f"{show(child.path)}: name collides with"
                        f" {show(seen[cname])} after truncation"
                    )
                seen[cname] = child.path
                entry.children.append(self._entry(child, cname))
            # cramfs: entries sorted bytewise (SORTED_DIRS)
            entry.children.sort(key=lambda e: e.name)
        return entry

    def _is_xip(self, e: _Entry, data: bytes) -> bool:
        """-X selects files matching --xip, by default ELF executables and shared objects."""
        if not self.opts.xip or not e.node.is_reg or not e.size:
            return False
        if self.opts.xip_globs:
            path = e.node.path.decode(errors="surrogateescape")
            base = path.rsplit("/", 1)[-1]
            return any(
                fnmatch.fnmatchcase(path, g) or fnmatch.fnmatchcase(base, g)
                for g in self.opts.xip_globs
            )
        return is_elf_program(data[:64])

    # -- layout ----------------------------------------------------------------------

    def build(self) -> bytes:
        root = self._entry(self.tree.root, b"")
        # directory area: root's list, then each subdirectory's in depth-first pre-order
        dir_order: list[_Entry] = []

        def dirs(d: _Entry) -> None:
            dir_order.append(d)
            for c in d.children:
                if c.node.is_dir:
                    dirs(c)

        dirs(root)
        pos = self.start + CRAMFS_SB_SIZE
        for d in dir_order:
            if d.children:
                d.offset = pos
                d.size = sum(CRAMFS_INODE_SIZE + padded_name_len(len(c.name)) for c in d.children)
                if d.size > CRAMFS_MAX_FILE_SIZE:
                    raise BuildError(f"{show(d.node.path) or '/'}: directory too large for cramfs")
                self._check_offset(d.offset, d)
                pos += d.size
            else:
                d.size = 0
        # mkfs.cramfs and both fscks: the root points at 76 (588) even when empty
        root.offset = self.start + CRAMFS_SB_SIZE
        dir_end = pos
        out = bytearray(dir_end)
        # data records in depth-first tree order
        self.report.files = 1

        records: dict[tuple[bool, bytes, int], int] = {}

        def data(d: _Entry) -> None:
            for c in d.children:
                self.report.files += 1
                if c.node.is_dir:
                    data(c)
                elif (c.node.is_reg or c.node.is_lnk) and c.size:
                    content = c.node.read_data()
                    if len(content) != c.size:
                        raise BuildError(f"{show(c.node.path)}: changed size while being read")
                    # like mkfs.cramfs: identical contents (hard links or copies) share one record
                    key = (self._is_xip(c, content), hashlib.sha256(content).digest(), c.size)
                    shared = records.get(key)
                    if shared is not None:
                        c.offset = shared
                        self.report.shared += 1
                        continue
                    c.offset = len(out)
                    self._check_offset(c.offset, c)
                    self._record(out, c, content, key[0])
                    records[key] = c.offset

        data(root)
        # image size: a multiple of the block size from byte 0
        out += bytes(-len(out) % CRAMFS_BLOCK_SIZE)
        for d in dir_order:
            p = d.offset
            for c in d.children:
                inode = self._inode(c)
                out[p : p + CRAMFS_INODE_SIZE] = inode.pack(self.opts.endian)
                p += CRAMFS_INODE_SIZE
                nl = padded_name_len(len(c.name))
                out[p : p + nl] = c.name.ljust(nl, b"\0")
                p += nl
        flags = CRAMFS_FLAG_FSID_VERSION_2 | CRAMFS_FLAG_SORTED_DIRS
        if self.ext_used:
            flags |= CRAMFS_FLAG_EXT_BLOCK_POINTERS
        sb = CramfsSuper(
            magic=CRAMFS_MAGIC,
            size=len(out),
            flags=flags,
            future=0,
            signature=CRAMFS_SIGNATURE,
            crc=0,
            edition=self.opts.edition,
            blocks=self.report.blocks,
            files=self.report.files,
            name=self.opts.name[:16].ljust(16, b"\0"),
            root=self._inode(root),
        )
        s = self.start
        out[s : s + CRAMFS_SB_SIZE] = sb.pack(self.opts.endian)
        crc = image_crc(out, s, len(out))
        out[s + CRC_OFFSET : s + CRC_OFFSET + 4] = self.u32.pack(crc)
        self.report.size = len(out)
        return bytes(out)

    def _check_offset(self, offset: int, e: _Entry) -> None:
        if offset >= MAX_OFFSET:
            raise BuildError(
                f"{show(e.node.path) or '/'}: offset {offset:#x} is beyond"
                " cramfs's 256 MiB offset limit"
            )

    def _inode(self, e: _Entry) -> CramfsInode:
        return CramfsInode(
            mode=e.node.mode & 0xFFFF,
            uid=e.uid,
            size=e.size,
            gid=e.gid,
            namelen=padded_name_len(len(e.name)) >> 2,
            offset=e.offset >> 2,
        )

    def _record(self, out: bytearray, e: _Entry, data: bytes, xip: bool) -> None:
        """Pointer table and blocks of one file or symlink, 4-padded."""
        n = nr_blocks(e.size)
        self.report.blocks += n
        table = len(out)
        out += bytes(4 * n)
        align = XIP_ALIGN_MMU if self.opts.xip >= 2 else XIP_ALIGN_NOMMU
        if xip:
            self.report.xip_files.append(e.node.path)
            self.ext_used = True
        ptrs: list[int] = []
        for i in range(n):
            chunk = data[i * CRAMFS_BLOCK_SIZE : (i + 1) * CRAMFS_BLOCK_SIZE]
            last = i == n - 1
            # reference 4.2 hazard: the kernel reads a U+D last block of a
            # page-multiple file as a hole, so that block is stored non-direct
            if xip and not (last and e.size % CRAMFS_BLOCK_SIZE == 0):
                out += bytes(-len(out) % align)
                ptrs.append(
                    (len(out) >> CRAMFS_BLK_DIRECT_PTR_SHIFT)
                    | CRAMFS_BLK_FLAG_UNCOMPRESSED
                    | CRAMFS_BLK_FLAG_DIRECT_PTR
                )
                out += chunk
                if last and self.opts.xip >= 2:
                    # zero the rest of the last page so it can be mapped in place too
                    out += bytes(-len(out) % CRAMFS_BLOCK_SIZE)
                continue
            if xip:
                # raw and non-direct; its implied start is the previous block's end
                out += chunk
                ptrs.append(len(out) | CRAMFS_BLK_FLAG_UNCOMPRESSED)
                self.report.raw_blocks += 1
                continue
            if e.node.is_reg and self.opts.holes and not any(chunk):
                ptrs.append(len(out))
                self.report.holes += 1
                continue
            comp = zlib.compress(chunk, self.opts.level)
            if self.opts.ext_pointers and len(comp) >= len(chunk):
                out += chunk
                ptrs.append(len(out) | CRAMFS_BLK_FLAG_UNCOMPRESSED)
                self.ext_used = True
                self.report.raw_blocks += 1
            else:
                out += comp
                ptrs.append(len(out))
        for i, p in enumerate(ptrs):
            if not p & CRAMFS_BLK_FLAG_DIRECT_PTR and p & ~CRAMFS_BLK_FLAG_UNCOMPRESSED >= 1 << 30:
                raise BuildError(f"{show(e.node.path)}: image too large for cramfs block pointers")
            self.u32.pack_into(out, table + 4 * i, p)
        out += bytes(-len(out) % 4)


def build_cramfs(
    tree: Tree, opts: CramfsOptions, warn: Warn | None = None
) -> tuple[bytes, BuildReport]:
    """The image bytes for ``tree`` and a report; BuildError for what cramfs cannot hold."""
    w = CramfsWriter(tree, opts, warn or (lambda _m: None))
    image = w.build()
    return image, w.report
