"""Outputs that appear whole or not at all: a file or a directory tree built
under a temporary name beside the final one, renamed over it only when
complete, and removed on any failure or signal.

A file is built, where Linux allows it, in an *unnamed* file of OUT's
directory (``open(dir, O_TMPFILE)``): it has no name until it is complete
and linked in (``linkat`` of ``/proc/self/fd/N``), so nothing can be left
behind, not even by SIGKILL or a power cut.  Where the filesystem refuses
O_TMPFILE (EOPNOTSUPP, EISDIR, EINVAL: tmpfs before 3.11, NFS, FUSE...) or
/proc is not mounted, it falls back to a named temporary.  A directory tree
cannot be unnamed (there is no O_TMPFILE for directories): ``extract``'s
tree has a name from the start, and SIGKILL leaves it.

The temporary's name is chosen *before* it is created and the creation is
inside the ``try`` that removes it, so a signal arriving at any point (the
command line turns SIGINT, SIGTERM and SIGHUP into
:class:`~fusefs.errors.Interrupted` between any two bytecodes) cannot leave
it behind; what was removed is recorded with
:func:`~fusefs.errors.note_removed`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from typing import BinaryIO, Final

from fusefs.errors import note_removed

ATTEMPTS = 100
_REFUSED: Final = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT)


def _beside(out: str, kind: str) -> str:
    """A fresh name in OUT's directory: ``.NAME.XXXXXXXX.tmp`` (files) or
    ``.NAME.nommufs-XXXXXXXX`` (trees)."""
    directory, name = os.path.split(os.path.abspath(out))
    tag = secrets.token_hex(4)
    leaf = f".{name}.{tag}.tmp" if kind == "file" else f".{name}.nommufs-{tag}"
    return os.path.join(directory, leaf)


def _remove(path: str, exc: BaseException) -> None:
    """Remove the temporary ``path`` if it was created (the failure may have
    come before), and say so to an interruption."""
    if not os.path.lexists(path):
        return
    with contextlib.suppress(FileNotFoundError):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)
    if not os.path.lexists(path):
        note_removed(exc, path)


def _unnamed(out: str) -> int | None:
    """An fd of a new unnamed file in ``out``'s directory, or None where the
    system cannot make one (the caller falls back to a named temporary)."""
    if not hasattr(os, "O_TMPFILE") or not os.path.isdir("/proc/self/fd"):
        return None
    directory = os.path.dirname(os.path.abspath(out))
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno in _REFUSED:
            return None
        raise OSError(e.errno, e.strerror, out) from None  # named as the file asked for


_SYNC_FILE_RANGE_WRITE: Final = 2  # <linux/fs.h>: start writeback, do not wait
_libc: list[ctypes.CDLL] = []


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``length`` bytes at ``offset`` of ``fd`` back to disk
    without waiting (``sync_file_range(SYNC_FILE_RANGE_WRITE)``), so that a
    durable output's final fsync finds most of its data written already.
    Only a head start: where the call is missing or fails, that fsync
    does the work and reports any error."""
    if not _libc:
        _libc.append(ctypes.CDLL(None))
    with contextlib.suppress(AttributeError):
        _libc[0].sync_file_range(
            fd, ctypes.c_int64(offset), ctypes.c_int64(length), _SYNC_FILE_RANGE_WRITE
        )


def _finish(f: BinaryIO, durable: bool) -> None:
    f.flush()
    if durable:
        os.fsync(f.fileno())
    umask = os.umask(0o022)
    os.umask(umask)
    os.fchmod(f.fileno(), 0o666 & ~umask)


def _link_in(fd: int, out: str) -> None:
    """Give the unnamed file ``fd`` the name ``out``, replacing what is there:
    linked straight to ``out`` when it is free, else to a temporary name
    renamed over it (linkat cannot replace)."""
    directory, name = os.path.split(os.path.abspath(out))
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _link_at(fd, dfd, name, out)
    finally:
        os.close(dfd)


def _link_at(fd: int, dfd: int, name: str, out: str) -> None:
    def link(leaf: str) -> None:
        # linkat(AT_FDCWD, "/proc/self/fd/N", dfd, leaf, AT_SYMLINK_FOLLOW): Python
        # calls linkat (not link, which would link the /proc symlink) given a dir fd
        os.link(f"/proc/self/fd/{fd}", leaf, dst_dir_fd=dfd, follow_symlinks=True)

    try:
        link(name)
        return
    except FileExistsError:
        pass
    for _ in range(ATTEMPTS):
        tmp = os.path.basename(_beside(out, "file"))
        try:
            try:
                link(tmp)
            except FileExistsError:
                continue
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            return
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dfd)
                note_removed(e, os.path.join(os.path.dirname(os.path.abspath(out)), tmp))
            raise
    raise FileExistsError(f"{out}: no free temporary name beside it")


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike[str], *, durable: bool = False) -> Iterator[BinaryIO]:
    """A writable, seekable file that becomes ``out`` only if the block succeeds.

    It gets the usual ``0666 & ~umask`` mode and is fsynced first when
    ``durable``.  Raises OSError naming ``out`` when it cannot be created."""
    out = os.fspath(out)
    fd = _unnamed(out)
    if fd is None:
        with _named_output(out, durable) as f:
            yield f
        return
    with os.fdopen(fd, "w+b") as f:
        yield f
        _finish(f, durable)
        _link_in(f.fileno(), out)


@contextlib.contextmanager
def _named_output(out: str, durable: bool) -> Iterator[BinaryIO]:
    """:func:`atomic_output` through a named temporary beside ``out``."""
    for _ in range(ATTEMPTS):
        tmp = _beside(out, "file")
        f: BinaryIO | None = None
        try:
            try:
                fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            except OSError as e:  # named as the file asked for, not the temporary
                raise OSError(e.errno, e.strerror, out) from None
            f = os.fdopen(fd, "w+b")
            yield f
            _finish(f, durable)
            f.close()
            os.replace(tmp, out)
            return
        except BaseException as e:
            if f is not None:
                f.close()
            _remove(tmp, e)
            raise
    raise FileExistsError(f"{out}: no free temporary name beside it")


@contextlib.contextmanager
def atomic_directory(dest: str | os.PathLike[str]) -> Iterator[str]:
    """A new empty directory (mode 0700) that becomes ``dest`` (which must
    not exist, or be an empty directory) only if the block succeeds; removed
    with everything in it otherwise.  Raises OSError naming ``dest`` when it
    cannot be created."""
    dest = os.fspath(dest)
    for _ in range(ATTEMPTS):
        tmp = _beside(dest, "tree")
        try:
            try:
                os.mkdir(tmp, 0o700)
            except FileExistsError:
                continue
            except OSError as e:  # named as the directory asked for, not the temporary
                raise OSError(e.errno, e.strerror, dest) from None
            yield tmp
            os.rename(tmp, dest)
            return
        except BaseException as e:
            _remove(tmp, e)
            raise
    raise FileExistsError(f"{dest}: no free temporary name beside it")
