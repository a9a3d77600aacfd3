"""Files that appear whole or not at all: written beside their final name,
renamed over it only when complete, removed on any failure or signal."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import BinaryIO

from fusefs.errors import note_removed


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike[str], *, durable: bool = False) -> Iterator[BinaryIO]:
    """A writable, seekable file that becomes ``out`` only if the block succeeds.

    The temporary file (``.NAME.XXXX.tmp``) lives in OUT's directory, so the
    final rename is atomic; it gets the usual ``0666 & ~umask`` mode, is
    fsynced first when ``durable``, and is removed on any error, including
    :class:`~fusefs.errors.Interrupted` (which then names it).  Raises OSError
    when the temporary cannot be created."""
    out = os.fspath(out)
    directory = os.path.dirname(os.path.abspath(out))
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(out)}.", suffix=".tmp", dir=directory
        )
    except OSError as e:  # named as the file asked for, not the temporary
        raise OSError(e.errno, e.strerror, out) from None
    f = os.fdopen(fd, "w+b")
    try:
        yield f
        f.flush()
        if durable:
            os.fsync(f.fileno())
        umask = os.umask(0o022)
        os.umask(umask)
        os.fchmod(f.fileno(), 0o666 & ~umask)
        f.close()
        os.replace(tmp, out)
    except BaseException as e:
        f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
            note_removed(e, tmp)
        raise
