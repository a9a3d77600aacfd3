"""The pyfuse3 request handlers: a thin layer over :class:`fusefs.vfs.Filesystem`.

Identifier spaces.  A format names an inode by its *disk location* (an EROFS
nid, a cramfs inode offset) and hands out an :data:`~fusefs.vfs.Ino` for it
(see :mod:`fusefs.vfs`).  FUSE names inodes by a 64-bit "node id" whose root
must be ``pyfuse3.ROOT_INODE`` (1).  The mapping here is the identity except
for the root: ``fs.root`` <-> ``ROOT_INODE``; a format never hands out Ino 1
for another inode, so the identity cannot collide.  Node ids are therefore
stable for the life of the mount (the image is immutable), ``generation`` is
always 0, and hard links share one node id.

Lookup counts.  The kernel holds a reference per successful lookup (and per
readdirplus entry other than ``.``/``..``) and returns them through
``forget``.  The image needs no per-inode state, but the counts are kept so
that a test (and ``-v`` logging) can see they balance.  With each count goes
the (parent, name) the kernel learnt the inode by, so that a message about an
inode can name its path; a forgotten inode is forgotten here too.

Threads.  Decompression (``read``) and directory listing run in worker
threads (``trio.to_thread.run_sync`` under one CapacityLimiter) so that one
slow request does not stall the others; metadata that is a bounded read of
the mapped image stays on the event loop, unless the format says it reads
through the page cache (``Filesystem.meta_reads_data``: an EROFS compressed
directory or symlink; ``record_reads_data``: inodes and xattrs in an EROFS
metabox), where it could wait behind a decompression.  Every handler replies exactly
once: an :class:`~fusefs.errors.FsError` becomes ``FUSEError(its errno)``,
anything else is logged with its traceback and answered with EIO.  Corrupt
metadata or data (:class:`~fusefs.errors.CorruptImageError`, EUCLEAN to the
reader) is logged once per inode and message at WARNING, with the path and
what the format said (structure, nid, offset): the reader only sees EUCLEAN,
and a detached daemon's log (``--log``) is where the rest goes.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

import pyfuse3
import trio

from fusefs.errors import CorruptImageError, FsError
from fusefs.vfs import Attr, DirEntry, Filesystem, Ino, show_path

log = logging.getLogger("nommufs.fuse")

T = TypeVar("T")

# The image never changes under a mount: let the kernel cache everything.
TIMEOUT = 86400.0
READDIR_BATCH = 128
CORRUPTION_REPORTS = 1024  # distinct (inode, message) pairs logged, at most
MAX_DEPTH = 4096  # path components when naming an inode


class NommuOperations(pyfuse3.Operations):
    """Serve one opened :class:`Filesystem` read-only."""

    enable_writeback_cache = False
    supports_dot_lookup = False  # no NFS export: the kernel never looks up . or ..

    def __init__(
        self,
        fs: Filesystem,
        *,
        threads: int = 2,
        on_first_open: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.fs = fs
        # runs once, when the kernel has processed our INIT reply (which
        # would undo settings made earlier, e.g. the bdi's readahead)
        self._on_first_open = on_first_open
        self.limiter = trio.CapacityLimiter(max(1, threads))
        self.lookup_counts: dict[int, int] = {}
        self.names: dict[Ino, tuple[Ino, bytes]] = {}  # ino -> (parent, name), while known
        self.errors = 0  # unexpected exceptions answered with EIO
        self.corruption_seen: set[tuple[Ino | None, str]] = set()

    # -- identifier spaces ---------------------------------------------------

    def _ino(self, node: int) -> Ino:
        return self.fs.root if node == pyfuse3.ROOT_INODE else Ino(node)

    def _node(self, ino: Ino) -> pyfuse3.InodeT:
        return pyfuse3.ROOT_INODE if ino == self.fs.root else pyfuse3.InodeT(ino)

    # -- error mapping -----------------------------------------------------------

    def path_of(self, ino: Ino) -> str:
        """``/a/b`` for an inode the kernel has looked up, else ``ino N``."""
        parts: list[bytes] = []
        node = ino
        while node != self.fs.root and len(parts) < MAX_DEPTH:
            known = self.names.get(node)
            if known is None:
                return f"ino {ino}" if not parts else f"ino {node}/{b'/'.join(parts).decode()}"
            node, name = known
            parts.insert(0, name)
        return show_path(b"/".join(parts))

    def _learn(self, parent: Ino, name: bytes, attr: Attr) -> None:
        node = self._node(attr.ino)
        self.lookup_counts[node] = self.lookup_counts.get(node, 0) + 1
        self.names[attr.ino] = (parent, name)

    def _fail(self, what: str, exc: BaseException, ino: Ino | None = None) -> pyfuse3.FUSEError:
        if isinstance(exc, CorruptImageError):
            key = (ino, str(exc))
            if key not in self.corruption_seen and len(self.corruption_seen) < CORRUPTION_REPORTS:
                self.corruption_seen.add(key)
                where = self.path_of(ino) if ino is not None else "(image)"
                log.warning("corrupt image: %s: %s (%s)", where, exc, what)
            return pyfuse3.FUSEError(exc.errno)
        if isinstance(exc, FsError):
            log.debug("%s: %s", what, exc)
            return pyfuse3.FUSEError(exc.errno)
        self.errors += 1
        log.error("%s: unexpected %s", what, type(exc).__name__, exc_info=exc)
        return pyfuse3.FUSEError(errno.EIO)

    def _call(self, what: str, ino: Ino | None, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the event loop, failing as :meth:`_fail` says;
        ``ino``: the inode the request is about, for messages."""
        try:
            return fn(*args)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise self._fail(what, e, ino) from None

    async def _in_thread(
        self, what: str, ino: Ino | None, fn: Callable[..., T], *args: object
    ) -> T:
        """Like :meth:`_call`, in a worker thread."""
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)
        except pyfuse3.FUSEError:
            raise
        except Exception as e:
            raise self._fail(what, e, ino) from None

    async def _meta(
        self, what: str, ino: Ino, reads_data: bool, fn: Callable[..., T], *args: object
    ) -> T:
        """Metadata on the event loop, or in a worker thread when reading it
        ``reads_data`` through the page cache (it could wait behind a
        decompression there)."""
        if reads_data:
            return await self._in_thread(what, ino, fn, *args)
        return self._call(what, ino, fn, *args)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = self._node(attr.ino)
        e.generation = 0
        e.entry_timeout = TIMEOUT
        e.attr_timeout = TIMEOUT
        e.st_mode = pyfuse3.ModeT(attr.mode)
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = attr.rdev
        e.st_size = attr.size
        e.st_blksize = 4096
        e.st_blocks = attr.blocks
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = attr.mtime_ns
        return e

    # -- metadata ------------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        parent = self._ino(parent_inode)

        def find() -> Attr | None:
            try:
                return self.fs.getattr(self.fs.lookup(parent, bytes(name)))
            except FsError as e:
                if e.errno == errno.ENOENT:
                    return None
                raise

        what = f"lookup {parent_inode}/{bytes(name)[:64]!r}"
        attr = await self._meta(what, parent, self.fs.meta_reads_data(parent), find)
        if attr is None:
            # a negative entry, cached by the kernel for entry_timeout
            neg = pyfuse3.EntryAttributes()
            neg.st_ino = pyfuse3.InodeT(0)
            neg.entry_timeout = TIMEOUT
            return neg
        self._learn(parent, bytes(name), attr)
        return self._entry(attr)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for node, nlookup in inode_list:
            left = self.lookup_counts.get(node, 0) - nlookup
            if left > 0:
                self.lookup_counts[node] = left
            else:
                if left < 0:
                    log.warning("forget: node %d forgotten more often than looked up", node)
                self.lookup_counts.pop(node, None)
                self.names.pop(self._ino(node), None)

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        ino = self._ino(inode)
        reads = self.fs.record_reads_data(ino)
        return self._entry(await self._meta(f"getattr {inode}", ino, reads, self.fs.getattr, ino))

    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        ino = self._ino(inode)
        reads = self.fs.meta_reads_data(ino)
        return await self._meta(f"readlink {inode}", ino, reads, self.fs.readlink, ino)

    async def access(
        self, inode: pyfuse3.InodeT, mode: pyfuse3.ModeT, ctx: pyfuse3.RequestContext
    ) -> bool:
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True  # default_permissions: the kernel checks the mode bits

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = self._call("statfs", None, self.fs.statfs)
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = st.block_size
        out.f_blocks = st.blocks
        out.f_bfree = out.f_bavail = 0
        out.f_files = st.files
        out.f_ffree = out.f_favail = 0
        out.f_namemax = st.name_max
        return out

    async def getxattr(
        self, inode: pyfuse3.InodeT, name: pyfuse3.XAttrNameT, ctx: pyfuse3.RequestContext
    ) -> bytes:
        ino = self._ino(inode)
        reads = self.fs.record_reads_data(ino)
        return await self._meta(
            f"getxattr {inode}", ino, reads, self.fs.getxattr, ino, bytes(name)
        )

    async def listxattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> Sequence[pyfuse3.XAttrNameT]:
        ino = self._ino(inode)
        reads = self.fs.record_reads_data(ino)
        names = await self._meta(f"listxattr {inode}", ino, reads, self.fs.listxattr, ino)
        return [pyfuse3.XAttrNameT(n) for n in names]

    # -- directories -------------------------------------------------------------------

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        ino = self._ino(inode)
        attr = self._call(f"opendir {inode}", ino, self.fs.getattr, ino)
        if not attr.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return pyfuse3.FileHandleT(inode)

    def _batch(self, ino: Ino, start: int) -> list[tuple[DirEntry, Attr]]:
        out: list[tuple[DirEntry, Attr]] = []
        for ent in self.fs.readdir(ino, start):
            out.append((ent, self.fs.getattr(ent.ino)))
            if len(out) >= READDIR_BATCH:
                break
        return out

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        ino = self._ino(fh)
        pos = start_id
        while True:
            batch = await self._in_thread(f"readdir {fh}@{pos}", ino, self._batch, ino, pos)
            if not batch:
                return
            for ent, attr in batch:
                if not pyfuse3.readdir_reply(token, ent.name, self._entry(attr), ent.offset):
                    return
                if ent.name not in (b".", b".."):
                    self._learn(ino, ent.name, attr)
                pos = ent.offset
            if len(batch) < READDIR_BATCH:
                return

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    # -- files -----------------------------------------------------------------------

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        if self._on_first_open is not None:
            hook, self._on_first_open = self._on_first_open, None
            self._call("first open", None, hook)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        ino = self._ino(inode)
        attr = self._call(f"open {inode}", ino, self.fs.getattr, ino)
        if attr.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if not attr.is_reg:
            raise pyfuse3.FUSEError(errno.EINVAL)
        # the image is immutable: keep the page cache across opens
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(inode), keep_cache=True, direct_io=False)

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        # Always in a worker thread, however small: even a 4 KiB read may
        # decode a whole pcluster (up to 1 MiB), which must not stall the loop.
        ino = self._ino(fh)
        return await self._in_thread(f"read {fh}@{off}+{size}", ino, self.fs.read, ino, off, size)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    # -- everything that would write ------------------------------------------------------

    async def setattr(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def setxattr(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def removexattr(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mknod(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def mkdir(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def unlink(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rmdir(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def symlink(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def rename(self, *args: object) -> None:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def link(self, *args: object) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def create(
        self, *args: object
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        raise pyfuse3.FUSEError(errno.EROFS)

    async def write(self, *args: object) -> int:
        raise pyfuse3.FUSEError(errno.EROFS)


