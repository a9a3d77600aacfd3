"""A program-loader simulation: map every ELF program of an image as binfmt_elf would.

Format-neutral: any :class:`~fusefs.vfs.Filesystem` whose capabilities say
``mmap`` (its ``mappable(ino)`` returns an :class:`mmshim.mmap.MmapFile`
over its arena; cramfs has it) can be measured.  For each ELF executable
or shared object, every ``PT_LOAD`` segment is mapped ``MAP_PRIVATE`` with
its protection; read-only segments are populated (the program runs through
its text), writable ones get every page written once (relocations,
``.data`` updates), which copies on write.  The report gives the arena
frames each file holds while mapped: XIP text mapped from flash costs none.
Each "process" is unmapped before the next.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from fusefs.elf import PF_R, PF_W, PF_X, headers_end, is_elf_program, load_segments
from fusefs.errors import Allocation, FsError, OutOfMemoryError, UnsupportedFeatureError
from fusefs.names import escape
from fusefs.vfs import Filesystem, Ino, walk
from mmshim import PAGE_SIZE, AllocError
from mmshim.mmap import (
    MAP_PRIVATE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    AddressSpace,
    MmapError,
    MmapFile,
)


@dataclass(slots=True)
class SegmentReport:
    offset: int
    pages: int
    prot: str
    kind: str  # how mmshim mapped it: pfnmap, mixedmap, pagecache, nommu-direct, nommu-copy
    direct_pages: int
    frames: int  # arena frames held by this mapping (page cache + private copies)


@dataclass(slots=True)
class ExecReport:
    """One program: the frames its mappings hold, per segment and in total."""

    path: str
    size: int
    segments: list[SegmentReport] = field(default_factory=list)
    error: str | None = None  # e.g. ENOMEM for a nommu copy in a fragmented arena
    # where it failed: the segment (file offset, bytes, protection) and, for an
    # ENOMEM, the allocation that failed (as the arena saw it)
    failed_segment: tuple[int, int, str] | None = None
    allocation: Allocation | None = None

    @property
    def frames(self) -> int:
        return sum(s.frames for s in self.segments)

    @property
    def text_frames(self) -> int:
        return sum(s.frames for s in self.segments if "w" not in s.prot)

    @property
    def direct_pages(self) -> int:
        return sum(s.direct_pages for s in self.segments)


def _prot(flags: int) -> int:
    prot = 0
    if flags & PF_R:
        prot |= PROT_READ
    if flags & PF_W:
        prot |= PROT_WRITE
    if flags & PF_X:
        prot |= PROT_EXEC
    return prot


def _prot_str(prot: int) -> str:
    return "".join(
        c if prot & b else "-" for c, b in (("r", PROT_READ), ("w", PROT_WRITE), ("x", PROT_EXEC))
    )


def _allocation(fs: Filesystem, e: Exception, what: str) -> Allocation | None:
    """The failed allocation behind ``e``: the read path's own, or the arena's
    AllocError behind an mmap ENOMEM (a private copy, a copy on write)."""
    if isinstance(e, OutOfMemoryError):
        return e.allocation
    cause = e.__cause__
    if isinstance(cause, AllocError):
        return fs.mem.allocation(what, cause.order, 1, cause)
    return None


def map_executables(fs: Filesystem) -> list[ExecReport]:
    """Map every ELF program of ``fs`` in turn and report the arena frames each holds."""
    if not fs.capabilities.mmap:
        raise UnsupportedFeatureError(
            f"{fs.format_name}: files cannot be mmapped, so no program can be loaded"
        )
    reports = []
    for item in walk(fs):
        if not stat.S_ISREG(item.attr.mode) or not item.attr.mode & 0o111 or item.attr.size < 64:
            continue
        head = fs.read(item.ino, 0, PAGE_SIZE)
        if not is_elf_program(head):
            continue
        reports.append(_load(fs, fs.mappable(item.ino), item.path, item.attr.size, item.ino))
    return reports


def _load(fs: Filesystem, file: MmapFile, path: bytes, size: int, ino: Ino) -> ExecReport:
    report = ExecReport(escape(path), size)  # shown in messages: one escaping convention
    arena = fs.arena  # a mappable file maps through its image's arena
    # a loader reads the headers (normally all in the first page), not the file
    data = fs.read(ino, 0, min(size, PAGE_SIZE))
    if headers_end(data) > len(data):
        data = fs.read(ino, 0, min(size, headers_end(data)))
    space = AddressSpace(arena)
    start = length = prot = 0
    try:
        for seg in load_segments(data, size):
            if not seg.filesz:
                continue
            start = seg.offset - seg.offset % PAGE_SIZE
            length = seg.offset + seg.filesz - start
            prot = _prot(seg.flags)
            vma = space.mmap(file, start, length, prot, MAP_PRIVATE)
            if seg.writable:
                for page in range(vma.nr_pages):
                    off = page * PAGE_SIZE
                    vma.write(off, vma.read(off, 1))
            else:
                vma.populate()
            report.segments.append(
                SegmentReport(
                    start, vma.nr_pages, _prot_str(prot), vma.kind, vma.direct_pages, vma.frames
                )
            )
    except (MmapError, FsError) as e:
        report.error = str(e)
        report.failed_segment = (start, length, _prot_str(prot))
        report.allocation = _allocation(fs, e, f"frames for the {_prot_str(prot)} segment")
    finally:
        space.close()
    return report
