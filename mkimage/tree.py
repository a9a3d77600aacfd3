"""The format-neutral source model every image writer consumes.

:func:`scan` reads a directory (never following symlinks) or a tar file into a
:class:`Tree` of :class:`Node` objects in a deterministic order (names sorted
as raw bytes), applies ``--exclude-path`` / ``--exclude-regex``,
``--all-root`` / ``--force-uid`` / ``--force-gid`` and a mkcramfs/makedevs
``--device-table``.  File contents are read lazily by :meth:`Node.read_data`,
which checks that the file did not change since the scan.

:func:`atomic_output` is the shared way to write an image: a temporary file in
the output's directory, fsynced and renamed over OUT only when everything
succeeded, removed on any error.

Hard links: every non-directory node carries a :data:`LinkKey` (the source's
``(st_dev, st_ino)``, or a tar member's first name); writers store nodes with
the same key as one inode whose link count is :attr:`Node.nlink` (the number of
names it has *in the tree*, so excluded names do not count).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO, NewType, TypeVar

from fusefs import atomicfile
from fusefs.modes import FILE_TYPES, HasMode
from mkimage.errors import BuildError

LinkKey = NewType("LinkKey", tuple[int, int])
"""Identity of a source inode: ``(st_dev, st_ino)``; tar members get ``(-1, n)``."""

_B = TypeVar("_B", bytes, bytearray)

NAME_MAX = 255  # longest name any of the image formats stores


def show(path: bytes) -> str:
    """A source path for a one-line message (undecodable bytes escaped)."""
    return path.decode(errors="backslashreplace")


class DataSource:
    """Where a regular file's bytes come from (read on demand)."""

    def read(self) -> bytes:
        raise NotImplementedError

    def read_buffer(self) -> bytearray:
        """The contents in a buffer of their own (compressors bind it)."""
        return bytearray(self.read())


@dataclass(frozen=True, slots=True)
class FileData(DataSource):
    """A file under SRC; :meth:`read` refuses a file that changed since the scan."""

    path: bytes
    size: int
    mtime_ns: int
    ino: int

    # Each read asks for a byte more than the file has left: a file that
    # grew (or whose size lied, as in /proc) says so in the same read, and
    # a short one is the end (no read more to find it).

    def read(self) -> bytes:
        def chunks(fd: int) -> tuple[bytes, int]:
            parts = []
            left = self.size
            while left >= 0:
                want = min(left + 1, 1 << 24)
                chunk = os.read(fd, want)
                parts.append(chunk)
                left -= len(chunk)
                if len(chunk) < want:
                    break
            return b"".join(parts), self.size - left

        return self._read(chunks)

    def read_buffer(self) -> bytearray:
        def into(fd: int) -> tuple[bytearray, int]:
            buf = bytearray(self.size)
            view = memoryview(buf)
            spare = bytearray(1)
            got = 0
            while got <= self.size:
                want = self.size + 1 - got
                n = os.readv(fd, [view[got:], spare])
                got += n
                if n < want:
                    break
            return buf, got

        return self._read(into)

    def _read(self, body: Callable[[int], tuple[_B, int]]) -> _B:
        """``body(fd)`` (the data and how many bytes it got, one more when
        there were more), then the check that the file is the one scanned
        and did not change: a file replaced since, or changed while it was
        read, has another inode, size or mtime by then.  (O_NONBLOCK: what
        was put in its place may be a FIFO, which would block the open.)"""
        where = show(self.path)
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as e:
            raise BuildError(f"{where}: cannot open: {e.strerror}") from None
        try:
            data, got = body(fd)
            after = os.fstat(fd)
        except OSError as e:
            raise BuildError(f"{where}: cannot read: {e.strerror}") from None
        finally:
            os.close(fd)
        if got != self.size:
            raise BuildError(f"{where}: file changed size while being read")
        self._check(after, where)
        return data

    def _check(self, st: os.stat_result, where: str) -> None:
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_ino != self.ino
            or st.st_size != self.size
            or st.st_mtime_ns != self.mtime_ns
        ):
            raise BuildError(f"{where}: file changed while the image was built")


@dataclass(frozen=True, slots=True)
class BytesData(DataSource):
    """Contents already in memory (tar members are read this way lazily)."""

    data: bytes

    def read(self) -> bytes:
        return self.data


@dataclass(slots=True)
class TarData(DataSource):
    """A tar member's data, read when needed from the open archive."""

    archive: tarfile.TarFile
    member: tarfile.TarInfo
    # One per archive: members share the archive's file position, and the
    # writers read sources from several threads at once.
    lock: threading.Lock

    def read(self) -> bytes:
        try:
            with self.lock:
                f = self.archive.extractfile(self.member)
                if f is None:
                    raise BuildError(f"{self.member.name}: tar member has no data")
                data = f.read()
        except (OSError, tarfile.TarError) as e:
            raise BuildError(f"{self.member.name}: cannot read tar member: {e}") from None
        if len(data) != self.member.size:
            raise BuildError(f"{self.member.name}: tar member is truncated")
        return data


@dataclass(slots=True)
class Node(HasMode):
    """One name in the tree and its inode's attributes.

    ``path`` is relative to the root (``b""`` for the root itself, never a
    leading ``/``).  Directories have ``children`` sorted by name; symlinks
    have ``target``; devices ``rdev`` (``os.makedev`` encoding); regular files
    ``size`` and ``data``.  ``xattrs`` maps full names (``b"user.x"``) to
    values, sorted by name."""

    path: bytes
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int = 0
    rdev: int = 0
    target: bytes | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    link: LinkKey | None = None
    nlink: int = 1
    data: DataSource | None = None
    children: list[Node] = field(default_factory=list)

    @property
    def name(self) -> bytes:
        return self.path.rsplit(b"/", 1)[-1]

    def read_data(self) -> bytes:
        """The file's bytes (regular files), the target (symlinks), else ``b""``.
        Raises BuildError naming the path if the source changed or is unreadable."""
        if self.is_lnk:
            return self.target or b""
        if not self.is_reg or self.data is None or self.size == 0:
            return b""
        data = self.data.read()
        if len(data) != self.size:
            raise BuildError(f"{show(self.path)}: file changed size while being read")
        return data

    def read_buffer(self) -> bytearray:
        """A regular file's bytes in a buffer of their own (for compressors)."""
        if not self.is_reg or self.data is None or self.size == 0:
            return bytearray()
        data = self.data.read_buffer()
        if len(data) != self.size:
            raise BuildError(f"{show(self.path)}: file changed size while being read")
        return data


@dataclass(slots=True)
class Tree:
    """A scanned source: the root directory node and what keeps its data readable."""

    root: Node
    closers: list[Callable[[], None]] = field(default_factory=list)

    def walk(self) -> Iterator[Node]:
        """Every node, parents before children, children in byte order."""
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def lookup(self, path: bytes) -> Node | None:
        node = self.root
        for part in path.strip(b"/").split(b"/") if path.strip(b"/") else []:
            nxt = _child(node, part)
            if nxt is None:
                return None
            node = nxt
        return node

    def close(self) -> None:
        for fn in self.closers:
            fn()
        self.closers.clear()

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class ScanOptions:
    """What the command line asks of the scan (mkfs.erofs / mkcramfs spellings)."""

    exclude_paths: Sequence[str] = ()
    exclude_regex: Sequence[str] = ()
    all_root: bool = False
    force_uid: int | None = None
    force_gid: int | None = None
    device_table: str | None = None
    tar: bool = False
    # mtime given to nodes the device table creates (the build time)
    new_node_mtime_ns: int = 0


def _child(node: Node, name: bytes) -> Node | None:
    for c in node.children:
        if c.name == name:
            return c
    return None


def _read_xattrs(path: bytes) -> dict[bytes, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise BuildError(f"{show(path)}: cannot list xattrs: {e.strerror}") from None
    if not names:
        return {}
    out = {}
    for n in sorted(names, key=os.fsencode):
        try:
            out[os.fsencode(n)] = os.getxattr(path, n, follow_symlinks=False)
        except OSError as e:
            if e.errno == errno.ENODATA:
                continue
            raise BuildError(f"{show(path)}: cannot read xattr {n}: {e.strerror}") from None
    return out


class _Excluder:
    def __init__(self, opts: ScanOptions) -> None:
        self.paths = {os.fsencode(p).strip(b"/") for p in opts.exclude_paths}
        try:
            self.regexes = [re.compile(os.fsencode(r)) for r in opts.exclude_regex]
        except re.error as e:
            raise BuildError(f"--exclude-regex: bad regular expression: {e}") from None

    def __call__(self, rel: bytes) -> bool:
        return rel in self.paths or any(r.search(rel) for r in self.regexes)

    def __bool__(self) -> bool:
        """Is anything excluded at all?"""
        return bool(self.paths or self.regexes)


def _scan_dir(src: bytes, excluded: _Excluder) -> Node:
    try:
        st = os.stat(src)  # SRC itself may be a symlink to the tree; nothing inside is followed
    except OSError as e:
        raise BuildError(f"{show(src)}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise BuildError(f"{show(src)}: not a directory")
    root = _node_from_stat(src, b"", st)
    stack = [(root, src)]
    excluding = bool(excluded)
    while stack:
        node, full = stack.pop()
        try:
            names = sorted(os.listdir(full))
            # names looked up from the directory: no walk of the whole path each time
            dfd = os.open(full, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise BuildError(f"{show(full)}: cannot list directory: {e.strerror}") from None
        try:
            for name in names:
                rel = node.path + b"/" + name if node.path else name
                if excluding and excluded(rel):
                    continue
                cfull = full + b"/" + name
                try:
                    cst = os.lstat(name, dir_fd=dfd)
                except OSError as e:
                    raise BuildError(f"{show(cfull)}: {e.strerror}") from None
                child = _node_from_stat(cfull, rel, cst, (dfd, name))
                node.children.append(child)
                if child.is_dir:
                    stack.append((child, cfull))
        finally:
            os.close(dfd)
    return root


def _node_from_stat(
    full: bytes, rel: bytes, st: os.stat_result, at: tuple[int, bytes] | None = None
) -> Node:
    """The node of ``full`` (``at``: its directory's descriptor and its name there)."""
    fmt = stat.S_IFMT(st.st_mode)
    if fmt not in FILE_TYPES:
        raise BuildError(f"{show(full)}: unsupported file type {fmt:#o}")
    node = Node(
        path=rel,
        mode=st.st_mode,
        uid=st.st_uid,
        gid=st.st_gid,
        mtime_ns=st.st_mtime_ns,
        xattrs=_read_xattrs(full),
    )
    if fmt != stat.S_IFDIR:
        node.link = LinkKey((st.st_dev, st.st_ino))
    if fmt == stat.S_IFREG:
        node.size = st.st_size
        node.data = FileData(full, st.st_size, st.st_mtime_ns, st.st_ino)
        dir_fd, name = at if at is not None else (None, full)
        if not os.access(name, os.R_OK, dir_fd=dir_fd):
            raise BuildError(f"{show(full)}: file is not readable")
    elif fmt == stat.S_IFLNK:
        try:
            node.target = os.readlink(full)
        except OSError as e:
            raise BuildError(f"{show(full)}: cannot read symlink: {e.strerror}") from None
        node.size = len(node.target)
    elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
        node.rdev = st.st_rdev
    return node


def _tar_path(name: str) -> bytes:
    parts = [p for p in os.fsencode(name).split(b"/") if p not in (b"", b".")]
    if any(p == b".." for p in parts):
        raise BuildError(f"{name}: path escapes the root")
    if any(len(p) > NAME_MAX or b"\0" in p for p in parts):
        raise BuildError(f"{name}: a name is longer than {NAME_MAX} bytes or holds a NUL")
    return b"/".join(parts)


def _open_tar(tarpath: str, tree: Tree) -> tarfile.TarFile:
    """The archive at ``tarpath``; ``-`` is standard input, spooled first into
    an unlinked temporary file (members are read later, in any order, from
    several threads), so nothing is left behind whatever ends the build."""
    try:
        if tarpath != "-":
            return tarfile.open(tarpath, "r:*")
        spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by Tree.close)
        tree.closers.append(spool.close)
        shutil.copyfileobj(sys.stdin.buffer, spool, 1 << 20)
        spool.seek(0)
        return tarfile.open(fileobj=spool, mode="r:*")
    except tarfile.ReadError:  # its message lists every method tried, one per line
        why = "not a tar file (plain, gzip, bzip2 or xz)"
    except (OSError, tarfile.TarError) as e:
        why = str(e)
    shown = "standard input" if tarpath == "-" else tarpath
    raise BuildError(f"{shown}: cannot open tar file: {why}")


def _scan_tar(tarpath: str, excluded: _Excluder, tree: Tree) -> None:
    archive = _open_tar(tarpath, tree)  # closed by Tree.close
    tree.closers.append(archive.close)
    lock = threading.Lock()
    by_path: dict[bytes, Node] = {b"": tree.root}
    try:
        members = archive.getmembers()
    except (OSError, tarfile.TarError) as e:
        raise BuildError(f"{tarpath}: bad tar file: {e}") from None
    for seq, m in enumerate(members):
        rel = _tar_path(m.name)
        if rel and excluded(rel):
            continue
        mode = m.mode & 0o7777
        node = Node(path=rel, mode=mode, uid=m.uid, gid=m.gid, mtime_ns=round(m.mtime * 1e9))
        node.xattrs = {
            os.fsencode(k[len("SCHILY.xattr.") :]): v.encode("utf-8", "surrogateescape")
            for k, v in sorted(m.pax_headers.items())
            if k.startswith("SCHILY.xattr.")
        }
        if m.islnk():
            target = by_path.get(_tar_path(m.linkname))
            if target is None or target.is_dir:
                raise BuildError(f"{m.name}: hard link to missing {m.linkname}")
            node = dataclasses.replace(target, path=rel, children=[])
        elif m.isdir():
            node.mode |= stat.S_IFDIR
        elif m.isreg():
            node.mode |= stat.S_IFREG
            node.size = m.size
            node.data = TarData(archive, m, lock)
        elif m.issym():
            node.mode |= stat.S_IFLNK
            node.target = os.fsencode(m.linkname)
            node.size = len(node.target)
        elif m.ischr() or m.isblk():
            node.mode |= stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            node.rdev = os.makedev(m.devmajor, m.devminor)
        elif m.isfifo():
            node.mode |= stat.S_IFIFO
        else:
            raise BuildError(f"{m.name}: unsupported tar member type {m.type!r}")
        if not node.is_dir and node.link is None:
            node.link = LinkKey((-1, seq))
        if rel == b"":
            if not node.is_dir:
                raise BuildError(f"{m.name}: tar root is not a directory")
            node.children = tree.root.children
            tree.root = by_path[b""] = node
            continue
        parent = _ensure_dir(by_path, rel.rpartition(b"/")[0], node.mtime_ns, tree.root)
        old = by_path.get(rel)
        if old is not None:
            parent.children.remove(old)
            if old.is_dir and node.is_dir:
                node.children = old.children
        parent.children.append(node)
        by_path[rel] = node
    for n in by_path.values():
        n.children.sort(key=lambda c: c.name)


def _ensure_dir(by_path: dict[bytes, Node], rel: bytes, mtime_ns: int, root: Node) -> Node:
    """The directory node at ``rel``, created (0755, root-owned) with its parents if missing."""
    node = by_path.get(rel)
    if node is not None:
        if not node.is_dir:
            raise BuildError(f"{show(rel)}: is not a directory")
        return node
    parent = _ensure_dir(by_path, rel.rpartition(b"/")[0], mtime_ns, root) if rel else root
    node = Node(path=rel, mode=stat.S_IFDIR | 0o755, uid=0, gid=0, mtime_ns=mtime_ns)
    parent.children.append(node)
    parent.children.sort(key=lambda c: c.name)
    by_path[rel] = node
    return node


_DEVTYPES = {
    "f": stat.S_IFREG,
    "d": stat.S_IFDIR,
    "c": stat.S_IFCHR,
    "b": stat.S_IFBLK,
    "p": stat.S_IFIFO,
}


def _apply_device_table(tree: Tree, table: str, mtime_ns: int) -> None:
    """Apply a mkcramfs/makedevs table: ``name type mode uid gid major minor
    start inc count`` (``-`` for an unused number, ``#`` comments)."""
    try:
        with open(table, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise BuildError(f"{table}: cannot read device table: {e.strerror}") from None
    by_path = {n.path: n for n in tree.walk() if n.is_dir}
    made = 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        where = f"{table}:{lineno}"
        fields = line.split()
        if len(fields) != 10:
            raise BuildError(f"{where}: expected 10 fields, got {len(fields)}")
        name = fields[0]
        try:
            kind = fields[1].decode()
            ftype = _DEVTYPES[kind]
            perm = int(fields[2], 8)
            uid, gid, major, minor, start, inc, count = (
                0 if v == b"-" else int(v) for v in fields[3:]
            )
        except (KeyError, ValueError, UnicodeDecodeError):
            raise BuildError(f"{where}: bad line {show(line)!r}") from None
        if perm > 0o7777 or min(uid, gid, major, minor, start, inc, count) < 0:
            raise BuildError(f"{where}: value out of range in {show(line)!r}")
        rel = _tar_path(os.fsdecode(name)) if name.startswith(b"/") else b""
        if not rel:
            raise BuildError(f"{where}: name must be an absolute path below /")
        targets = [(rel, minor)]
        if count > 0:
            if ftype not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
                raise BuildError(f"{where}: a count is only allowed for c, b and p")
            targets = [(rel + str(i).encode(), minor + (i - start) * inc)
                       for i in range(start, start + count)]  # fmt: skip
        for path, mnr in targets:
            parent = _ensure_dir(by_path, path.rpartition(b"/")[0], mtime_ns, tree.root)
            old = _child(parent, path.rpartition(b"/")[2])
            if ftype in (stat.S_IFREG, stat.S_IFDIR) and old is not None:
                if stat.S_IFMT(old.mode) != ftype:
                    raise BuildError(f"{where}: {show(path)} exists with another type")
                # every name of a hard-linked file is the same inode
                same = [n for n in tree.walk() if n.link is not None and n.link == old.link]
                for n in same or [old]:
                    n.mode, n.uid, n.gid = ftype | perm, uid, gid
                continue
            if ftype == stat.S_IFREG:
                raise BuildError(f"{where}: {show(path)}: no such file in the source")
            if ftype == stat.S_IFDIR:
                _ensure_dir(by_path, path, mtime_ns, tree.root)
                node = by_path[path]
                node.mode, node.uid, node.gid = ftype | perm, uid, gid
                continue
            if old is not None:
                if old.is_dir:
                    raise BuildError(f"{where}: {show(path)} is a directory in the source")
                parent.children.remove(old)
            rdev = os.makedev(major, mnr) if ftype != stat.S_IFIFO else 0
            made += 1
            node = Node(path=path, mode=ftype | perm, uid=uid, gid=gid, mtime_ns=mtime_ns,
                        rdev=rdev, link=LinkKey((-2, made)))  # fmt: skip
            parent.children.append(node)
            parent.children.sort(key=lambda c: c.name)


def _count_links(tree: Tree) -> None:
    """Link counts as the image will have them: a directory's from its
    subdirectories, anything else's from the names of its inode in the
    tree (1 unless it is hard-linked there), in one walk."""
    names: dict[LinkKey, list[Node]] = {}
    for n in tree.walk():
        if n.is_dir:
            n.nlink = 2 + sum(1 for c in n.children if c.is_dir)
        elif n.link is not None:
            names.setdefault(n.link, []).append(n)
    for same in names.values():
        for n in same:
            n.nlink = len(same)


def scan(src: str, opts: ScanOptions | None = None) -> Tree:
    """Read SRC (a directory, or a tar file with ``opts.tar``) into a :class:`Tree`.

    Raises :class:`BuildError` naming the path for anything that cannot go
    into an image (unreadable, unsupported type, bad device table line)."""
    opts = opts or ScanOptions()
    excluded = _Excluder(opts)
    if opts.tar:
        root = Node(path=b"", mode=stat.S_IFDIR | 0o755, uid=0, gid=0,
                    mtime_ns=opts.new_node_mtime_ns)  # fmt: skip
        tree = Tree(root)
        try:
            _scan_tar(src, excluded, tree)
        except BaseException:
            tree.close()
            raise
    else:
        tree = Tree(_scan_dir(os.fsencode(src), excluded))
    if opts.all_root or opts.force_uid is not None or opts.force_gid is not None:
        for n in tree.walk():
            if opts.all_root:
                n.uid = n.gid = 0
            if opts.force_uid is not None:
                n.uid = opts.force_uid
            if opts.force_gid is not None:
                n.gid = opts.force_gid
    if opts.device_table:
        _apply_device_table(tree, opts.device_table, opts.new_node_mtime_ns)
    _count_links(tree)
    return tree


@contextlib.contextmanager
def atomic_output(out: str) -> Iterator[BinaryIO]:
    """A writable, seekable file that becomes ``out`` only if the block succeeds
    (:func:`fusefs.atomicfile.atomic_output`, fsynced): no partial image is
    ever left at OUT, nor beside it.  BuildError when it cannot be created."""
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(atomicfile.atomic_output(out, durable=True))
        except OSError as e:
            raise BuildError(f"{out}: cannot create output: {e.strerror}") from None
        yield f
