"""mmap(2) of a file into a simulated process, through the file's ``mmap_prepare``.

:meth:`AddressSpace.mmap` follows the kernel's order: compute the VMA flags
from ``prot``/``flags`` (``VM_MAYWRITE`` only for private mappings or
writable files), build a :class:`VmAreaDesc` and hand it to the file's
``mmap_prepare(desc)``.  The file may change only ``vm_flags`` (within
:data:`PREPARE_SETTABLE`/:data:`PREPARE_CLEARABLE`), ``page_prot`` and
``ops``, and may ask for PFN remaps of flash with
:meth:`VmAreaDesc.remap_pfn_range`; any other change is refused with
:class:`MmapPrepareError` naming the field.

What a mapping costs in arena frames:

* with an MMU, remapped PFNs cost nothing (no ``struct page``); other pages
  fault through ``ops.fault`` into page-cache frames; a write to a private
  mapping copies the page (from a raw PFN or a page-cache page) into a new
  arena frame (COW from a raw PFN as ``VM_MIXEDMAP`` allows, reference
  section 12);
* without an MMU there is no paging: a range the file remaps whole is used
  in place; otherwise a private mapping gets one contiguous copy of the whole
  range (``alloc_pages_exact``, which fails under fragmentation: ENOMEM) and a
  shared one fails with ENODEV (mm/nommu.c).
"""

from __future__ import annotations

import enum
import errno as _errno
import mmap as _mmap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, Protocol

from mmshim._arena import Arena
from mmshim._errors import AllocError, MmshimError
from mmshim._page import PAGE_SIZE, Owner, Page, Pfn
from mmshim.flash import Flash

PROT_READ: Final = _mmap.PROT_READ
PROT_WRITE: Final = _mmap.PROT_WRITE
PROT_EXEC: Final = _mmap.PROT_EXEC
MAP_SHARED: Final = _mmap.MAP_SHARED
MAP_PRIVATE: Final = _mmap.MAP_PRIVATE


class VmFlags(enum.IntFlag):
    """The kernel's VM_* bits (include/linux/mm.h values)."""

    VM_READ = 0x1
    VM_WRITE = 0x2
    VM_EXEC = 0x4
    VM_SHARED = 0x8
    VM_MAYREAD = 0x10
    VM_MAYWRITE = 0x20
    VM_MAYEXEC = 0x40
    VM_MAYSHARE = 0x80
    VM_PFNMAP = 0x400
    VM_IO = 0x4000
    VM_DONTEXPAND = 0x40000
    VM_DONTDUMP = 0x4000000
    VM_MIXEDMAP = 0x10000000


PREPARE_SETTABLE: Final = (
    VmFlags.VM_PFNMAP
    | VmFlags.VM_MIXEDMAP
    | VmFlags.VM_IO
    | VmFlags.VM_DONTEXPAND
    | VmFlags.VM_DONTDUMP
)
PREPARE_CLEARABLE: Final = VmFlags.VM_MAYWRITE


class MmapError(MmshimError):
    """mmap or an access through a mapping failed; ``errno`` says how."""

    def __init__(self, message: str, *, errno: int) -> None:
        super().__init__(message)
        self.errno_value = errno

    @property
    def code(self) -> int:
        return self.errno_value


class MmapPrepareError(MmapError):
    """``mmap_prepare`` changed a field it may not change."""


class MmapFile(Protocol):
    """What :meth:`AddressSpace.mmap` needs of a file."""

    @property
    def size(self) -> int: ...

    @property
    def writable(self) -> bool: ...

    def mmap_prepare(self, desc: VmAreaDesc) -> None:
        """Adjust ``desc`` (permitted fields only) or raise MmapError to refuse."""

    def fault(self, pgoff: int) -> Page:
        """The page-cache page at file page ``pgoff``, with a reference for the caller."""

    def read_into(self, offset: int, dest: memoryview) -> int:
        """Copy file bytes from ``offset`` into ``dest``; returns bytes copied (short at EOF)."""


class VmOperations(Protocol):
    def fault(self, pgoff: int) -> Page: ...


@dataclass(frozen=True, slots=True)
class PfnRemap:
    """Map ``nr_pages`` flash frames from ``pfn`` at page ``index`` of the VMA."""

    index: int
    flash: Flash
    pfn: Pfn
    nr_pages: int


@dataclass(slots=True)
class VmAreaDesc:
    """The VMA being set up, as ``mmap_prepare`` sees it (``struct vm_area_desc``)."""

    start: int
    end: int
    pgoff: int
    vm_flags: VmFlags
    page_prot: int
    ops: VmOperations | None
    file: MmapFile
    mmu: bool  # read-only information: whether the machine has an MMU
    remaps: list[PfnRemap] = field(default_factory=list)
    in_place: tuple[Flash, int] | None = None  # no MMU: (flash, byte offset) used as the mapping

    @property
    def nr_pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE

    def remap_pfn_range(self, index: int, flash: Flash, pfn: int, nr_pages: int) -> None:
        """Ask for flash PFNs ``pfn ..`` to be mapped at VMA page ``index ..``."""
        if nr_pages <= 0 or index < 0 or index + nr_pages > self.nr_pages:
            raise MmapPrepareError(
                f"remap of {nr_pages} pages at page {index} outside a {self.nr_pages}-page VMA",
                errno=_errno.EINVAL,
            )
        if not flash.contains(pfn, nr_pages):
            raise MmapPrepareError(
                f"remap of pfn {pfn:#x}+{nr_pages} outside the flash", errno=_errno.EINVAL
            )
        self.remaps.append(PfnRemap(index, flash, Pfn(pfn), nr_pages))

    def map_in_place(self, flash: Flash, offset: int) -> None:
        """No MMU: the mapping *is* flash bytes ``offset ..`` (``NOMMU_MAP_DIRECT``);
        the file vouches that they hold the whole range contiguously."""
        if self.mmu:
            raise MmapPrepareError(
                "map_in_place needs a machine without an MMU", errno=_errno.EINVAL
            )
        if offset < 0 or offset + self.nr_pages * PAGE_SIZE > flash.size + PAGE_SIZE - 1:
            raise MmapPrepareError(
                f"in-place range at {offset:#x} outside the flash", errno=_errno.EINVAL
            )
        self.in_place = (flash, offset)


@dataclass(frozen=True, slots=True)
class _Raw:
    """A PTE pointing at a flash frame: no struct page, no reference."""

    flash: Flash
    pfn: Pfn


@dataclass(frozen=True, slots=True)
class _Ram:
    """A PTE pointing at an arena frame we hold a reference to."""

    page: Page
    anon: bool  # a private copy (ours), or a page-cache page (shared with the cache)


_Pte = _Raw | _Ram | None


class Vma:
    """One mapping made by :meth:`AddressSpace.mmap`."""

    def __init__(self, space: AddressSpace, desc: VmAreaDesc, prot: int, kind: str) -> None:
        self.space = space
        self.arena = space.arena
        self.start = desc.start
        self.end = desc.end
        self.pgoff = desc.pgoff
        self.vm_flags = desc.vm_flags
        self.prot = prot
        self.kind = kind  # "pfnmap", "mixedmap", "pagecache", "nommu-direct", "nommu-copy"
        self.file = desc.file
        self.ops: VmOperations = desc.ops if desc.ops is not None else desc.file
        self.nr_pages = desc.nr_pages
        self._ptes: list[_Pte] = [None] * self.nr_pages
        self._copy: list[Page] = []  # nommu: the contiguous private copy
        self._direct: tuple[Flash, int] | None = None  # nommu: (flash, byte offset) used in place
        self.cow_faults = 0
        self.faults = 0
        self.closed = False
        for r in desc.remaps:
            for i in range(r.nr_pages):
                self._ptes[r.index + i] = _Raw(r.flash, Pfn(r.pfn + i))

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def shared(self) -> bool:
        return bool(self.vm_flags & VmFlags.VM_SHARED)

    def _check(self, offset: int, length: int) -> None:
        if self.closed:
            raise MmapError(f"mapping at {self.start:#x} is unmapped", errno=_errno.EFAULT)
        if offset < 0 or length < 0 or offset + length > self.length:
            raise MmapError(
                f"access [{offset:#x}, +{length}) outside the {self.length}-byte mapping",
                errno=_errno.EFAULT,
            )

    # -- MMU ----------------------------------------------------------------

    def _fault(self, index: int) -> _Raw | _Ram:
        pte = self._ptes[index]
        if pte is not None:
            return pte
        if self.vm_flags & VmFlags.VM_PFNMAP:
            raise MmapError(f"SIGBUS: page {index} of a PFN map not mapped", errno=_errno.EFAULT)
        pgoff = self.pgoff + index
        if pgoff * PAGE_SIZE >= self.file.size:
            raise MmapError(
                f"SIGBUS: page {pgoff} is beyond the end of the file", errno=_errno.EFAULT
            )
        page = self.ops.fault(pgoff)
        self.faults += 1
        new = _Ram(page, anon=False)
        self._ptes[index] = new
        return new

    def _page_bytes(self, pte: _Raw | _Ram) -> bytes:
        if isinstance(pte, _Raw):
            return pte.flash.read(pte.pfn)
        return bytes(self.arena.page_view(pte.page))

    def _cow(self, index: int) -> _Ram:
        pte = self._fault(index)
        if isinstance(pte, _Ram) and pte.anon:
            return pte
        try:
            page = self.arena.alloc_pages(0, Owner.OTHER)
        except AllocError as e:
            raise MmapError(f"copy on write of page {index}: {e}", errno=_errno.ENOMEM) from e
        self.arena.page_view(page)[:] = self._page_bytes(pte)
        if isinstance(pte, _Ram):
            self.arena.put_page(pte.page)
        new = _Ram(page, anon=True)
        self._ptes[index] = new
        self.cow_faults += 1
        return new

    # -- access ---------------------------------------------------------------

    def read(self, offset: int, length: int) -> bytes:
        """Load ``length`` bytes at ``offset`` into the mapping (faulting pages in)."""
        self._check(offset, length)
        if not self.prot & PROT_READ:
            raise MmapError("SIGSEGV: read of a mapping without PROT_READ", errno=_errno.EACCES)
        if not self.space.mmu:
            return self._nommu_read(offset, length)
        out = bytearray()
        pos = offset
        while pos < offset + length:
            index, inpage = divmod(pos, PAGE_SIZE)
            n = min(PAGE_SIZE - inpage, offset + length - pos)
            pte = self._fault(index)
            if isinstance(pte, _Raw):
                out += pte.flash.read(pte.pfn, inpage, n)
            else:
                out += self.arena.page_view(pte.page)[inpage : inpage + n]
            pos += n
        return bytes(out)

    def write(self, offset: int, data: bytes) -> None:
        """Store ``data`` at ``offset``; private mappings copy on write."""
        self._check(offset, len(data))
        if not self.prot & PROT_WRITE:
            raise MmapError("SIGSEGV: write to a mapping without PROT_WRITE", errno=_errno.EACCES)
        if not self.space.mmu:
            self._nommu_write(offset, data)
            return
        pos = 0
        while pos < len(data):
            index, inpage = divmod(offset + pos, PAGE_SIZE)
            n = min(PAGE_SIZE - inpage, len(data) - pos)
            if self.shared:
                pte = self._fault(index)
                if isinstance(pte, _Raw):
                    raise MmapError(
                        "SIGBUS: write to flash through a shared mapping", errno=_errno.EFAULT
                    )
                pte.page.set_dirty()
            else:
                pte = self._cow(index)
            self.arena.page_view(pte.page)[inpage : inpage + n] = data[pos : pos + n]
            pos += n

    def populate(self) -> None:
        """Fault every page in (``MAP_POPULATE``; what a loader's reads amount to)."""
        self._check(0, 0)
        if not self.space.mmu:
            return
        last = min(
            self.nr_pages, max(0, (self.file.size + PAGE_SIZE - 1) // PAGE_SIZE - self.pgoff)
        )
        for i in range(last):
            self._fault(i)

    def mprotect(self, prot: int) -> None:
        """Change the protection; adding PROT_WRITE needs VM_MAYWRITE."""
        self._check(0, 0)
        if prot & PROT_WRITE and not self.vm_flags & VmFlags.VM_MAYWRITE:
            raise MmapError("mprotect(PROT_WRITE) without VM_MAYWRITE", errno=_errno.EACCES)
        if not self.space.mmu and prot & PROT_WRITE and self._direct is not None:
            raise MmapError(
                "mprotect(PROT_WRITE) of flash used in place (no MMU)", errno=_errno.EACCES
            )
        self.prot = prot
        self.vm_flags = (
            self.vm_flags & ~(VmFlags.VM_READ | VmFlags.VM_WRITE | VmFlags.VM_EXEC)
        ) | _prot_flags(prot)

    # -- no MMU ----------------------------------------------------------------

    def _nommu_read(self, offset: int, length: int) -> bytes:
        if self._direct is not None:
            flash, base = self._direct
            avail = max(0, min(length, flash.size - base - offset))
            return flash.read_bytes(base + offset, avail) + bytes(length - avail)
        return bytes(self.arena.contig_view(self._copy)[offset : offset + length])

    def _nommu_write(self, offset: int, data: bytes) -> None:
        if self._direct is not None:
            raise MmapError("SIGSEGV: write to flash used in place", errno=_errno.EACCES)
        self.arena.contig_view(self._copy)[offset : offset + len(data)] = data

    # -- accounting ---------------------------------------------------------------

    @property
    def direct_pages(self) -> int:
        """Pages mapped straight from flash (no arena frame)."""
        if self._direct is not None:
            return self.nr_pages
        return sum(isinstance(p, _Raw) for p in self._ptes)

    @property
    def frames(self) -> int:
        """Arena frames this mapping holds: private copies and page-cache pages it maps."""
        return len(self._copy) + sum(isinstance(p, _Ram) for p in self._ptes)

    @property
    def anon_frames(self) -> int:
        return len(self._copy) + sum(isinstance(p, _Ram) and p.anon for p in self._ptes)

    def munmap(self) -> None:
        if self.closed:
            return
        self.closed = True
        for i, pte in enumerate(self._ptes):
            if isinstance(pte, _Ram):
                self.arena.put_page(pte.page)
            self._ptes[i] = None
        if self._copy:
            self.arena.free_pages_exact(self._copy)
            self._copy = []
        self.space._forget(self)

    def __enter__(self) -> Vma:
        return self

    def __exit__(self, *exc: object) -> None:
        self.munmap()

    def __repr__(self) -> str:
        return (
            f"<Vma {self.start:#x}-{self.end:#x} {self.kind} pgoff {self.pgoff}"
            f" direct {self.direct_pages} frames {self.frames}>"
        )


def _prot_flags(prot: int) -> VmFlags:
    f = VmFlags(0)
    if prot & PROT_READ:
        f |= VmFlags.VM_READ
    if prot & PROT_WRITE:
        f |= VmFlags.VM_WRITE
    if prot & PROT_EXEC:
        f |= VmFlags.VM_EXEC
    return f


class AddressSpace:
    """A simulated process's mappings (``struct mm_struct``) over one arena."""

    MMAP_BASE: Final = 0x4000_0000

    def __init__(self, arena: Arena) -> None:
        self.arena = arena
        self.mmu = arena.mode == "mmu"
        self._next = self.MMAP_BASE
        self._vmas: list[Vma] = []

    def __iter__(self) -> Iterator[Vma]:
        return iter(list(self._vmas))

    def _forget(self, vma: Vma) -> None:
        if vma in self._vmas:
            self._vmas.remove(vma)

    def mmap(self, file: MmapFile, offset: int, length: int, prot: int, flags: int) -> Vma:
        """Map ``length`` bytes of ``file`` from page-aligned ``offset``."""
        if length <= 0 or offset < 0 or offset % PAGE_SIZE:
            raise MmapError(f"mmap(offset={offset}, length={length}): invalid", errno=_errno.EINVAL)
        shared = flags & MAP_SHARED == MAP_SHARED and not flags & MAP_PRIVATE
        if not shared and not flags & MAP_PRIVATE:
            raise MmapError("mmap needs MAP_SHARED or MAP_PRIVATE", errno=_errno.EINVAL)
        vm_flags = _prot_flags(prot) | VmFlags.VM_MAYREAD | VmFlags.VM_MAYEXEC
        if shared:
            vm_flags |= VmFlags.VM_SHARED | VmFlags.VM_MAYSHARE
            if file.writable:
                vm_flags |= VmFlags.VM_MAYWRITE
            elif prot & PROT_WRITE:
                raise MmapError("MAP_SHARED|PROT_WRITE of a read-only file", errno=_errno.EACCES)
        else:
            vm_flags |= VmFlags.VM_MAYWRITE
        nr_pages = (length + PAGE_SIZE - 1) // PAGE_SIZE
        start = self._next
        desc = VmAreaDesc(
            start=start,
            end=start + nr_pages * PAGE_SIZE,
            pgoff=offset // PAGE_SIZE,
            vm_flags=vm_flags,
            page_prot=prot,
            ops=None,
            file=file,
            mmu=self.mmu,
        )
        before = (desc.start, desc.end, desc.pgoff, desc.file, desc.mmu)
        file.mmap_prepare(desc)
        self._check_prepare(before, vm_flags, desc)
        vma = self._nommu_setup(desc, prot, shared) if not self.mmu else self._mmu_setup(desc, prot)
        self._next = vma.end + PAGE_SIZE  # a guard page between mappings
        self._vmas.append(vma)
        return vma

    @staticmethod
    def _check_prepare(before: tuple[object, ...], old_flags: VmFlags, desc: VmAreaDesc) -> None:
        for name, old in zip(("start", "end", "pgoff", "file", "mmu"), before, strict=False):
            if getattr(desc, name) is not old and getattr(desc, name) != old:
                raise MmapPrepareError(f"mmap_prepare changed {name}", errno=_errno.EINVAL)
        added = desc.vm_flags & ~old_flags
        removed = old_flags & ~desc.vm_flags
        if added & ~PREPARE_SETTABLE:
            raise MmapPrepareError(
                f"mmap_prepare set vm_flags {VmFlags(added & ~PREPARE_SETTABLE)!r}",
                errno=_errno.EINVAL,
            )
        if removed & ~PREPARE_CLEARABLE:
            raise MmapPrepareError(
                f"mmap_prepare cleared vm_flags {VmFlags(removed & ~PREPARE_CLEARABLE)!r}",
                errno=_errno.EINVAL,
            )
        if (
            desc.remaps
            and not desc.vm_flags & (VmFlags.VM_PFNMAP | VmFlags.VM_MIXEDMAP)
            and desc.mmu
        ):
            raise MmapPrepareError(
                "mmap_prepare remapped PFNs without VM_PFNMAP or VM_MIXEDMAP", errno=_errno.EINVAL
            )
        if (
            desc.vm_flags & VmFlags.VM_PFNMAP
            and sum(r.nr_pages for r in desc.remaps) != desc.nr_pages
        ):
            raise MmapPrepareError(
                "VM_PFNMAP without a remap of the whole VMA", errno=_errno.EINVAL
            )

    def _mmu_setup(self, desc: VmAreaDesc, prot: int) -> Vma:
        if desc.vm_flags & VmFlags.VM_PFNMAP:
            kind = "pfnmap"
        elif desc.remaps:
            kind = "mixedmap"
        else:
            kind = "pagecache"
        return Vma(self, desc, prot, kind)

    def _nommu_setup(self, desc: VmAreaDesc, prot: int, shared: bool) -> Vma:
        private_write = not shared and prot & PROT_WRITE
        if desc.remaps:
            raise MmapPrepareError("PFN remaps need an MMU; use map_in_place", errno=_errno.EINVAL)
        if desc.in_place is not None and not private_write:
            flash, base = desc.in_place
            vma = Vma(self, desc, prot, "nommu-direct")
            vma._direct = (flash, base)
            vma.start = flash.phys_base + base
            vma.end = vma.start + desc.nr_pages * PAGE_SIZE
            return vma
        if shared:
            raise MmapError(
                "MAP_SHARED without an MMU needs data mappable in place (ENODEV)",
                errno=_errno.ENODEV,
            )
        try:
            pages = self.arena.alloc_pages_exact(desc.nr_pages, Owner.OTHER)
        except AllocError as e:
            raise MmapError(
                f"no contiguous {desc.nr_pages}-page block for a private copy: {e}",
                errno=_errno.ENOMEM,
            ) from e
        view = self.arena.contig_view(pages)
        try:
            n = desc.file.read_into(desc.pgoff * PAGE_SIZE, view)
            view[n:] = bytes(len(view) - n)
        except BaseException:
            self.arena.free_pages_exact(pages)
            raise
        vma = Vma(self, desc, prot, "nommu-copy")
        vma._copy = pages
        vma.start = pages[0].pfn * PAGE_SIZE
        vma.end = vma.start + desc.nr_pages * PAGE_SIZE
        return vma

    def close(self) -> None:
        """Unmap everything (process exit)."""
        for vma in list(self._vmas):
            vma.munmap()


def mmap(
    space: AddressSpace, file: MmapFile, offset: int, length: int, prot: int, flags: int
) -> Vma:
    """``space.mmap(...)``: map a file the way the kernel's mmap path does."""
    return space.mmap(file, offset, length, prot, flags)
