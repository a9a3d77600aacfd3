"""The cramfs reader: :class:`CramfsFilesystem`.

Inode numbers.  A cramfs inode has no number on disk; its *disk location*
is the byte offset of its 12-byte inode in the image (the root's is inside
the superblock: 64, or 576 behind the boot pad).  That offset is the
:data:`~fusefs.vfs.Ino` handed out: unique per entry (cramfs has no hard
links, nlink is 1), never 0 or 1.  (The kernel's ``cramino`` uses the data
offset instead, so deduplicated files share a number; ours do not.)

Reads follow the kernel: every block, compressed or not, is read into a
page-cache frame of the image's arena (``read_folio``) unless
``MemoryConfig.xip_read == "direct"``, when uncompressed direct blocks are
served straight from the image mapping (:class:`mmshim.flash.Flash`), as a
DAX filesystem would.  Decompressed lengths must be exact (what
``fsck.cramfs`` requires; the kernel zero-fills instead).  A block inflates
to at most one page, so ``MemoryConfig.decompress`` has nothing to choose
here: each block is inflated (Python zlib) and copied into its page-cache
frame, one page at a time as the kernel's cramfs does.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fusefs.cramfs import mmap as cmmap
from fusefs.cramfs.data import BlockMap, Extent
from fusefs.cramfs.format import (
    CRAMFS_BLOCK_SIZE,
    CRAMFS_FLAG_EXT_BLOCK_POINTERS,
    CRAMFS_FLAG_FSID_VERSION_2,
    CRAMFS_FLAG_HOLES,
    CRAMFS_FLAG_SHIFTED_ROOT_OFFSET,
    CRAMFS_FLAG_SORTED_DIRS,
    CRAMFS_FLAG_WRONG_SIGNATURE,
    CRAMFS_MAXPATHLEN,
    CRAMFS_SIGNATURE,
    CramfsInode,
    rdev_decode,
)
from fusefs.cramfs.inode import RawEntry, iter_dir
from fusefs.cramfs.super import probe, read_super
from fusefs.errors import (
    CorruptImageError,
    FsError,
    InvalidArgumentError,
    IsADirectoryFsError,
    NoAttributeError,
    NotADirectoryFsError,
    NotASymlinkError,
    NotFoundError,
)
from fusefs.memory import ReadMemory
from fusefs.names import escape, json_name
from fusefs.vfs import (
    Attr,
    Capabilities,
    DataExtent,
    DirEntry,
    Filesystem,
    FsStat,
    ImageBytes,
    Ino,
    MemoryConfig,
    ranges_of,
)
from mmshim import Page
from mmshim.flash import Flash

_FLAG_NAMES = {
    CRAMFS_FLAG_FSID_VERSION_2: "fsid_v2",
    CRAMFS_FLAG_SORTED_DIRS: "sorted_dirs",
    CRAMFS_FLAG_HOLES: "holes",
    CRAMFS_FLAG_WRONG_SIGNATURE: "wrong_signature",
    CRAMFS_FLAG_SHIFTED_ROOT_OFFSET: "shifted_root_offset",
    CRAMFS_FLAG_EXT_BLOCK_POINTERS: "ext_block_pointers",
}


@dataclass(slots=True)
class _Node:
    """An inode reached from the root, with its parent and (for directories) entries."""

    inode: CramfsInode
    parent: int
    children: dict[bytes, int] | None = None
    order: list[RawEntry] | None = None


class CramfsFilesystem(Filesystem):
    """A cramfs image (either byte order, boot pad, holes, extended pointers, XIP)."""

    format_name = "cramfs"
    capabilities = Capabilities(mmap=True, xip=True)

    def __init__(self, image: ImageBytes, memory: MemoryConfig) -> None:
        super().__init__(image, memory)
        self.si = read_super(image)
        self.endian = self.si.endian
        self.limit = self.si.size
        self._root = Ino(self.si.root_offset)
        self._nodes: dict[int, _Node] = {}
        self._index()
        self.mem = ReadMemory(memory, fmt="cramfs")
        self.arena = self.mem.arena
        self.cache = self.mem.cache
        self.counters = self.mem.counters
        self.flash = Flash(image.view[: self.limit])
        self._maps: dict[int, BlockMap] = {}

    # -- the directory tree, checked once at mount --------------------------------

    def _index(self) -> None:
        """Walk every directory once: parents, names, cycles and overlaps."""
        root = self.si.sb.root
        self._nodes[self._root] = _Node(root, self._root)
        seen_dirs: set[int] = set()
        dir_bytes = 0
        stack = [int(self._root)]
        while stack:
            dino = stack.pop()
            node = self._nodes[dino]
            node.children, node.order = {}, []
            if node.inode.size:
                start = node.inode.offset << 2
                if start in seen_dirs:
                    raise CorruptImageError(
                        "directory entries reached twice (directory cycle)",
                        structure="cramfs directory",
                        offset=start,
                        nid=dino,
                    )
                seen_dirs.add(start)
                dir_bytes += node.inode.size
                if dir_bytes > self.limit:
                    raise CorruptImageError(
                        "directories claim more bytes than the filesystem has (overlap)",
                        structure="cramfs directory",
                        offset=start,
                        nid=dino,
                    )
            for ent in iter_dir(self.image, self.endian, node.inode, self.limit):
                if ent.name in node.children:
                    raise CorruptImageError(
                        f"duplicate name {escape(ent.name)}",
                        structure="cramfs dirent",
                        offset=ent.pos,
                    )
                node.children[ent.name] = ent.pos
                node.order.append(ent)
                self._nodes[ent.pos] = _Node(ent.inode, dino)
                if stat.S_ISDIR(ent.inode.mode):
                    stack.append(ent.pos)

    def _node(self, ino: Ino) -> _Node:
        node = self._nodes.get(ino)
        if node is None:
            raise NotFoundError(f"cramfs: no inode {ino}")
        return node

    # -- Filesystem ------------------------------------------------------------

    @property
    def root(self) -> Ino:
        return self._root

    def getattr(self, ino: Ino) -> Attr:
        i = self._node(ino).inode
        mode = i.mode
        fmt = stat.S_IFMT(mode)
        rdev = 0
        size = 0
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            rdev = os.makedev(*rdev_decode(i.size))
        elif fmt in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
            size = i.size
        if ino == self._root:
            mode |= 0o555  # the kernel ORs this into the root's mode at mount
        blocks = (size - 1) // 512 + 1 if size else 0
        return Attr(ino, mode, 1, i.uid, i.gid, size, 0, rdev, blocks)

    def lookup(self, parent: Ino, name: bytes) -> Ino:
        node = self._node(parent)
        if node.children is None:
            raise NotADirectoryFsError(f"cramfs inode {parent}: not a directory")
        child = node.children.get(name)
        if child is None:
            raise NotFoundError(f"{escape(name)}: not found")
        return Ino(child)

    def readdir(self, ino: Ino, offset: int = 0) -> Iterator[DirEntry]:
        node = self._node(ino)
        if node.order is None:
            raise NotADirectoryFsError(f"cramfs inode {ino}: not a directory")
        # offsets: 1 and 2 for . and .., then each entry's byte position (> 64)
        if offset < 1:
            yield DirEntry(b".", ino, stat.S_IFDIR, 1)
        if offset < 2:
            yield DirEntry(b"..", Ino(node.parent), stat.S_IFDIR, 2)
        for ent in node.order:
            if ent.pos > offset:
                yield DirEntry(ent.name, Ino(ent.pos), stat.S_IFMT(ent.inode.mode), ent.pos)

    def blockmap(self, ino: Ino) -> BlockMap:
        bm = self._maps.get(ino)
        if bm is None:
            node = self._node(ino)
            bm = BlockMap(self.image, self.si, node.inode, ino)
            with self.lock:
                if len(self._maps) > 1024:
                    self._maps.clear()
                self._maps[ino] = bm
        return bm

    def _decode(self, bm: BlockMap, ext: Extent) -> bytes:
        """The bytes of one block (no page cache): holes, raw, or inflated."""
        want = bm.expected_len(ext.index)
        if ext.hole:
            return bytes(want)
        src = self.image.slice(ext.start, ext.length, structure="cramfs data", nid=bm.pos)
        if ext.uncompressed:
            if ext.length != want:
                raise CorruptImageError(
                    f"uncompressed block {ext.index} holds {ext.length} bytes, expected {want}",
                    structure="cramfs data",
                    offset=ext.start,
                    nid=bm.pos,
                )
            return bytes(src)
        d = zlib.decompressobj()
        try:
            out = d.decompress(src, CRAMFS_BLOCK_SIZE)
        except zlib.error as e:
            raise CorruptImageError(
                f"block {ext.index}: decompression error ({e})",
                structure="cramfs data",
                offset=ext.start,
                nid=bm.pos,
            ) from e
        if not d.eof or d.unconsumed_tail or len(out) != want:
            raise CorruptImageError(
                f"block {ext.index} inflates to {len(out)}{'' if d.eof else '+'} bytes,"
                f" expected {want}",
                structure="cramfs data",
                offset=ext.start,
                nid=bm.pos,
            )
        with self.lock:
            self.counters.bytes_decompressed += len(out)
        return out

    def _fill(self, page: Page, bm: BlockMap, ext: Extent) -> None:
        data = self._decode(bm, ext)
        view = self.arena.page_view(page)
        view[: len(data)] = data
        view[len(data) :] = bytes(CRAMFS_BLOCK_SIZE - len(data))
        if ext.uncompressed and not ext.hole:
            with self.lock:
                self.counters.copy_bytes += len(data)

    def cache_page(self, ino: Ino, index: int) -> Page:
        """Block ``index`` of a file in a page-cache frame (``read_folio``).

        The caller holds a reference and drops it with ``cache.release``."""
        bm = self.blockmap(ino)
        ext = bm.extent(index)
        for _attempt in range(2):
            page, created = self.mem.grab(ino, index, f"inode {ino}")
            if created:
                try:
                    self._fill(page, bm, ext)
                    page.set_uptodate()
                finally:
                    page.unlock()
                    if not page.is_uptodate:
                        self.cache.release(page)
                        self.cache.invalidate(ino)
                with self.lock:
                    self.counters.blocks_read += 1
                return page
            page.wait_unlocked()
            if page.is_uptodate:
                return page
            self.cache.release(page)
            self.cache.invalidate(ino)
        raise FsError(f"cramfs inode {ino} page {index}: could not be read in")

    def read(self, ino: Ino, offset: int, size: int) -> bytes:
        node = self._node(ino)
        if stat.S_ISDIR(node.inode.mode):
            raise IsADirectoryFsError(f"cramfs inode {ino}: is a directory")
        if not stat.S_ISREG(node.inode.mode):
            raise FsError(f"cramfs inode {ino}: not a regular file")
        fsize = node.inode.size
        end = min(fsize, offset + size)
        if offset < 0 or offset >= end:
            return b""
        bm = self.blockmap(ino)
        out = bytearray()
        pos = offset
        while pos < end:
            index, inpage = divmod(pos, CRAMFS_BLOCK_SIZE)
            n = min(CRAMFS_BLOCK_SIZE - inpage, end - pos)
            ext = bm.extent(index)
            if self.memory.xip_read == "direct" and ext.uncompressed and ext.direct:
                out += self.flash.read_bytes(ext.start + inpage, n)
                with self.lock:
                    self.counters.flash_bytes_direct += n
            else:
                page = self.cache_page(ino, index)
                try:
                    out += self.arena.page_view(page)[inpage : inpage + n]
                finally:
                    self.cache.release(page)
            pos += n
        return bytes(out)

    def data_ranges(self, ino: Ino) -> Iterator[tuple[int, int]]:
        """Blocks whose pointer says hole (``mkcramfs -z``: no stored bytes)
        are holes; one pointer per 4 KiB block, all inside the image."""
        return ranges_of(self.data_extents(ino))

    def data_extents(self, ino: Ino) -> Iterator[DataExtent]:
        """One per block that is not a hole; its source is where its bytes
        are stored and whether they are raw.  Direct pointers (``-X -X``)
        may point several blocks at the same stored block; each decodes to
        exactly its length."""
        node = self._node(ino)
        if not stat.S_ISREG(node.inode.mode):
            raise InvalidArgumentError(f"cramfs inode {ino}: not a regular file")
        bm = self.blockmap(ino)
        for i in range(bm.nr):
            ext = bm.extent(i)
            if ext.hole:
                continue
            lo = i * CRAMFS_BLOCK_SIZE
            source = (ext.start, ext.length, ext.uncompressed)
            yield DataExtent(lo, min(lo + CRAMFS_BLOCK_SIZE, bm.size) - lo, source)

    def readlink(self, ino: Ino) -> bytes:
        node = self._node(ino)
        if not stat.S_ISLNK(node.inode.mode):
            raise NotASymlinkError(f"cramfs inode {ino}: not a symbolic link")
        bm = self.blockmap(ino)
        return b"".join(self._decode(bm, bm.extent(i)) for i in range(bm.nr))

    def listxattr(self, ino: Ino) -> list[bytes]:
        self._node(ino)
        return []

    def getxattr(self, ino: Ino, name: bytes) -> bytes:
        self._node(ino)
        raise NoAttributeError(f"cramfs has no extended attributes ({escape(name)})")

    def statfs(self) -> FsStat:
        sb = self.si.sb
        return FsStat(CRAMFS_BLOCK_SIZE, sb.blocks, sb.files, name_max=CRAMFS_MAXPATHLEN)

    # -- inspect / fsck ---------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        sb = self.si.sb
        return {
            "format": "cramfs",
            "byte_order": self.endian,
            "superblock_offset": self.si.start,
            "size": sb.size,
            "flags": sb.flags,
            "features": [n for bit, n in _FLAG_NAMES.items() if sb.flags & bit],
            "signature": sb.signature.decode("latin-1"),
            "crc": sb.crc,
            "edition": sb.edition,
            "blocks": sb.blocks,
            "files": sb.files,
            "name": json_name(sb.name.rstrip(b"\0")),
            "root_offset": sb.root.offset << 2,
            "inodes": len(self._nodes),
            "xip_files": sum(1 for ino in self._regular() if self._xip_count(Ino(ino))),
        }

    def stored_bytes(self, ino: Ino) -> int:
        """The bytes of the file's blocks (compressed, raw or XIP; holes
        none) and of its block pointers: cramfs's st_blocks follows the size."""
        i = self._node(ino).inode
        if not (stat.S_ISREG(i.mode) or stat.S_ISLNK(i.mode)) or not i.size:
            return 0
        bm = self.blockmap(ino)
        extents = (bm.extent(n) for n in range(bm.nr))
        return 4 * bm.nr + sum(e.length for e in extents if not e.hole)

    def _xip_count(self, ino: Ino) -> int:
        try:
            return self.xip_pages(ino)[1]
        except FsError:
            return 0  # a broken pointer table is fsck's to report, not inspect's

    def _regular(self) -> Iterator[int]:
        for ino, node in self._nodes.items():
            if stat.S_ISREG(node.inode.mode) and node.inode.size:
                yield ino

    def describe_inode(self, ino: Ino) -> dict[str, Any]:
        node = self._node(ino)
        i = node.inode
        out: dict[str, Any] = {
            "ino": int(ino),
            "inode_offset": int(ino),
            "mode": i.mode,
            "uid": i.uid,
            "gid": i.gid,
            "size": i.size,
            "namelen_words": i.namelen,
            "data_offset": i.offset << 2,
        }
        if (stat.S_ISREG(i.mode) or stat.S_ISLNK(i.mode)) and i.size:
            bm = self.blockmap(ino)
            blocks = []
            for n in range(bm.nr):
                e = bm.extent(n)
                kind = (
                    "hole"
                    if e.hole
                    else ("U" if e.uncompressed else "") + ("D" if e.direct else "")
                )
                blocks.append(
                    {"index": n, "start": e.start, "length": e.length, "kind": kind or "zlib"}
                )
            out["blocks"] = blocks
            first, count = self.xip_pages(ino)
            out["xip_direct_pages"] = count
            if count:
                out["xip_flash_offset"] = first
        return out

    def xip_pages(self, ino: Ino, pgoff: int = 0, pages: int | None = None) -> tuple[int, int]:
        """The range test (``cramfs_get_block_range``): (flash offset, k) of the U+D
        blocks contiguous in 4096-byte steps from block ``pgoff``; k == 0: none."""
        return cmmap.block_range(self.blockmap(ino), pgoff, pages)

    def fsck_extra(self) -> Iterator[str]:
        sb = self.si.sb
        if sb.signature != CRAMFS_SIGNATURE:
            yield f"superblock signature {sb.signature!r} is not {CRAMFS_SIGNATURE!r}"
        if not sb.flags & CRAMFS_FLAG_FSID_VERSION_2:
            yield "old cramfs format (no FSID_VERSION_2): size and CRC not checked"
        files = len(self._nodes)
        if sb.flags & CRAMFS_FLAG_FSID_VERSION_2 and sb.files != files:
            yield f"superblock file count {sb.files}, tree has {files}"
        dir_end = 0
        data_start = self.limit
        for ino, node in self._nodes.items():
            if node.order is not None:
                names = [e.name for e in node.order]
                if sb.flags & CRAMFS_FLAG_SORTED_DIRS and names != sorted(names):
                    yield f"directory at inode {ino}: entries not sorted but SORTED_DIRS is set"
                if node.order:
                    dir_end = max(dir_end, node.order[-1].end)
            elif node.inode.offset and node.inode.size:
                data_start = min(data_start, node.inode.offset << 2)
        if dir_end and data_start < self.limit and dir_end != data_start:
            yield f"directory data end ({dir_end:#x}) != file data start ({data_start:#x})"
        for ino in self._regular():
            node = self._nodes[ino]
            try:
                bm = self.blockmap(Ino(ino))
                last = bm.extent(bm.nr - 1)
            except FsError as err:
                yield str(err)
                continue
            if last.uncompressed and last.direct and node.inode.size % CRAMFS_BLOCK_SIZE == 0:
                yield (
                    f"inode {ino}: size {node.inode.size} is a page multiple and its last block is"
                    " uncompressed+direct: the kernel reads that page as a hole"
                )
            for n in range(bm.nr):
                try:
                    bm.extent(n)
                except FsError as err:
                    yield str(err)
                    break

    def memory_stats(self) -> dict[str, int]:
        """Arena occupancy and the read path's counters (:class:`fusefs.memory.ReadMemory`):
        for cramfs ``bytes_decompressed`` is zlib output, ``copy_bytes`` the
        uncompressed blocks copied from flash into page-cache frames and
        ``flash_bytes_direct`` what ``read()`` served from flash with
        ``xip_read="direct"``, with no frame."""
        with self.lock:
            return self.mem.stats()

    # -- mmap -------------------------------------------------------------------

    def mappable(self, ino: Ino) -> cmmap.CramfsMappedFile:
        """The regular file ``ino`` as an :class:`mmshim.mmap.MmapFile` over this image's arena."""
        node = self._node(ino)
        if not stat.S_ISREG(node.inode.mode):
            raise FsError(f"cramfs inode {ino}: only regular files can be mapped")
        return cmmap.CramfsMappedFile(self, ino, node.inode.size)

    def close(self) -> None:
        """Close the image; FsError if mappings or page references were leaked."""
        try:
            self.mem.close()
        finally:
            self.flash.release()
            super().close()


def probe_cramfs(image: ImageBytes) -> bool:
    """True when ``image`` starts (or starts after the 512-byte pad) with the cramfs magic."""
    return probe(image)


def open_cramfs(image: ImageBytes, memory: MemoryConfig) -> Filesystem:
    """The opener registered in :mod:`fusefs.formats`; library errors only."""
    try:
        return CramfsFilesystem(image, memory)
    except FsError:
        raise
    except (ValueError, MemoryError) as e:
        raise FsError(f"cramfs: cannot open image: {e}") from e


__all__ = ["CramfsFilesystem", "open_cramfs", "probe_cramfs"]
