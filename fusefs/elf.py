"""Just enough ELF to choose execute-in-place files and to load programs.

The writer uses :func:`is_elf_program` (executables and shared objects) to
pick files for XIP; the loader simulation maps each ``PT_LOAD`` segment from
:func:`load_segments`.  Both ELF classes and byte orders; every field read
is bounds-checked against the bytes given.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

ELF_MAGIC: Final = b"\x7fELF"
ET_EXEC: Final = 2
ET_DYN: Final = 3
PT_LOAD: Final = 1
PF_X: Final = 1
PF_W: Final = 2
PF_R: Final = 4


@dataclass(frozen=True, slots=True)
class Segment:
    """A ``PT_LOAD`` program header."""

    offset: int
    vaddr: int
    filesz: int
    memsz: int
    flags: int

    @property
    def writable(self) -> bool:
        return bool(self.flags & PF_W)


def _header(data: bytes) -> tuple[str, bool, int] | None:
    """(struct byte-order prefix, is 64-bit, e_type) of an ELF header, or None."""
    if len(data) < 52 or data[:4] != ELF_MAGIC or data[4] not in (1, 2) or data[5] not in (1, 2):
        return None
    order = "<" if data[5] == 1 else ">"
    (e_type,) = struct.unpack_from(order + "H", data, 16)
    return order, data[4] == 2, e_type


def is_elf_program(head: bytes) -> bool:
    """True for an ELF executable or shared object (``head``: the file's first 64+ bytes)."""
    h = _header(head)
    return h is not None and h[2] in (ET_EXEC, ET_DYN)


def _program_headers(data: bytes) -> tuple[str, bool, int, int, int] | None:
    """(order, is 64-bit, e_phoff, e_phentsize, e_phnum) of an ELF header, or None."""
    h = _header(data)
    if h is None:
        return None
    order, is64, _ = h
    if is64:
        if len(data) < 64:
            return None
        (phoff,) = struct.unpack_from(order + "Q", data, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 54)
    else:
        (phoff,) = struct.unpack_from(order + "I", data, 28)
        phentsize, phnum = struct.unpack_from(order + "HH", data, 42)
    return order, is64, phoff, phentsize, phnum


def headers_end(data: bytes) -> int:
    """How many leading bytes of the file hold the ELF header and its program
    headers (``len(data)`` when ``data`` is not ELF): what a loader reads first."""
    h = _program_headers(data)
    if h is None:
        return len(data)
    _, is64, phoff, phentsize, phnum = h
    return max(64 if is64 else 52, phoff + phnum * phentsize)


def load_segments(data: bytes, file_size: int | None = None) -> list[Segment]:
    """The ``PT_LOAD`` segments of an ELF file (empty if it is not ELF or is malformed).

    ``data`` holds at least the first :func:`headers_end` bytes; segments are
    checked against ``file_size`` (default ``len(data)``)."""
    h = _program_headers(data)
    if h is None:
        return []
    order, is64, phoff, phentsize, phnum = h
    ph = struct.Struct(order + ("IIQQQQQQ" if is64 else "IIIIIIII"))
    if phentsize < ph.size or phoff + phnum * phentsize > len(data):
        return []
    size = len(data) if file_size is None else file_size
    out = []
    for i in range(phnum):
        f = ph.unpack_from(data, phoff + i * phentsize)
        if f[0] != PT_LOAD:
            continue
        if is64:
            _t, flags, off, vaddr, _pa, filesz, memsz, _al = f
        else:
            _t, off, vaddr, _pa, filesz, memsz, flags, _al = f
        if off + filesz > size or memsz < filesz:
            return []
        out.append(Segment(off, vaddr, filesz, memsz, flags))
    return out
