"""MicroLZMA, the LZMA form EROFS stores (``-z lzma``), from liblzma.

Python's :mod:`lzma` cannot write it: MicroLZMA is a raw LZMA1 stream with no
end-of-payload marker whose first byte (always 0 in LZMA1) is replaced by the
bitwise NOT of the lc/lp/pb properties byte, and EROFS needs the encoder to
stop when a fixed output size is full.  liblzma (5.4 and later; Debian
``liblzma5``) has exactly that encoder, ``lzma_microlzma_encoder``, made for
EROFS; erofs-utils calls it in ``lib/compressor_liblzma.c``.  This module
binds it with ctypes, loaded on first use.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Iterator
from typing import Final

from mkimage.errors import BuildError

LZMA_PRESET_DEFAULT: Final = 6
LZMA_PRESET_EXTREME: Final = 0x80000000
LZMA_FINISH: Final = 3
LZMA_STREAM_END: Final = 1
MISSING: Final = "-z lzma needs liblzma 5.4 or later (Debian package liblzma5)"


class _Stream(ctypes.Structure):
    """``lzma_stream`` (base.h); LZMA_STREAM_INIT is all zeros."""

    _fields_ = [
        ("next_in", ctypes.c_void_p),
        ("avail_in", ctypes.c_size_t),
        ("total_in", ctypes.c_uint64),
        ("next_out", ctypes.c_void_p),
        ("avail_out", ctypes.c_size_t),
        ("total_out", ctypes.c_uint64),
        ("allocator", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
        ("reserved_ptr", ctypes.c_void_p * 4),
        ("seek_pos", ctypes.c_uint64),
        ("reserved_int2", ctypes.c_uint64),
        ("reserved_int3", ctypes.c_size_t),
        ("reserved_int4", ctypes.c_size_t),
        ("reserved_enum", ctypes.c_int * 2),
    ]


class _Options(ctypes.Structure):
    """``lzma_options_lzma`` (lzma12.h)."""

    _fields_ = [
        ("dict_size", ctypes.c_uint32),
        ("preset_dict", ctypes.c_void_p),
        ("preset_dict_size", ctypes.c_uint32),
        ("lc", ctypes.c_uint32),
        ("lp", ctypes.c_uint32),
        ("pb", ctypes.c_uint32),
        ("mode", ctypes.c_int),
        ("nice_len", ctypes.c_uint32),
        ("mf", ctypes.c_int),
        ("depth", ctypes.c_uint32),
        ("ext_flags", ctypes.c_uint32),
        ("ext_size_low", ctypes.c_uint32),
        ("ext_size_high", ctypes.c_uint32),
        ("reserved_int", ctypes.c_uint32 * 5),
        ("reserved_enum", ctypes.c_int * 4),
        ("reserved_ptr", ctypes.c_void_p * 2),
    ]


_lock: Final = threading.Lock()
_lib: list[ctypes.CDLL] = []


def _names() -> Iterator[str]:
    """The soname first; only then ldconfig's answer (find_library runs it
    in a subprocess, and importing it costs a build's start-up 6 ms)."""
    yield "liblzma.so.5"
    from ctypes.util import find_library

    name = find_library("lzma")
    if name:
        yield name


def _library() -> ctypes.CDLL:
    """liblzma with the four functions typed, loaded once (BuildError if absent)."""
    with _lock:
        if _lib:
            return _lib[0]
        for name in _names():
            try:
                lib = ctypes.CDLL(name)
                encoder = lib.lzma_microlzma_encoder
            except (OSError, AttributeError):
                continue
            encoder.argtypes = [ctypes.POINTER(_Stream), ctypes.POINTER(_Options)]
            encoder.restype = ctypes.c_int
            lib.lzma_code.argtypes = [ctypes.POINTER(_Stream), ctypes.c_int]
            lib.lzma_code.restype = ctypes.c_int
            lib.lzma_end.argtypes = [ctypes.POINTER(_Stream)]
            lib.lzma_end.restype = None
            lib.lzma_lzma_preset.argtypes = [ctypes.POINTER(_Options), ctypes.c_uint32]
            lib.lzma_lzma_preset.restype = ctypes.c_int  # lzma_bool: non-zero on error
            _lib.append(lib)
            return lib
        raise BuildError(MISSING)


def require() -> None:
    """Load liblzma now, so a missing one fails before the build starts."""
    _library()


def preset(level: int) -> int:
    """erofs-utils' levels: 0-9 normal, 100-109 the same presets "extreme"."""
    return level - 100 | LZMA_PRESET_EXTREME if level >= 100 else level


class MicroLzmaCompressor:
    """Fixed-output MicroLZMA compression from one bound buffer, one per
    thread (the same ``bind`` / ``compress`` as the LZ4 one)."""

    def __init__(self, dst_capacity: int, level: int, dict_size: int) -> None:
        self._lib = _library()
        self._opts = _Options()
        if self._lib.lzma_lzma_preset(ctypes.byref(self._opts), preset(level)):
            raise BuildError(f"-z lzma: no preset for level {level}")
        self._opts.dict_size = dict_size
        self._strm = _Stream()
        self.capacity = dst_capacity
        self._out = ctypes.create_string_buffer(max(dst_capacity, 1))
        self._src = bytearray()

    def __del__(self) -> None:
        lib = getattr(self, "_lib", None)
        if lib is not None:
            lib.lzma_end(ctypes.byref(self._strm))

    def bind(self, src: bytearray) -> None:
        self._src = src

    def compress(self, pos: int, end: int, cap: int) -> tuple[bytes, int]:
        """(stream, consumed): as much of ``src[pos:end]`` as fits ``cap`` bytes."""
        if not 0 <= pos <= end <= len(self._src) or cap > self.capacity:
            raise ValueError("destsize range outside the bound buffer")
        if end == pos:
            return b"", 0
        # its first byte is enough for the address (an array type per length
        # would be a new ctypes type, cached forever, for every pcluster)
        src = ctypes.c_char.from_buffer(self._src, pos)
        s = self._strm
        if self._lib.lzma_microlzma_encoder(ctypes.byref(s), ctypes.byref(self._opts)):
            raise BuildError("-z lzma: liblzma refused the MicroLZMA options")
        s.next_in, s.avail_in = ctypes.addressof(src), end - pos
        s.next_out, s.avail_out = ctypes.addressof(self._out), cap
        ret = self._lib.lzma_code(ctypes.byref(s), LZMA_FINISH)
        if ret != LZMA_STREAM_END:
            raise BuildError(f"-z lzma: liblzma failed to encode (lzma_ret {ret})")
        del src  # the bytearray may be resized again once no view of it is left
        return ctypes.string_at(self._out, s.total_out), int(s.total_in)
