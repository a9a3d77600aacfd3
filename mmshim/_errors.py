"""The errors mmshim raises on purpose.

Each names the page (pfn) or mapping it is about, so one line of a traceback
is enough to find the bug.  Allocation failures are also :class:`MemoryError`
(the kernel's ENOMEM), so callers may catch either.
"""

from __future__ import annotations

import errno as _errno
from typing import ClassVar


class MmshimError(Exception):
    """Base of every error mmshim raises on purpose."""

    errno: ClassVar[int] = _errno.EINVAL


class AllocError(MmshimError, MemoryError):
    """No free block of the requested order, even after the shrinkers ran (ENOMEM)."""

    errno = _errno.ENOMEM

    def __init__(self, message: str, *, order: int, frames_free: int) -> None:
        super().__init__(message)
        self.order = order
        self.frames_free = frames_free


class VmapError(AllocError):
    """vmap() could not produce a virtually contiguous view (ENOMEM).

    ``reason`` is ``"not-contiguous"`` under ``nommu-contig`` (the pages were
    not physically contiguous) or ``"no-bounce-buffer"`` under
    ``nommu-bounce`` (no contiguous block for the bounce buffer).
    """

    def __init__(self, message: str, *, reason: str, order: int, frames_free: int) -> None:
        super().__init__(message, order=order, frames_free=frames_free)
        self.reason = reason


class BadPageStateError(MmshimError):
    """A page was used against its state: the kernel's "BUG: Bad page state".

    Double free, a reference taken on a free page, freeing a page that is
    still locked or vmapped, and the like.  Raised before anything changes.
    """

    def __init__(self, message: str, *, pfn: int) -> None:
        super().__init__(message)
        self.pfn = pfn


class TailPageError(BadPageStateError):
    """A tail page of a large folio was used as if it were an order-0 page.

    Freeing a tail page (refcount 0) is the seed's
    ``VM_BUG_ON_PAGE(page_ref_count(page) == 0)``; with ``tail_pages="reject"``
    vmap() refuses tail pages outright.
    """


class MappingLeakError(MmshimError):
    """Arena.close() (or PageCache.close()) found mappings or references still held.

    ``leaks`` has one line per leaked mapping or folio.
    """

    def __init__(self, what: str, leaks: list[str]) -> None:
        super().__init__(f"{what}: {len(leaks)} still held: " + "; ".join(leaks))
        self.leaks = leaks
