"""``nommufs extract``: copy an image's tree into a directory.

Safety rules (a hostile image must not write outside DIR):

* every name is checked by :func:`fusefs.vfs.check_name` during the walk:
  a name with ``/`` or NUL, or an extra ``.``/``..``, stops the extraction
  with an error naming its path;
* everything is created relative to directory file descriptors opened with
  ``O_NOFOLLOW`` (``openat``-style), files with ``O_EXCL``: a symlink from
  the image is only ever created, never followed;
* the tree is built in a fresh temporary directory next to DIR and renamed
  to DIR only when complete, so a failure leaves nothing under DIR; the
  temporary is removed on any error and on SIGINT, SIGTERM and SIGHUP.

Space: an image may claim far more data than it stores (a 12 KiB image can
claim 3.9 GiB, one pcluster referenced 495 times).  Before anything is
created, the data the files claim (holes excluded, hard links once) is
checked against the space free where DIR is made; if it does not fit, a
one-line error names the need, the largest file and the space, and nothing
is written.  Running out of space anyway (another writer) is the same
error naming the file, with nothing left behind.

Metadata order per inode: owner (root only; chown clears set-id bits and
file capabilities), xattrs, mode, times.  Directories get theirs last,
deepest first, so their mtimes are not disturbed by their children.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

from fusefs.atomicfile import atomic_directory
from fusefs.commands._common import (
    add_image_arguments,
    check_room,
    data_bytes,
    open_from_args,
    read_data,
)
from fusefs.errors import FsError, InvalidArgumentError
from fusefs.names import escape, one_line, show_path
from fusefs.vfs import Attr, Filesystem, Ino, WalkItem, walk

NAME = "extract"
HELP = "extract an image's files into a new directory"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(slots=True)
class ExtractReport:
    """What :func:`extract` did and what it could not do (as warnings)."""

    files: int = 0
    directories: int = 0
    links: int = 0
    other: int = 0
    bytes_written: int = 0
    warnings: list[str] = field(default_factory=list)


class _Extractor:
    def __init__(self, fs: Filesystem, rootfd: int, *, owners: bool, devices: bool) -> None:
        self.fs = fs
        self.rootfd = rootfd
        self.owners = owners
        self.devices = devices
        self.report = ExtractReport()
        self.first_path: dict[Ino, bytes] = {}
        self.dirs: list[tuple[bytes, Attr, Ino]] = []
        # open directories along the current path: (path, fd); the root is not owned
        self.open_dirs: list[tuple[bytes, int]] = []

    # -- directory fds -------------------------------------------------------

    def _dirfd(self, dpath: bytes) -> int:
        """An fd of the extracted directory ``dpath``, opened component by
        component with O_NOFOLLOW."""
        while self.open_dirs:
            top = self.open_dirs[-1][0]
            if dpath == top or dpath.startswith(top + b"/"):
                break
            os.close(self.open_dirs.pop()[1])
        if self.open_dirs:
            base, fd = self.open_dirs[-1]
            rest = dpath[len(base) + 1 :] if dpath != base else b""
        else:
            base, fd = b"", self.rootfd
            rest = dpath
        for part in rest.split(b"/") if rest else ():
            base = base + b"/" + part if base else part
            fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            self.open_dirs.append((base, fd))
        return fd

    def close(self) -> None:
        while self.open_dirs:
            os.close(self.open_dirs.pop()[1])

    # -- metadata --------------------------------------------------------------

    def _xattrs(self, ino: Ino, target: int | bytes, path: bytes) -> None:
        for key in self.fs.listxattr(ino):
            value = self.fs.getxattr(ino, key)
            try:
                if isinstance(target, int):
                    os.setxattr(target, key, value)
                else:
                    os.setxattr(target, key, value, follow_symlinks=False)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EACCES):
                    raise
                self.report.warnings.append(
                    f"{show_path(path)}: xattr {escape(key)} not set: {e.strerror}"
                )

    def _meta_fd(self, fd: int, item_path: bytes, attr: Attr, ino: Ino) -> None:
        if self.owners:
            os.fchown(fd, attr.uid, attr.gid)
        self._xattrs(ino, fd, item_path)
        os.fchmod(fd, stat.S_IMODE(attr.mode))
        os.utime(fd, ns=(attr.mtime_ns, attr.mtime_ns))

    def _meta_at(self, dfd: int, name: bytes, item_path: bytes, attr: Attr, ino: Ino) -> None:
        if self.owners:
            os.chown(name, attr.uid, attr.gid, dir_fd=dfd, follow_symlinks=False)
        # setxattr has no *at() form: go through the directory fd's /proc link;
        # the last component is not followed
        self._xattrs(ino, b"/proc/self/fd/%d/%s" % (dfd, name), item_path)
        if not attr.is_lnk:
            os.chmod(name, stat.S_IMODE(attr.mode), dir_fd=dfd)
        os.utime(name, ns=(attr.mtime_ns, attr.mtime_ns), dir_fd=dfd, follow_symlinks=False)

    # -- one inode ---------------------------------------------------------------

    def item(self, item: WalkItem) -> None:
        attr, ino = item.attr, item.ino
        if not item.path:
            self.dirs.append((b"", attr, ino))
            return
        dpath, _, name = item.path.rpartition(b"/")
        dfd = self._dirfd(dpath)
        if attr.is_dir:
            os.mkdir(name, 0o700, dir_fd=dfd)
            self.dirs.append((item.path, attr, ino))
            self.report.directories += 1
            return
        if attr.nlink > 1 and ino in self.first_path:
            os.link(
                self.first_path[ino], name, src_dir_fd=self.rootfd, dst_dir_fd=dfd,
                follow_symlinks=False,
            )
            self.report.links += 1
            return
        self.first_path[ino] = item.path
        fmt = stat.S_IFMT(attr.mode)
        if attr.is_reg:
            self._file(dfd, name, item.path, attr, ino)
            return
        if attr.is_lnk:
            os.symlink(self.fs.readlink(ino), name, dir_fd=dfd)
        elif fmt == stat.S_IFIFO:
            os.mkfifo(name, 0o600, dir_fd=dfd)
        elif fmt == stat.S_IFSOCK:
            os.mknod(name, stat.S_IFSOCK | 0o600, dir_fd=dfd)
        elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
            if not self.devices:
                self.report.warnings.append(
                    f"{show_path(item.path)}: device node skipped (not root)"
                )
                del self.first_path[ino]
                return
            os.mknod(name, fmt | 0o600, attr.rdev, dir_fd=dfd)
        else:
            raise InvalidArgumentError(f"{show_path(item.path)}: unknown file type {fmt:#o}")
        self.report.other += 1
        self._meta_at(dfd, name, item.path, attr, ino)

    def _file(self, dfd: int, name: bytes, path: bytes, attr: Attr, ino: Ino) -> None:
        fd = os.open(name, _FILE_FLAGS, 0o600, dir_fd=dfd)
        try:
            write_sparse(fd, read_data(self.fs, ino, attr.size))
            os.ftruncate(fd, attr.size)
            self._meta_fd(fd, path, attr, ino)
        finally:
            os.close(fd)
        self.report.files += 1
        self.report.bytes_written += attr.size

    def finish_directories(self) -> None:
        """Directory metadata, deepest first (children before parents)."""
        self.close()
        for path, attr, ino in reversed(self.dirs):
            fd = self._dirfd(path)
            self._meta_fd(fd, path, attr, ino)
        self.close()


def write_sparse(fd: int, pieces: Iterator[tuple[int, bytes]], base: int = 0) -> None:
    """Write each ``(offset, bytes)`` at ``base + offset`` of the file ``fd``,
    seeking over holes (and over pieces of zeros), as ``cp --sparse``: the
    caller sets the size (ftruncate) afterwards."""
    for pos, data in pieces:
        if data.count(0) == len(data):
            continue  # zeros stay a hole
        os.lseek(fd, base + pos, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]


def extract(
    fs: Filesystem,
    dest: str | os.PathLike[str],
    *,
    owners: bool | None = None,
    devices: bool | None = None,
) -> ExtractReport:
    """Extract the whole tree of ``fs`` into the new (or empty) directory ``dest``.

    ``owners`` and ``devices`` default to whether we run as root.  Raises
    FsError (a hostile name, broken data) or OSError (the destination);
    nothing is left under ``dest`` then.
    """
    root = os.geteuid() == 0
    dest = os.path.abspath(os.fspath(dest))
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISDIR(st.st_mode) or os.listdir(dest):
            raise InvalidArgumentError(f"{dest}: exists and is not an empty directory")
    _check_room(fs, dest)
    with atomic_directory(dest) as tmp:
        rootfd = os.open(tmp, _DIR_FLAGS)
        ex = _Extractor(
            fs, rootfd, owners=root if owners is None else owners,
            devices=root if devices is None else devices,
        )
        try:
            for item in walk(fs):
                try:
                    ex.item(item)
                except OSError as e:
                    raise FsError(f"{show_path(item.path)}: {e.strerror}") from e
            ex.finish_directories()
        finally:
            ex.close()
            os.close(rootfd)
    # rename(2) may touch the moved directory's times on some filesystems
    top = ex.dirs[0][1]
    os.utime(dest, ns=(top.mtime_ns, top.mtime_ns), follow_symlinks=False)
    return ex.report


def _check_room(fs: Filesystem, dest: str) -> None:
    """NoSpaceError unless the files' data fits beside ``dest`` (see the
    module docstring): one walk of the metadata, bounded by the image."""
    total, largest, seen = 0, (0, b""), set()
    for item in walk(fs):
        if item.attr.is_reg and item.ino not in seen:
            seen.add(item.ino)
            n = data_bytes(fs, item.ino)
            total += n
            largest = max(largest, (n, item.path))
    what = f"extracting ({show_path(largest[1])}: {largest[0]} bytes the largest file)"
    parent = os.path.dirname(dest) or "."
    try:
        st = os.statvfs(parent)
    except OSError as e:  # said of the directory the user asked for, not of its parent
        raise OSError(e.errno, e.strerror, dest) from None
    check_room(total, st, what, f"the filesystem of {escape(os.fsencode(parent))}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_arguments(parser)
    parser.add_argument("dest", metavar="DIR", help="directory to create (or an empty one)")


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as fs:
        report = extract(fs, args.dest)
    for line in report.warnings:
        print(one_line(f"nommufs extract: warning: {line}"), file=sys.stderr)
    return 0
