"""Flash (or ROM) mapped at a physical address: page frames without ``struct page``.

A :class:`Flash` is a PFN range over read-only bytes (an image file's
mapping).  Its frames have no page metadata and no reference counts; they are
never allocated, freed or put in a page cache (reference section 12: raw
flash frames are "special" PFNs).  A mapping may point at them directly
(``VM_PFNMAP``/``VM_MIXEDMAP``); a private write copies one into an ordinary
arena frame.
"""

from __future__ import annotations

from mmshim._errors import MmshimError
from mmshim._page import PAGE_SIZE, Pfn

# Where flash sits in the simulated physical address space: far above any
# arena's frames, page-aligned (a NOR flash window at 4 GiB).
DEFAULT_FLASH_BASE_PFN = Pfn(0x100000)


class Flash:
    """``data`` exposed as PFNs ``base_pfn .. base_pfn + nr_pages - 1``."""

    def __init__(self, data: memoryview | bytes, base_pfn: Pfn = DEFAULT_FLASH_BASE_PFN) -> None:
        self._data = memoryview(data).toreadonly()
        self.base_pfn = base_pfn
        self.size = len(self._data)
        self.nr_pages = (self.size + PAGE_SIZE - 1) // PAGE_SIZE
        self.bytes_read = 0

    @property
    def phys_base(self) -> int:
        return self.base_pfn * PAGE_SIZE

    def pfn_of(self, offset: int) -> Pfn:
        """The PFN of the page-aligned byte ``offset`` of the flash."""
        if offset % PAGE_SIZE or not 0 <= offset < self.size:
            raise MmshimError(f"flash offset {offset:#x} is not a page inside the flash")
        return Pfn(self.base_pfn + offset // PAGE_SIZE)

    def contains(self, pfn: int, nr_pages: int = 1) -> bool:
        return self.base_pfn <= pfn and pfn + nr_pages <= self.base_pfn + self.nr_pages

    def read(self, pfn: int, offset: int = 0, length: int = PAGE_SIZE) -> bytes:
        """Bytes of frame ``pfn`` (zeros past the end of the flash)."""
        if not self.contains(pfn) or not 0 <= offset <= offset + length <= PAGE_SIZE:
            raise MmshimError(f"flash read of pfn {pfn:#x} [{offset}, +{length}) outside the flash")
        start = (pfn - self.base_pfn) * PAGE_SIZE + offset
        out = bytes(self._data[start : start + length])
        self.bytes_read += length
        return out + bytes(length - len(out))

    def read_bytes(self, offset: int, length: int) -> bytes:
        """Bytes at flash byte ``offset`` (``read()`` served straight from flash, DAX style)."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise MmshimError(f"flash read [{offset:#x}, +{length}) outside the flash")
        self.bytes_read += length
        return bytes(self._data[offset : offset + length])

    def release(self) -> None:
        self._data.release()
