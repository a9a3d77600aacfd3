"""The few liblz4 entry points EROFS needs that python-lz4 does not expose.

* ``LZ4_decompress_safe_partial``: decode only a prefix of a block (EROFS
  partial decoding, images without 0PADDING, dedupe's PARTIAL_REF extents);
* ``LZ4_compress_destSize`` / ``LZ4_compress_HC_destSize``: compress as much
  input as fits in a fixed-size output (EROFS fixed-size output pclusters).

Loaded from the system's liblz4 (Debian ``liblz4-1``) through ctypes; both the
reader and the writer use this one module.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

from fusefs.errors import CorruptImageError, UnsupportedFeatureError

LZ4HC_CLEVEL_DEFAULT: Final = 9
LZ4HC_CLEVEL_MAX: Final = 12


def _load() -> ctypes.CDLL:
    for name in ("liblz4.so.1", ctypes.util.find_library("lz4")):
        if name:
            try:
                return ctypes.CDLL(name)
            except OSError:
                continue
    raise UnsupportedFeatureError("liblz4 is not installed (Debian package liblz4-1)")


_lib: Final = _load()
_c_char_p = ctypes.c_char_p
_int = ctypes.c_int
_intp = ctypes.POINTER(ctypes.c_int)

_lib.LZ4_decompress_safe.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _int, _int]
_lib.LZ4_decompress_safe.restype = _int
_lib.LZ4_decompress_safe_partial.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _int, _int, _int]
_lib.LZ4_decompress_safe_partial.restype = _int
_lib.LZ4_compress_destSize.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _intp, _int]
_lib.LZ4_compress_destSize.restype = _int
_lib.LZ4_compress_HC_destSize.argtypes = [
    ctypes.c_void_p,
    ctypes.c_void_p,
    ctypes.c_void_p,
    _intp,
    _int,
    _int,
]
_lib.LZ4_compress_HC_destSize.restype = _int
_lib.LZ4_sizeofStateHC.argtypes = []
_lib.LZ4_sizeofStateHC.restype = _int
_HC_STATE_SIZE: Final = _lib.LZ4_sizeofStateHC()


class _Buf:
    """The address of a buffer for C.  Writable buffers (bytearray, arena
    memoryviews, writable mmaps) are passed in place; read-only ones are copied
    once (ctypes cannot take the address of a read-only buffer)."""

    __slots__ = ("addr", "keep", "size")

    def __init__(self, buf: bytes | bytearray | memoryview, *, writable: bool = False) -> None:
        self.size = len(buf) if not isinstance(buf, memoryview) else buf.nbytes
        keep: object
        if isinstance(buf, bytes):
            if writable:
                raise TypeError("output buffer must be writable")
            keep = buf
            self.addr = ctypes.cast(_c_char_p(buf), ctypes.c_void_p).value or 0
        else:
            mv = memoryview(buf).cast("B")
            if mv.readonly:
                if writable:
                    raise TypeError("output buffer must be writable")
                copy = bytes(mv)
                keep = copy
                self.addr = ctypes.cast(_c_char_p(copy), ctypes.c_void_p).value or 0
            else:
                arr = (ctypes.c_char * self.size).from_buffer(mv) if self.size else None
                keep = (mv, arr)
                self.addr = ctypes.addressof(arr) if arr is not None else 0
        self.keep = keep


_addressof: Final = ctypes.addressof
_char_at: Final = ctypes.c_char.from_buffer
_decompress_safe: Final = _lib.LZ4_decompress_safe
_decompress_safe_partial: Final = _lib.LZ4_decompress_safe_partial


def _src_arg(buf: bytes | bytearray | memoryview) -> bytes | int:
    """``buf`` as an argument C can read: bytes as they are, a writable
    buffer by its address, a read-only view copied once."""
    if isinstance(buf, bytes):
        return buf
    mv = memoryview(buf)
    if mv.readonly or not mv.nbytes:
        return bytes(mv)
    return _addressof(_char_at(mv))


def decompress_into(
    src: bytes | bytearray | memoryview, dst: bytearray | memoryview, *, partial: bool
) -> int:
    """Decode one raw LZ4 block from ``src`` into ``dst``; returns bytes written.

    ``partial=False``: the block must decode to exactly ``len(dst)`` bytes
    (EROFS with 0PADDING, full extent).  ``partial=True``: stop once ``dst`` is
    full, ignoring the rest of the block (``LZ4_decompress_safe_partial``).
    Raises CorruptImageError (without a location: the caller adds it) on a
    malformed block.  No wrapper object is built: the buffers are passed by
    address (the caller keeps them alive for the call, as it does anyway).
    """
    slen, dlen = len(src), len(dst)
    if not dlen:
        return 0
    if isinstance(dst, memoryview) and dst.readonly:
        raise TypeError("output buffer must be writable")
    d = _addressof(_char_at(dst))
    s = _src_arg(src)
    if partial:
        n = _decompress_safe_partial(s, d, slen, dlen, dlen)
    else:
        n = _decompress_safe(s, d, slen, dlen)
    if n < 0 or (not partial and n != dlen):
        raise CorruptImageError(
            f"lz4 block of {slen} bytes does not decode to {dlen} bytes (liblz4 said {n})"
        )
    return int(n)


def compress_destsize(
    src: bytes | bytearray | memoryview, dst_capacity: int, level: int | None = None
) -> tuple[bytes, int]:
    """Compress as much of ``src`` as fits in ``dst_capacity`` bytes.

    Returns ``(compressed_block, bytes_of_src_consumed)``.  ``level`` None uses
    the fast compressor (``-z lz4``), otherwise LZ4HC at that level (``-z lz4hc,N``).
    """
    s = _Buf(src)
    out = ctypes.create_string_buffer(max(dst_capacity, 1))
    consumed = ctypes.c_int(s.size)
    if level is None:
        n = _lib.LZ4_compress_destSize(
            s.addr, ctypes.addressof(out), ctypes.byref(consumed), dst_capacity
        )
    else:
        state = ctypes.create_string_buffer(_HC_STATE_SIZE)
        n = _lib.LZ4_compress_HC_destSize(
            ctypes.addressof(state),
            s.addr,
            ctypes.addressof(out),
            ctypes.byref(consumed),
            dst_capacity,
            level,
        )
    if n <= 0:
        return b"", 0
    return out.raw[:n], int(consumed.value)


class DestSizeCompressor:
    """Repeated destsize compression from one writable buffer, for writers.

    :func:`compress_destsize` pays for a fresh ctypes view and output buffer
    per call; a writer cutting a file into thousands of pclusters keeps one
    of these per thread instead: the input is addressed once per buffer
    (``bind``), the output buffer and the LZ4HC state are reused.
    """

    def __init__(self, dst_capacity: int, level: int | None = None) -> None:
        self.level = level
        self.capacity = dst_capacity
        self._out = ctypes.create_string_buffer(max(dst_capacity, 1))
        self._out_addr = ctypes.addressof(self._out)
        self._state = ctypes.create_string_buffer(_HC_STATE_SIZE) if level is not None else None
        self._consumed = ctypes.c_int(0)
        self._src: object = None
        self._src_addr = 0
        self._src_len = 0

    def bind(self, src: bytearray) -> None:
        """Compress from ``src`` next (kept alive until the next bind)."""
        arr = (ctypes.c_char * len(src)).from_buffer(src) if src else None
        self._src = arr
        self._src_addr = ctypes.addressof(arr) if arr is not None else 0
        self._src_len = len(src)

    def compress(self, pos: int, end: int, cap: int) -> tuple[bytes, int]:
        """Like :func:`compress_destsize` on ``src[pos:end]`` with ``cap <= dst_capacity``."""
        if not 0 <= pos <= end <= self._src_len or cap > self.capacity:
            raise ValueError("destsize range outside the bound buffer")
        self._consumed.value = end - pos
        if self.level is None:
            n = _lib.LZ4_compress_destSize(
                self._src_addr + pos, self._out_addr, ctypes.byref(self._consumed), cap
            )
        else:
            n = _lib.LZ4_compress_HC_destSize(
                ctypes.addressof(self._state), self._src_addr + pos, self._out_addr,  # type: ignore[arg-type]
                ctypes.byref(self._consumed), cap, self.level,
            )  # fmt: skip
        if n <= 0:
            return b"", 0
        return ctypes.string_at(self._out_addr, n), int(self._consumed.value)
