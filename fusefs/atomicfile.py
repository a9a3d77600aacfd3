"""Outputs that appear whole or not at all: a file or a directory tree built
under a temporary name beside the final one, renamed over it only when
complete, and removed on any failure or signal.

The temporary's name is chosen *before* it is created and the creation is
inside the ``try`` that removes it, so a signal arriving at any point (the
command line turns SIGINT, SIGTERM and SIGHUP into
:class:`~fusefs.errors.Interrupted` between any two bytecodes) cannot leave
it behind; what was removed is recorded with
:func:`~fusefs.errors.note_removed`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from typing import BinaryIO

from fusefs.errors import note_removed

ATTEMPTS = 100


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


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike[str], *, durable: bool = False) -> Iterator[BinaryIO]:
    """A writable, seekable file that becomes ``out`` only if the block succeeds.

    It gets the usual ``0666 & ~umask`` mode and is fsynced first when
    ``durable``.  Raises OSError naming ``out`` when it cannot be created."""
    out = os.fspath(out)
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
            f.flush()
            if durable:
                os.fsync(f.fileno())
            umask = os.umask(0o022)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
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
