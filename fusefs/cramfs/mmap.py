"""Execute in place: cramfs's ``mmap_prepare`` (fs/cramfs/inode.c: cramfs_physmem_mmap,
cramfs_physmem_get_unmapped_area), over :mod:`mmshim.mmap`.

With an MMU (reference section 5): a shared mapping that may be written is
refused; a mapping with ``VM_WRITE`` goes through the page cache; otherwise
the U+D blocks contiguous in 4096-byte steps from ``pgoff`` are mapped from
flash — the whole VMA as one ``VM_PFNMAP`` remap when they cover it, else
``VM_MIXEDMAP`` with the rest faulting into page-cache frames.  A last page
whose flash bytes after EOF are not zero is not mapped in place.  A later
private write copies the raw page into an arena frame (``VM_MIXEDMAP``
COW from a raw PFN: the generic path, not cramfs's own choice, which never
maps writable VMAs directly; see reference section 12).

Without an MMU: the request must lie inside the file (EINVAL) and the range
test must cover every page; then the flash range is used in place, else
mmshim makes a private copy (or fails shared mappings with ENODEV).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from fusefs.cramfs.data import BlockMap
from fusefs.cramfs.format import CRAMFS_BLK_DIRECT_PTR_SHIFT, CRAMFS_BLK_FLAGS, CRAMFS_BLOCK_SIZE
from fusefs.errors import FsError
from fusefs.vfs import Ino
from mmshim import Page
from mmshim.mmap import MmapError, VmAreaDesc, VmFlags

if TYPE_CHECKING:
    from fusefs.cramfs.fs import CramfsFilesystem

_STEP = CRAMFS_BLOCK_SIZE >> CRAMFS_BLK_DIRECT_PTR_SHIFT


def block_range(bm: BlockMap, pgoff: int, pages: int | None = None) -> tuple[int, int]:
    """``cramfs_get_block_range``: (flash byte offset, count) of the blocks from
    ``pgoff`` whose pointers are exactly ``(first + k*1024) | U | D``."""
    if not 0 <= pgoff < bm.nr:
        return 0, 0
    limit = bm.nr - pgoff if pages is None else min(pages, bm.nr - pgoff)
    ptr = bm.pointers[pgoff]
    if ptr & CRAMFS_BLK_FLAGS != CRAMFS_BLK_FLAGS:
        return 0, 0
    first = ptr & ~CRAMFS_BLK_FLAGS
    k = 0
    while k < limit and bm.pointers[pgoff + k] == (first + k * _STEP) | CRAMFS_BLK_FLAGS:
        k += 1
    start = first << CRAMFS_BLK_DIRECT_PTR_SHIFT
    if k:
        # the run is contiguous: its first and last blocks inside the filesystem bound it all
        bm.extent(pgoff)
        bm.extent(pgoff + k - 1)
    return start, k


class CramfsMappedFile:
    """One regular file of a :class:`CramfsFilesystem`, as an ``mmshim.mmap.MmapFile``."""

    writable = False

    def __init__(self, fs: CramfsFilesystem, ino: Ino, size: int) -> None:
        self.fs = fs
        self.ino = ino
        self.size = size
        self.arena = fs.arena

    @property
    def nr_pages(self) -> int:
        return (self.size + CRAMFS_BLOCK_SIZE - 1) // CRAMFS_BLOCK_SIZE

    def fault(self, pgoff: int) -> Page:
        try:
            return self.fs.cache_page(self.ino, pgoff)
        except FsError as e:
            raise MmapError(
                f"SIGBUS: cramfs inode {self.ino} page {pgoff}: {e}", errno=errno.EFAULT
            ) from e

    def read_into(self, offset: int, dest: memoryview) -> int:
        try:
            data = self.fs.read(self.ino, offset, len(dest))
        except FsError as e:
            raise MmapError(f"cramfs inode {self.ino}: {e}", errno=errno.EIO) from e
        dest[: len(data)] = data
        return len(data)

    def _tail_shared(self, start: int, k: int, pgoff: int) -> bool:
        """``cramfs_last_page_is_shared``: flash bytes after EOF in the last page are not zero."""
        if pgoff + k != self.nr_pages or not self.size % CRAMFS_BLOCK_SIZE:
            return False
        tail_at = start + (k - 1) * CRAMFS_BLOCK_SIZE + self.size % CRAMFS_BLOCK_SIZE
        page_end = start + k * CRAMFS_BLOCK_SIZE
        tail = self.fs.flash.read_bytes(tail_at, min(page_end, self.fs.flash.size) - tail_at)
        return any(tail)

    def mmap_prepare(self, desc: VmAreaDesc) -> None:
        flags = desc.vm_flags
        if flags & VmFlags.VM_SHARED and flags & VmFlags.VM_MAYWRITE:
            raise MmapError(
                "cramfs is read-only: shared writable mapping refused", errno=errno.EINVAL
            )
        try:
            self._prepare(desc)
        except FsError as e:
            raise MmapError(f"cramfs inode {self.ino}: {e}", errno=errno.EIO) from e

    def _prepare(self, desc: VmAreaDesc) -> None:
        flags = desc.vm_flags
        bm = self.fs.blockmap(self.ino)
        flash = self.fs.flash
        if not desc.mmu:
            # cramfs_physmem_get_unmapped_area: inside the file, all pages direct
            if desc.pgoff + desc.nr_pages > self.nr_pages:
                raise MmapError("mapping extends beyond the end of the file", errno=errno.EINVAL)
            if flags & VmFlags.VM_WRITE and not flags & VmFlags.VM_SHARED:
                return  # private writable: always a copy
            start, k = block_range(bm, desc.pgoff, desc.nr_pages)
            if k == desc.nr_pages and k and (flash.phys_base + start) % 4 == 0:
                desc.map_in_place(flash, start)
            return
        if flags & VmFlags.VM_WRITE:
            return
        if desc.pgoff >= self.nr_pages:
            return
        pages = min(desc.nr_pages, self.nr_pages - desc.pgoff)
        start, k = block_range(bm, desc.pgoff, pages)
        if not k or (flash.phys_base + start) % CRAMFS_BLOCK_SIZE:
            return
        if self._tail_shared(start, k, desc.pgoff):
            k -= 1
        if not k:
            return
        pfn = flash.pfn_of(start)
        if k == desc.nr_pages:
            desc.vm_flags |= VmFlags.VM_PFNMAP | VmFlags.VM_IO | VmFlags.VM_DONTEXPAND
        else:
            desc.vm_flags |= VmFlags.VM_MIXEDMAP
        desc.remap_pfn_range(0, flash, pfn, k)
