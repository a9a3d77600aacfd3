"""The liblz4 entry points EROFS needs that python-lz4 does not expose.

* ``LZ4_decompress_safe`` / ``LZ4_decompress_safe_partial``: decode a whole
  block, or only a prefix of it (EROFS partial decoding, images without
  0PADDING, dedupe's PARTIAL_REF extents);
* ``LZ4_compress_destSize`` / ``LZ4_compress_HC_destSize``: compress as much
  input as fits in a fixed-size output (EROFS fixed-size output pclusters).

The system's liblz4 (Debian ``liblz4-1``) is loaded through ctypes on the
first call that needs it; without it that call raises
:class:`~fusefs.errors.UnsupportedFeatureError` ("liblz4 is not installed
..."), and nothing else in nommufs notices.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import Any, Final

from fusefs.errors import CorruptImageError, UnsupportedFeatureError

LZ4HC_CLEVEL_DEFAULT: Final = 9
LZ4HC_CLEVEL_MAX: Final = 12
MISSING: Final = "liblz4 is not installed (Debian package liblz4-1)"

_int = ctypes.c_int
_ptr = ctypes.c_void_p
_intp = ctypes.POINTER(ctypes.c_int)
# name -> (argtypes, restype) of every function used here
_SIGNATURES: Final[dict[str, tuple[list[Any], Any]]] = {
    "LZ4_decompress_safe": ([_ptr, _ptr, _int, _int], _int),
    "LZ4_decompress_safe_partial": ([_ptr, _ptr, _int, _int, _int], _int),
    "LZ4_compress_destSize": ([_ptr, _ptr, _intp, _int], _int),
    "LZ4_compress_HC_destSize": ([_ptr, _ptr, _ptr, _intp, _int, _int], _int),
    "LZ4_sizeofStateHC": ([], _int),
}
_load_lock: Final = threading.Lock()
_state: dict[str, str | None] = {"missing": None}  # set once loading failed


def _open_library() -> ctypes.CDLL:
    try:
        return ctypes.CDLL("liblz4.so.1")
    except OSError:
        pass
    # only then ask ldconfig (find_library runs it in a subprocess: ~10 ms)
    from ctypes.util import find_library

    name = find_library("lz4")
    if name:
        try:
            return ctypes.CDLL(name)
        except OSError:
            pass
    raise UnsupportedFeatureError(MISSING)


def require() -> None:
    """Load liblz4 now, once (thread-safe); UnsupportedFeatureError when it
    is missing, every time, without searching again.

    Until it is loaded the ``_decompress_safe*`` globals are stubs that call
    this first and then rebind themselves, so that after the first call
    :func:`decompress_into` runs the ctypes functions with no check of its
    own.  A writer calls it to fail before it starts, not in the middle."""
    global _decompress_safe, _decompress_safe_partial, _compress_fast, _compress_hc
    global _hc_state_size
    with _load_lock:
        if _hc_state_size:
            return
        if _state["missing"] is not None:
            raise UnsupportedFeatureError(_state["missing"])
        try:
            lib = _open_library()
        except UnsupportedFeatureError as e:
            _state["missing"] = str(e)
            raise
        fns: dict[str, Any] = {}
        for name, (argtypes, restype) in _SIGNATURES.items():
            fn = getattr(lib, name)
            fn.argtypes = argtypes
            fn.restype = restype
            fns[name] = fn
        _compress_fast = fns["LZ4_compress_destSize"]
        _compress_hc = fns["LZ4_compress_HC_destSize"]
        _decompress_safe_partial = fns["LZ4_decompress_safe_partial"]
        _decompress_safe = fns["LZ4_decompress_safe"]
        _hc_state_size = int(fns["LZ4_sizeofStateHC"]())  # non-zero: loaded


def _load_then(name: str) -> Callable[..., int]:
    """A stand-in for the global ``name`` until :func:`require` binds it."""

    def first_call(*args: Any) -> int:
        require()
        return int(globals()[name](*args))

    return first_call


_hc_state_size = 0
_decompress_safe: Callable[..., int] = _load_then("_decompress_safe")
_decompress_safe_partial: Callable[..., int] = _load_then("_decompress_safe_partial")
_compress_fast: Callable[..., int] = _load_then("_compress_fast")
_compress_hc: Callable[..., int] = _load_then("_compress_hc")
_addressof: Final = ctypes.addressof
_char_at: Final = ctypes.c_char.from_buffer


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


class DestSizeCompressor:
    """Repeated fixed-output compression from one writable buffer, for writers.

    A writer cutting a file into thousands of pclusters keeps one of these
    per thread: the input is addressed once per buffer (``bind``), the output
    buffer and the LZ4HC state are reused.  ``level`` None is the fast
    compressor (``-z lz4``), otherwise LZ4HC at that level (``-z lz4hc,N``).
    Building one loads liblz4 (UnsupportedFeatureError when it is missing).
    """

    def __init__(self, dst_capacity: int, level: int | None = None) -> None:
        require()
        self.level = level
        self.capacity = dst_capacity
        self._out = ctypes.create_string_buffer(max(dst_capacity, 1))
        self._out_addr = ctypes.addressof(self._out)
        self._out_view = memoryview(self._out).cast("B")
        self._state = ctypes.create_string_buffer(_hc_state_size) if level is not None else None
        self._state_addr = ctypes.addressof(self._state) if self._state is not None else 0
        self._consumed = ctypes.c_int(0)
        self._consumed_ref = ctypes.byref(self._consumed)
        self._src: object = None
        self._src_addr = 0
        self._src_len = 0

    def bind(self, src: bytearray) -> None:
        """Compress from ``src`` next (kept alive until the next bind)."""
        # its first byte holds the address (an array type per length would be
        # a new ctypes type for every file, 13 us each and cached forever)
        arr = ctypes.c_char.from_buffer(src) if src else None
        self._src = arr
        self._src_addr = ctypes.addressof(arr) if arr is not None else 0
        self._src_len = len(src)

    def compress(self, pos: int, end: int, cap: int) -> tuple[bytes, int]:
        """(stream, consumed): the longest prefix of ``src[pos:end]`` whose
        block fits ``cap <= dst_capacity`` bytes (consumed 0: nothing fits)."""
        if not 0 <= pos <= end <= self._src_len or cap > self.capacity:
            raise ValueError("destsize range outside the bound buffer")
        # once per pcluster of every file: the call's arguments are made once
        self._consumed.value = end - pos
        if self._state is None:
            n = _compress_fast(self._src_addr + pos, self._out_addr, self._consumed_ref, cap)
        else:
            n = _compress_hc(
                self._state_addr, self._src_addr + pos, self._out_addr, self._consumed_ref,
                cap, self.level,
            )  # fmt: skip
        if n <= 0:
            return b"", 0
        return bytes(self._out_view[:n]), int(self._consumed.value)
