"""The one error hierarchy of nommufs.

Everything the library raises on purpose is an :class:`FsError`; each carries
the errno the FUSE adapter answers with and, where it subclasses a builtin
(``FileNotFoundError``, ``MemoryError`` ...), callers may catch either.
"""

from __future__ import annotations

import errno as _errno
import signal as _signal
from dataclasses import dataclass
from typing import Literal


class FsError(Exception):
    """Base of every error the library raises on purpose."""

    errno: int = _errno.EIO  # a class-level default; subclasses set their own


class CorruptImageError(FsError):
    """Broken metadata: the kernel's EFSCORRUPTED ("structure needs cleaning").

    The message names the structure and where it is, so one line is enough
    to find the problem: ``erofs inode nid 36 @0x480: inline tail crosses a block``.
    """

    errno = _errno.EUCLEAN

    def __init__(
        self,
        reason: str,
        *,
        structure: str | None = None,
        offset: int | None = None,
        nid: int | None = None,
    ) -> None:
        self.reason = reason
        self.structure = structure
        self.offset = offset
        self.nid = nid
        where = []
        if structure:
            where.append(structure)
        if nid is not None:
            where.append(f"nid {nid}")
        if offset is not None:
            where.append(f"@{offset:#x}")
        super().__init__(f"{' '.join(where)}: {reason}" if where else reason)


class UnsupportedFeatureError(FsError):
    """Valid but not supported here (EOPNOTSUPP); names the feature."""

    errno = _errno.EOPNOTSUPP


class NotFoundError(FsError, FileNotFoundError):
    errno = _errno.ENOENT


class NotADirectoryFsError(FsError, NotADirectoryError):
    errno = _errno.ENOTDIR


class IsADirectoryFsError(FsError, IsADirectoryError):
    errno = _errno.EISDIR


class NotASymlinkError(FsError):
    errno = _errno.EINVAL


class NoAttributeError(FsError):
    """No such extended attribute (ENODATA)."""

    errno = _errno.ENODATA


# Why an allocation failed: fewer free frames than asked ("no-memory"),
# enough free frames but no free block that large ("fragmented"), or a vmap
# of scattered frames without an MMU ("not-contiguous", nommu-contig).
Shortage = Literal["no-memory", "fragmented", "not-contiguous"]


@dataclass(frozen=True, slots=True)
class Allocation:
    """An allocation the arena could not satisfy, and what the arena had then.

    ``blocks`` blocks of ``2**order`` frames each were asked for (a bulk or
    page-cache allocation: many order-0 blocks; a folio or buffer: one).
    ``contiguous``: the frames had to be one physically contiguous run.
    """

    what: str  # "page cache pages 0..1019", "bounce buffer for decompressed output"
    order: int
    blocks: int
    contiguous: bool
    shortage: Shortage
    frames_free: int
    largest_free_order: int  # -1: no frame free
    arena_frames: int
    mm: str  # the arena's mode

    @property
    def frames(self) -> int:
        return self.blocks << self.order


@dataclass(frozen=True, slots=True)
class Extent:
    """The compressed extent a failed read was decoding (logical bytes
    ``[la, la + llen)`` of the file, ``plen`` bytes in the image)."""

    la: int
    llen: int
    plen: int
    algorithm: str


class OutOfMemoryError(FsError, MemoryError):
    """The simulated machine's arena could not satisfy an allocation (ENOMEM).

    ``allocation`` says what was asked and what the arena had, where the
    read path knows it; ``extents`` the compressed extents the read was
    decoding (set by the format's decoder as the error passes it).
    """

    errno = _errno.ENOMEM

    def __init__(self, message: str, *, allocation: Allocation | None = None) -> None:
        super().__init__(message)
        self.allocation = allocation
        self.extents: tuple[Extent, ...] = ()


class InvalidArgumentError(FsError, ValueError):
    errno = _errno.EINVAL


class ReadOnlyError(FsError):
    errno = _errno.EROFS


class Interrupted(BaseException):
    """A signal (SIGINT, SIGTERM, SIGHUP) ended the command.

    Not an FsError: like KeyboardInterrupt it is not the image's fault and
    nothing should catch it but the command line (:mod:`fusefs.cmdline`, whose
    handlers raise it).  Code that removes a temporary file or tree on its way
    out records it with :func:`note_removed`, so the message can say what went.
    """

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = _signal.Signals(signum).name
        self.removed: list[str] = []
        super().__init__(self.name)


def interruption(exc: BaseException | None) -> Interrupted | None:
    """The Interrupted behind ``exc``: itself, or one in its chain of
    ``__context__``/``__cause__``.  A signal lands between any two bytecodes,
    so the cleanup it interrupts may fail in turn and raise something else
    (``raise ... from None`` hides the context from tracebacks, not from here)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Interrupted):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def note_removed(exc: BaseException, what: str) -> None:
    """Record that ``what`` was removed because ``exc`` ended the work."""
    interrupted = interruption(exc)
    if interrupted is not None:
        interrupted.removed.append(what)
