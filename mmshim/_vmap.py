"""Virtually contiguous views of pages: ``vmap``/``vm_map_ram`` mappings.

Every mapping owns a private ``mmap`` object and hands out ``memoryview(mm)``
as its view, whatever the mode:

* ``REMAP`` (mmu): an anonymous range is reserved, then each run of
  consecutive frames of the arena's memfd is mapped over it at its place
  with ``MAP_FIXED | MAP_SHARED``.  The view aliases the frames: a write on
  either side is seen on the other at once, and nothing is copied.
* ``DIRECT`` (nommu, physically contiguous pages): the memfd is mapped at the
  first frame's offset.  A second virtual address of the same memory, which
  is what nommu's ``page_address()`` of the frames is: same bytes, no copy.
* ``BOUNCE`` (nommu-bounce, scattered pages): the view is a ``DIRECT`` view
  of a contiguous bounce buffer allocated from the arena.

Owning the ``mmap`` lets vunmap find views that outlive it: closing an
``mmap`` with a view still exported fails with ``BufferError``.  Then the
range is overlaid with fresh anonymous memory before it is dropped, so a
stale view can never reach a frame again (where the kernel would fault) and
can never crash the process; the arena counts it as a stale-view unmap.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import mmap
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Final

from mmshim._page import PAGE_SIZE, Page

if TYPE_CHECKING:
    from mmshim._arena import Arena

# vmap() flags, as in include/linux/vmalloc.h.
VM_MAP: Final = 0x00000004
VM_MAP_PUT_PAGES: Final = 0x00000200  # vunmap() drops one reference per page

_MAP_FIXED: Final = 0x10  # asm-generic/mman-common.h; Python's mmap module lacks it
# Views of frames are written at once (a decompressor fills them): populate
# the page tables in the mmap call instead of taking one fault per page.
_MAP_FRAMES: Final = mmap.MAP_SHARED | mmap.MAP_POPULATE
_PROT_RW: Final = mmap.PROT_READ | mmap.PROT_WRITE


class MappingKind(enum.Enum):
    """How a mapping's view reaches the frames."""

    REMAP = "remap"  # mmu: frames mapped at their place in a fresh virtual range
    DIRECT = "direct"  # nommu: physically contiguous frames, their own memory
    BOUNCE = "bounce"  # nommu-bounce: a contiguous copy, written back at unmap


@functools.cache
def _libc_mmap() -> Callable[[int, int, int, int, int, int], int | None]:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.mmap
    fn.restype = ctypes.c_void_p
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_long,
    ]
    return fn


def _mmap_fixed(addr: int, length: int, flags: int, fd: int, offset: int) -> None:
    got = _libc_mmap()(addr, length, _PROT_RW, flags | _MAP_FIXED, fd, offset)
    if got != addr:
        err = ctypes.get_errno()
        raise OSError(err, f"mmap(MAP_FIXED) at {addr:#x}: {os.strerror(err)}")


def buffer_address(mm: mmap.mmap) -> int:
    """The virtual address of an mmap object's first byte."""
    probe = ctypes.c_char.from_buffer(mm)
    try:
        return ctypes.addressof(probe)
    finally:
        del probe  # drops the buffer export again


def map_direct(fd: int, first_pfn: int, nr_pages: int) -> mmap.mmap:
    """A fresh shared mapping of ``nr_pages`` consecutive frames of the memfd."""
    return mmap.mmap(
        fd,
        nr_pages * PAGE_SIZE,
        flags=_MAP_FRAMES,
        prot=_PROT_RW,
        offset=first_pfn * PAGE_SIZE,
    )


def map_scattered(fd: int, pfns: Sequence[int]) -> mmap.mmap:
    """Reserve a contiguous range and map each frame of the memfd at its place."""
    mm = mmap.mmap(-1, len(pfns) * PAGE_SIZE, flags=mmap.MAP_PRIVATE, prot=_PROT_RW)
    try:
        base = buffer_address(mm)
        i = 0
        while i < len(pfns):  # one mmap call per run of consecutive frames
            run = 1
            while i + run < len(pfns) and pfns[i + run] == pfns[i] + run:
                run += 1
            _mmap_fixed(base + i * PAGE_SIZE, run * PAGE_SIZE, _MAP_FRAMES, fd, pfns[i] * PAGE_SIZE)
            i += run
    except BaseException:
        mm.close()
        raise
    return mm


def unmap(mm: mmap.mmap, view: memoryview) -> bool:
    """Release ``view`` and unmap ``mm``; False if a view derived from it outlived it.

    In that case the range is overlaid with anonymous memory first, so the
    stale view keeps working on private bytes and never touches a frame again;
    the mmap object itself is unmapped when the last such view goes away.
    """
    view.release()
    try:
        mm.close()
    except BufferError:
        _mmap_fixed(buffer_address(mm), len(mm), mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        return False
    return True


class Mapping:
    """A live vmap: ``view`` is a writable memoryview of ``len(pages) * 4096`` bytes.

    Use it as a context manager, or give it back with ``arena.vunmap(m)``
    (``arena.vm_unmap_ram(m)`` if it came from ``vm_map_ram``).  Do not keep
    slices of ``view`` past the unmap: they stop seeing the pages.
    """

    __slots__ = (
        "_arena",
        "_digests",
        "_mm",
        "bounce",
        "flags",
        "kind",
        "lost_writes",
        "mapped",
        "pages",
        "via_map_ram",
        "view",
    )

    def __init__(
        self,
        arena: Arena,
        pages: tuple[Page, ...],
        flags: int,
        kind: MappingKind,
        mm: mmap.mmap,
        *,
        bounce: Page | None = None,
        digests: list[bytes] | None = None,
        via_map_ram: bool = False,
    ) -> None:
        self._arena = arena
        self.pages: Final = pages
        self.flags: Final = flags
        self.kind: Final = kind
        self._mm = mm
        self.view = memoryview(mm)
        self.bounce = bounce
        self._digests = digests
        self.via_map_ram: Final = via_map_ram
        self.mapped = True
        self.lost_writes = 0  # set at unmap for bounce mappings

    @property
    def nr_pages(self) -> int:
        return len(self.pages)

    def __len__(self) -> int:
        return len(self.pages) * PAGE_SIZE

    def __enter__(self) -> Mapping:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.mapped:
            return
        if self.via_map_ram:
            self._arena.vm_unmap_ram(self)
        else:
            self._arena.vunmap(self)

    def describe(self) -> str:
        """One line naming the mapping, for leak reports."""
        pfns = [p.pfn for p in self.pages]
        shown = ",".join(map(str, pfns[:8])) + (",..." if len(pfns) > 8 else "")
        via = "vm_map_ram" if self.via_map_ram else "vmap"
        extra = f" bounce@pfn {self.bounce.pfn}" if self.bounce is not None else ""
        return f"{via} {self.kind.value} of {len(pfns)} pages [pfn {shown}]{extra}"

    def __repr__(self) -> str:
        state = "mapped" if self.mapped else "unmapped"
        return f"<Mapping {self.describe()} {state}>"
