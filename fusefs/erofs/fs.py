"""An EROFS image as a :class:`fusefs.vfs.Filesystem`.

Identifier spaces.  An EROFS inode is found by its *nid*: the number of the
32-byte slot where its core starts, counted from ``meta_blkaddr`` (byte
``meta_blkaddr * block_size + 32 * nid``).  Nids appear in dirents (64 bits)
and in the superblock (the root's).  Hard links are dirents with the same
nid.  With METABOX, a nid with bit 63 set counts slots from the start of the
metabox inode's data instead (``32 * (nid & ~(1 << 63))`` there): the
metabox inode itself, like the packed inode, has a plain nid.  The
:data:`~fusefs.vfs.Ino` this filesystem hands out is::

    ino = nid + INO_BIAS        (INO_BIAS = 2)

so it is stable for the life of the image, shared by hard links, never 0,
and never 1: the FUSE adapter maps ``root`` (the root's nid + 2) to FUSE
inode 1 and passes every other Ino through unchanged.  The on-disk
``i_ino`` (mkfs numbers inodes 1..inos for old 32-bit stat) is shown by
``describe_inode`` but not used as an identifier, as in the kernel.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import stat
from collections.abc import Callable, Hashable, Iterator
from typing import Any, Final, ParamSpec, TypeVar

from fusefs.erofs import format as f
from fusefs.erofs.data import (
    ENCODED,
    FRAGMENT,
    MAPPED,
    META,
    PARTIAL_REF,
    Map,
    MetaboxBuf,
    MetaBuf,
    MetaRecord,
    chunk_count,
    chunk_table,
    fill_plain,
    iter_maps,
    read_plain,
)
from fusefs.erofs.dir import block_maxsize, dir_nblocks, iter_entries
from fusefs.erofs.dirent import DirEntryRecord, unpack_dirent_block
from fusefs.erofs.format import Nid
from fusefs.erofs.inode import ErofsInode, read_inode
from fusefs.erofs.namei import find_entry
from fusefs.erofs.super import ErofsSuper, read_super
from fusefs.erofs.xattr import read_long_prefixes, read_xattrs
from fusefs.erofs.zdata import ZData
from fusefs.erofs.zmap import ZMap, trailer_end
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
from fusefs.memory import ReadMemory, SequentialReads, filemap_read
from fusefs.names import escape, json_name
from fusefs.vfs import (
    STRATEGIES,
    Attr,
    BoundedCache,
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
from mmshim import PAGE_SIZE

P = ParamSpec("P")
R = TypeVar("R")


def _clean_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Raise FsErrors from the public API without their traceback and context:
    the frames they would keep alive hold views of the mapped image and of
    the arena, which must be closable while a caller still holds the error."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except FsError as e:
            err = e
        raise _bare(err)

    return wrapper


def _bare(err: FsError) -> FsError:
    """``err`` without its traceback and context (see :func:`_clean_errors`)."""
    err.__traceback__ = None
    err.__context__ = err.__cause__ = None
    return err


INO_BIAS: Final = 2
PS: Final = PAGE_SIZE
INODE_CACHE_SIZE: Final = 8192
DIRBLOCK_CACHE_SIZE: Final = 2048
MAX_SYMLINK: Final = 65536


class ErofsFilesystem(Filesystem):
    """A read-only EROFS image: superblock checked at open, inodes and
    directory blocks parsed lazily into bounded caches, file data read
    through the page cache of an ``mmshim`` arena (see :mod:`fusefs.erofs.zdata`)."""

    format_name = "erofs"
    capabilities = Capabilities(strategies=STRATEGIES)

    def __init__(self, image: ImageBytes, memory: MemoryConfig) -> None:
        super().__init__(image, memory)
        self.sbi: ErofsSuper = read_super(image)
        # Metadata is parsed straight from the immutable image, so it needs no
        # lock beyond the caches' own; ``self.lock`` serialises only the page
        # cache and arena, so a lookup never waits behind a decompression.
        self.inode_cache: BoundedCache[int, tuple[ErofsInode, ZMap | None]] = BoundedCache(
            INODE_CACHE_SIZE
        )
        self.dir_cache: BoundedCache[tuple[int, int], list[DirEntryRecord]] = BoundedCache(
            DIRBLOCK_CACHE_SIZE
        )
        # under self.lock: the nids being read (outermost first), and whether
        # the packed inode is one of them
        self._reading: list[int] = []
        self._reading_packed = False
        self.reader = self.mem = ReadMemory(memory, fmt="erofs")
        self.arena = self.reader.arena
        self.sequential = SequentialReads()
        try:
            self.zdata = ZData(self.reader, image, self.sbi, memory.decompress, self._read_fragment)
        except BaseException:
            self.reader.close()
            raise
        self.metabox: MetaboxBuf | None = None
        self.shared_xattrs: MetaBuf = image
        try:
            self._init_metabox()
            root = self._inode(Nid(self.sbi.root_nid))
            if not root.is_dir:
                raise CorruptImageError(
                    f"root inode is not a directory (mode {root.mode:#o})",
                    structure="erofs superblock",
                    nid=root.nid,
                )
            self.prefixes = read_long_prefixes(image, self.sbi, self.metabox, self._read_fragment)
        except BaseException:
            self._close_memory()
            raise

    # -- identifiers and caches ----------------------------------------------------

    @staticmethod
    def nid_of(ino: Ino) -> Nid:
        return Nid(int(ino) - INO_BIAS)

    @staticmethod
    def ino_of(nid: int) -> Ino:
        return Ino(nid + INO_BIAS)

    @property
    def root(self) -> Ino:
        return self.ino_of(self.sbi.root_nid)

    def _load(self, nid: Nid) -> tuple[ErofsInode, ZMap | None]:
        hit = self.inode_cache.get(nid)
        if hit is not None:
            return hit
        if f.nid_in_metabox(nid):
            inode = self._load_from_metabox(nid)
        else:
            inode = read_inode(self.image, self.image, self.sbi, nid)
        zmap = ZMap(self.image, self.sbi, inode) if inode.is_compressed else None
        return self.inode_cache.put(nid, (inode, zmap))

    # -- the metabox ---------------------------------------------------------------

    def _init_metabox(self) -> None:
        """METABOX: inodes (with their xattrs, inline data and indexes) live in
        the data of the metabox inode, read through the page cache."""
        sbi = self.sbi
        shared_in_box = bool(sbi.sb.feature_compat & f.EROFS_FEATURE_COMPAT_SHARED_EA_IN_METABOX)
        if shared_in_box and not sbi.has(f.EROFS_FEATURE_INCOMPAT_METABOX):
            raise CorruptImageError(
                "shared xattrs in the metabox, but no metabox", structure="erofs superblock"
            )
        if not sbi.has(f.EROFS_FEATURE_INCOMPAT_METABOX):
            return
        box = self._inode(Nid(sbi.metabox_nid))
        if not box.is_reg:
            raise CorruptImageError(
                f"metabox inode is not a regular file (mode {box.mode:#o})",
                structure="erofs metabox",
                nid=box.nid,
            )
        self.metabox = MetaboxBuf(box.nid, box.size, lambda off, n: self._read_data(box, off, n))
        if shared_in_box:
            self.shared_xattrs = self.metabox

    def _load_from_metabox(self, nid: Nid) -> ErofsInode:
        """An inode whose nid has the metabox bit: its core, then all the
        metadata it owns (xattrs, inline tail, chunk table, or map header,
        indexes and inline pcluster) read once as a :class:`MetaRecord`."""
        box = self.metabox
        if box is None:
            raise CorruptImageError(
                "nid with the metabox bit, but the image has no metabox",
                structure="erofs inode",
                nid=nid,
            )
        core = read_inode(self.image, box, self.sbi, nid)
        size = self._meta_end(core) - core.iloc  # checked against the metabox before it is read
        data = bytes(box.slice(core.iloc, size, structure="erofs inode metadata", nid=nid))
        return dataclasses.replace(core, meta=MetaRecord(core.iloc, data))

    def _meta_end(self, inode: ErofsInode) -> int:
        """Where the metadata of ``inode`` ends in its MetaBuf."""
        bs = self.sbi.block_size
        if inode.is_compressed:
            pos = f.map_header_pos(inode.iloc, inode.inode_isize, inode.xattr_isize)
            raw = inode.meta.slice(pos, f.MapHeader.SIZE, structure="erofs map header",
                                   nid=inode.nid)  # fmt: skip
            return trailer_end(f.MapHeader.unpack_from(raw), pos, inode, self.sbi.blkszbits)
        if inode.layout == f.EROFS_INODE_CHUNK_BASED:
            chunkbits, unit, table = chunk_table(inode, self.sbi.blkszbits)
            return table + unit * chunk_count(inode, chunkbits)
        if inode.layout == f.EROFS_INODE_FLAT_INLINE and inode.size:
            return inode.inline_pos + inode.size - (-(-inode.size // bs) - 1) * bs
        return inode.inline_pos

    def _inode(self, nid: Nid) -> ErofsInode:
        return self._load(nid)[0]

    def inode(self, ino: Ino) -> ErofsInode:
        """The decoded inode behind an Ino (NotFoundError for a bad Ino)."""
        nid = self.nid_of(ino)
        if nid < 0:
            raise NotFoundError(f"erofs: no inode {int(ino)}")
        return self._inode(nid)

    # -- data --------------------------------------------------------------------

    def _read_data(self, inode: ErofsInode, offset: int, size: int) -> bytes:
        inode, zmap = self._load(inode.nid)
        end = min(offset + size, inode.size)
        if offset >= end:
            return b""
        with self.lock:
            self._reading.append(inode.nid)
            try:
                return self._read_locked(inode, zmap, offset, end)
            finally:
                self._reading.pop()

    def _read_locked(self, inode: ErofsInode, zmap: ZMap | None, offset: int, end: int) -> bytes:
        """``_read_data`` with the data lock held."""
        nid = inode.nid
        image, sbi, mem = self.image, self.sbi, self.reader
        sequential = self.sequential.note(nid, offset, end)
        p_end = (end - 1) // PS + 1
        if zmap is None:
            return filemap_read(
                mem, nid, offset, end, lambda p: fill_plain(mem, image, sbi, inode, p, p_end)
            )
        zdata, limit = self.zdata, None if sequential else p_end
        return filemap_read(mem, nid, offset, end, lambda p: zdata.fill(inode, zmap, p, limit))

    def _read_meta(self, inode: ErofsInode, offset: int, size: int) -> bytes:
        """Directory and symlink bytes: straight from the image for
        uncompressed layouts (the kernel's meta buffers), else through the
        page cache."""
        if inode.is_compressed:
            return self._read_data(inode, offset, size)
        return read_plain(self.image, self.sbi, inode, offset, size)

    def _read_fragment(self, off: int, size: int) -> bytes:
        """Bytes of the packed inode (fragments, long xattr prefixes)."""
        nid = self.sbi.sb.packed_nid
        if not nid or not self.sbi.has(f.EROFS_FEATURE_INCOMPAT_FRAGMENTS):
            raise CorruptImageError("fragment without a packed inode", structure="erofs superblock")
        with self.lock:  # the reading state belongs to the thread holding it
            if self._reading_packed:
                # erofs: the packed inode's own data cannot be a fragment of
                # itself; reading it would loop (and relock its own pages)
                raise CorruptImageError(
                    f"loop through the packed inode: reading nid {self._reading[0]} needs"
                    f" a fragment, and the packed inode's own data is a fragment",
                    structure="erofs packed inode",
                    nid=nid,
                )
            packed = self._inode(Nid(nid))
            if not packed.is_reg:
                raise CorruptImageError(
                    "packed inode is not a regular file", structure="erofs packed inode", nid=nid
                )
            self._reading_packed = True
            try:
                data = self._read_data(packed, off, size)
            finally:
                self._reading_packed = False
        if len(data) != size:
            raise CorruptImageError(
                f"fragment [{off}, {off + size}) beyond the packed inode",
                structure="erofs packed inode",
                nid=nid,
            )
        return data

    # -- directories -------------------------------------------------------------

    def _dir_block(self, inode: ErofsInode, blk: int) -> list[DirEntryRecord]:
        key = (inode.nid, blk)
        hit = self.dir_cache.get(key)
        if hit is not None:
            return hit
        bs = self.sbi.block_size
        maxsize = block_maxsize(inode.size, bs, blk)
        data = self._read_meta(inode, blk * bs, maxsize)
        entries = unpack_dirent_block(data, maxsize, nid=inode.nid, offset=blk * bs)
        return self.dir_cache.put(key, entries)

    def _dir(self, ino: Ino) -> ErofsInode:
        inode = self.inode(ino)
        if not inode.is_dir:
            raise NotADirectoryFsError(f"erofs inode nid {inode.nid}: not a directory")
        return inode

    @staticmethod
    def _dot(d: ErofsInode) -> DirEntryRecord | None:
        """The "." a DOT_OMITTED directory does not store (readdir shows it)."""
        return DirEntryRecord(b".", d.nid, f.EROFS_FT_DIR, 0) if d.dot_omitted else None

    def _dirent_type(self, rec: DirEntryRecord) -> int:
        t = f.mode_type_from_ftype(rec.file_type)
        if not t:
            t = stat.S_IFMT(self._inode(Nid(rec.nid)).mode)
        return t

    # -- the Filesystem interface ----------------------------------------------

    @_clean_errors
    def getattr(self, ino: Ino) -> Attr:
        inode = self.inode(ino)
        if inode.is_compressed:
            blocks = (inode.i_u << self.sbi.blkszbits) >> 9
        else:
            bs = self.sbi.block_size
            blocks = (-(-inode.size // bs) * bs) >> 9
        return Attr(
            ino=ino,
            mode=inode.mode,
            nlink=inode.nlink,
            uid=inode.uid,
            gid=inode.gid,
            size=inode.size,
            mtime_ns=inode.mtime * 1_000_000_000 + inode.mtime_nsec,
            rdev=inode.rdev,
            blocks=blocks,
        )

    @_clean_errors
    def lookup(self, parent: Ino, name: bytes) -> Ino:
        d = self._dir(parent)
        if not name or len(name) > f.EROFS_NAME_LEN or b"/" in name:
            raise NotFoundError(f"{escape(name)}: no such entry")
        rec = find_entry(
            lambda b: self._dir_block(d, b), dir_nblocks(d.size, self.sbi.block_size), name
        )
        if rec is None:
            raise NotFoundError(f"{escape(name)}: no such entry")
        return self.ino_of(rec.nid)

    def readdir(self, ino: Ino, offset: int = 0) -> Iterator[DirEntry]:
        d = _clean_errors(self._dir)(ino)
        nblocks = dir_nblocks(d.size, self.sbi.block_size)

        def get_block(blk: int) -> list[DirEntryRecord]:
            return self._dir_block(d, blk)

        entries = iter_entries(get_block, nblocks, offset, dot=self._dot(d))
        while True:
            try:
                key, rec = next(entries)
                t = self._dirent_type(rec)
            except StopIteration:
                return
            except FsError as e:
                err = e
                break
            yield DirEntry(name=rec.name, ino=self.ino_of(rec.nid), type=t, offset=key)
        raise _bare(err)

    @_clean_errors
    def read(self, ino: Ino, offset: int, size: int) -> bytes:
        inode = self.inode(ino)
        if inode.is_dir:
            raise IsADirectoryFsError(f"erofs inode nid {inode.nid}: is a directory")
        if not inode.is_reg:
            raise FsError(f"erofs inode nid {inode.nid}: not a regular file")
        if offset < 0 or size < 0:
            raise FsError(f"read at {offset} of {size} bytes")
        return self._read_data(inode, offset, size)

    @_clean_errors
    def readlink(self, ino: Ino) -> bytes:
        inode = self.inode(ino)
        if not inode.is_lnk:
            raise NotASymlinkError(f"erofs inode nid {inode.nid}: not a symlink")
        if inode.size > MAX_SYMLINK or inode.size == 0:
            raise CorruptImageError(
                f"symlink of {inode.size} bytes", structure="erofs inode", nid=inode.nid
            )
        return self._read_meta(inode, 0, inode.size)

    def record_reads_data(self, ino: Ino) -> bool:
        return self.metabox is not None  # inodes and xattrs are in the metabox

    def meta_reads_data(self, ino: Ino) -> bool:
        if self.metabox is not None:
            return True  # inodes are read through the metabox's page cache
        try:
            return self.inode(ino).is_compressed
        except FsError:
            return False  # the caller's own call reports it

    def _xattrs(self, ino: Ino) -> list[tuple[bytes, bytes]]:
        inode = self.inode(ino)
        return read_xattrs(self.shared_xattrs, self.sbi, inode, self.prefixes)

    @_clean_errors
    def listxattr(self, ino: Ino) -> list[bytes]:
        return [name for name, _ in self._xattrs(ino)]

    @_clean_errors
    def getxattr(self, ino: Ino, name: bytes) -> bytes:
        for n, value in self._xattrs(ino):
            if n == name:
                return value
        raise NoAttributeError(f"{escape(name)}: no such attribute")

    @_clean_errors
    def statfs(self) -> FsStat:
        sb = self.sbi.sb
        return FsStat(
            block_size=self.sbi.block_size,
            blocks=sb.blocks,
            files=sb.inos,
            name_max=f.EROFS_NAME_LEN,
        )

    # -- inspect / fsck / budget -------------------------------------------------

    def describe(self) -> dict[str, Any]:
        sb = self.sbi.sb
        c = self.sbi.compr
        return {
            "format": "erofs",
            "block_size": self.sbi.block_size,
            "blocks": sb.blocks,
            "inodes": sb.inos,
            "root_nid": self.sbi.root_nid,
            "meta_blkaddr": sb.meta_blkaddr,
            "xattr_blkaddr": sb.xattr_blkaddr,
            "epoch": sb.epoch,
            "fixed_nsec": sb.fixed_nsec,
            "build_time": sb.build_time,
            "uuid": sb.uuid.hex(),
            "volume_name": json_name(sb.volume_name.rstrip(b"\0")),
            "feature_compat": f.feature_names(sb.feature_compat, f.COMPAT_NAMES),
            "feature_incompat": f.feature_names(sb.feature_incompat, f.INCOMPAT_NAMES),
            "checksum": sb.checksum,
            "checksum_ok": self.sbi.checksum_ok,
            "compression": {
                "algorithms": [
                    f.ALGORITHM_NAMES[a] for a in range(4) if c.available_algs & (1 << a)
                ]
                if sb.feature_incompat & f.EROFS_FEATURE_INCOMPAT_COMPR_CFGS
                else ["lz4"],
                "lz4_max_distance": c.lz4_max_distance,
                "lz4_max_pclusterblks": c.lz4_max_pclusterblks,
            },
            "packed_nid": sb.packed_nid,
            "metabox_nid": self.sbi.metabox_nid,
            "xattr_prefix_count": sb.xattr_prefix_count,
            "extra_devices": sb.extra_devices,
        }

    def data_ranges(self, ino: Ino) -> Iterator[tuple[int, int]]:
        """From the extent map (:meth:`data_extents`): chunks and plain files
        whose block address is the null address, and compressed holes, are
        holes."""
        return ranges_of(self.data_extents(ino))

    @_clean_errors
    def data_extents(self, ino: Ino) -> Iterator[DataExtent]:
        """One per extent that is not a hole (one map per chunk or extent,
        and each is a record in the image: the walk is bounded by the
        image's size, whatever ``i_size`` claims), with its source: see
        :func:`_source`."""
        with self.lock:
            inode, zmap = self._load(self.nid_of(ino))
            if not inode.is_reg:
                raise InvalidArgumentError(f"nid {inode.nid}: not a regular file")
            maps = [m for m in iter_maps(self.image, self.sbi, inode, zmap)
                    if m.flags & (MAPPED | ENCODED | FRAGMENT)]  # fmt: skip
        bs = self.sbi.block_size
        for m in maps:
            source, prefix = _source(m, inode.in_metabox, bs)
            yield DataExtent(m.la, m.llen, source, prefix)

    def describe_inode(self, ino: Ino) -> dict[str, Any]:
        with self.lock:
            inode, zmap = self._load(self.nid_of(ino))
            out: dict[str, Any] = {
                "ino": int(ino),
                "nid": inode.nid,
                "offset": inode.iloc,
                "in_metabox": inode.in_metabox,
                "inode_version": "extended" if inode.version else "compact",
                "layout": inode.layout_name,
                "mode": inode.mode,
                "size": inode.size,
                "nlink": inode.nlink,
                "uid": inode.uid,
                "gid": inode.gid,
                "mtime": inode.mtime,
                "mtime_nsec": inode.mtime_nsec,
                "i_ino": inode.i_ino,
                "xattr_isize": inode.xattr_isize,
            }
            extents: list[dict[str, Any]] = []
            if zmap is not None:
                out["advise"] = zmap.advise
                out["lclusterbits"] = zmap.lclusterbits
            if inode.is_reg or inode.is_dir or inode.is_lnk:
                for m in itertools.islice(iter_maps(self.image, self.sbi, inode, zmap), 1000):
                    if zmap is not None:
                        fmt = f.ALGORITHM_NAMES.get(m.algorithm, "plain")
                        extents.append({
                            "la": m.la, "llen": m.llen, "pa": m.pa, "plen": m.plen,
                            "kind": m.kind, "format": fmt,
                            "partial": bool(m.flags & PARTIAL_REF),
                        })  # fmt: skip
                    else:
                        pa = m.pa if m.flags & MAPPED else None
                        extents.append({
                            "la": m.la, "llen": m.llen, "pa": pa, "kind": m.kind,
                            "inline": bool(m.flags & META),
                        })  # fmt: skip
            out["extents"] = extents
            return out

    def fsck_extra(self) -> Iterator[str]:
        """Directory structure the tree walk does not check: strict name order
        across blocks, ``.``/``..``, file types, names; compressed extent maps;
        the superblock's inode count."""
        root = self.sbi.root_nid
        seen: set[int] = set()
        todo: list[tuple[int, int]] = [(root, root)]
        inodes: set[int] = {root}
        while todo:
            nid, parent = todo.pop()
            if nid in seen:
                yield f"nid {nid}: directory reached twice (loop or hard-linked directory)"
                continue
            seen.add(nid)
            try:
                d = self._inode(Nid(nid))
                nblocks = dir_nblocks(d.size, self.sbi.block_size)
                prev: bytes | None = None
                dots: dict[bytes, int] = {}
                get = functools.partial(self._dir_block, d)
                for _key, rec in iter_entries(get, nblocks):
                    name = rec.name
                    if prev is not None and name <= prev:
                        order = f"{escape(prev)} then {escape(name)}"
                        yield f"nid {nid}: wrong dirent name order ({order})"
                    prev = name
                    if b"/" in name or b"\0" in name:
                        yield f"nid {nid}: invalid name {escape(name)}"
                    if rec.file_type >= f.EROFS_FT_MAX:
                        yield f"nid {nid}: {escape(name)} has file type {rec.file_type}"
                    if name in (b".", b".."):
                        dots[name] = rec.nid
                        continue
                    inodes.add(rec.nid)
                    try:
                        child = self._inode(Nid(rec.nid))
                    except FsError as e:
                        yield f"nid {nid}: {escape(name)}: {e}"
                        continue
                    if rec.file_type and f.ftype_from_mode(child.mode) != rec.file_type:
                        yield (
                            f"nid {nid}: {escape(name)} dirent type {rec.file_type} "
                            f"disagrees with mode {child.mode:#o}"
                        )
                    if child.is_dir:
                        todo.append((rec.nid, nid))
                    elif child.is_compressed:
                        try:
                            zmap = self._load(Nid(rec.nid))[1]
                            if zmap is not None:
                                zmap.verify()
                        except FsError as e:
                            yield f"nid {rec.nid} ({escape(name)}): {e}"
                if d.dot_omitted and b"." in dots:
                    yield f"nid {nid}: '.' stored in a directory marked dot-omitted"
                elif not d.dot_omitted and dots.get(b".") != nid:
                    yield f"nid {nid}: '.' is {dots.get(b'.')}, expected {nid}"
                if dots.get(b"..") != parent:
                    yield f"nid {nid}: '..' is {dots.get(b'..')}, expected {parent}"
            except FsError as e:
                yield f"nid {nid}: {e}"
        sb = self.sbi.sb
        if sb.blocks * self.sbi.block_size > self.image.size:
            yield (
                f"superblock: {sb.blocks} blocks of {self.sbi.block_size} claimed, "
                f"the image has {self.image.size} bytes (truncated?)"
            )
        if sb.inos and len(inodes) > sb.inos:
            yield f"superblock: {sb.inos} inodes claimed, {len(inodes)} reachable"

    def memory_stats(self) -> dict[str, int]:
        with self.lock:
            out = self.reader.stats()
        out["inode_cache_hits"] = self.inode_cache.counters.hits
        out["inode_cache_misses"] = self.inode_cache.counters.misses
        out["dir_cache_hits"] = self.dir_cache.counters.hits
        out["dir_cache_misses"] = self.dir_cache.counters.misses
        return out

    def _close_memory(self) -> None:
        try:
            self.zdata.close()
        finally:
            self.reader.close()

    def close(self) -> None:
        with self.lock:
            try:
                self._close_memory()
            finally:
                super().close()


def _source(m: Map, in_metabox: bool, block_size: int) -> tuple[Hashable, bool]:
    """What decides the bytes of extent ``m`` besides its length, and
    whether they are a prefix of what that decodes to.

    A fragment is bytes of the packed inode from ``fragmentoff``; plain
    bytes are the image's (or the inode's metadata space's) from ``pa``;
    both are prefixes.  A pcluster is its bytes (``pa``, ``plen``, in the
    image or, inline, in the metadata space: the metabox's when the inode
    is there), the algorithm, and for interlaced plain data the offset in
    its block it is rotated by; its bytes are a prefix of what it decodes
    to under a partial reference (dedupe), else all of it."""
    if m.flags & FRAGMENT:
        return ("fragment", m.fragmentoff), True
    space = "metabox" if m.flags & META and in_metabox else "image"
    if not m.flags & ENCODED:
        return ("plain", space, m.pa), True
    shift = m.la % block_size if m.algorithm == f.Z_EROFS_COMPRESSION_INTERLACED else 0
    source = ("pcluster", space, bool(m.flags & META), m.pa, m.plen, m.algorithm, shift)
    return source, bool(m.flags & PARTIAL_REF)


def open_erofs(image: ImageBytes, memory: MemoryConfig) -> ErofsFilesystem:
    """The opener registered with :func:`fusefs.vfs.register_format`."""
    return ErofsFilesystem(image, memory)
