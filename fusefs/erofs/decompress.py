"""Decoders of one pcluster into a caller-provided output buffer (after the
kernel's ``decompressor*.c``).

The output ``dst`` is exactly the bytes wanted (the extent, or a prefix of
what the pcluster holds when decoding partially); the caller decides where
that memory is (a vmap of page-cache frames, a folio, a per-CPU buffer).
LZ4 writes straight into ``dst``; zstd, deflate and lzma decode through the
Python bindings and copy into it.
"""

from __future__ import annotations

import lzma
import re
import zlib
from collections.abc import Callable

import zstandard

from fusefs.codecs import lz4 as _liblz4
from fusefs.erofs import format as f
from fusefs.erofs.super import CompressionConfig
from fusefs.errors import CorruptImageError, UnsupportedFeatureError

# what names an extent in an error, made only when there is one: formatting
# it for every pcluster decoded cost more than the bookkeeping around it
Where = Callable[[], str]
_NONZERO = re.compile(rb"[^\0]")


def _strip_zeros(src: memoryview, window: int, where: Where) -> memoryview:
    """Drop the leading zero padding (0PADDING): it may only fill part of the
    first block, so an all-zero first block is corruption.  (Searched in
    place: the pcluster is not copied to find where its data starts.)"""
    first = _NONZERO.search(src, 0, min(window, len(src)))
    if first is None:
        raise CorruptImageError(f"{where()}: pcluster starts with a whole block of zeros")
    return src[first.start() :]


def decompress(
    fmt: int,
    src: memoryview,
    dst: memoryview,
    *,
    cfg: CompressionConfig,
    zero_padding: bool,
    partial: bool,
    pad_window: int,
    la: int,
    block_size: int,
    where: Where,
) -> None:
    """Decode pcluster bytes ``src`` into all of ``dst``.

    ``partial``: ``dst`` may be a prefix of what the pcluster decodes to.
    ``pad_window``: how many leading bytes may be zero padding (the rest of
    the first block).  ``la`` (the extent's logical start) places
    interlaced uncompressed data.  ``where()`` names the extent in errors."""
    n = len(dst)
    if fmt == f.Z_EROFS_COMPRESSION_SHIFTED:
        if len(src) < n:
            raise CorruptImageError(f"{where()}: {len(src)}-byte plain pcluster for {n} bytes")
        dst[:] = src[:n]
        return
    if fmt == f.Z_EROFS_COMPRESSION_INTERLACED:
        # erofs: interlaced plain data is rotated by the extent's offset in its block
        if len(src) < n or n > block_size:
            raise CorruptImageError(f"{where()}: interlaced pcluster too short")
        c = la % block_size
        first = min(block_size - c, n)
        dst[:first] = src[c : c + first]
        if n > first:
            dst[first:] = src[: n - first]
        return
    if fmt == f.Z_EROFS_COMPRESSION_LZ4:
        if zero_padding:
            src = _strip_zeros(src, pad_window, where)
        try:
            _liblz4.decompress_into(src, dst, partial=partial or not zero_padding)
        except CorruptImageError as e:
            raise CorruptImageError(f"{where()}: {e}") from None
        return
    src = _strip_zeros(src, pad_window, where)
    if fmt == f.Z_EROFS_COMPRESSION_ZSTD:
        out = _zstd(src, n, cfg, where)
    elif fmt == f.Z_EROFS_COMPRESSION_DEFLATE:
        out = _deflate(src, n, where)
    elif fmt == f.Z_EROFS_COMPRESSION_LZMA:
        out = _microlzma(src, n, cfg, where)
    else:
        raise UnsupportedFeatureError(f"{where()}: compression format {fmt}")
    if len(out) < n or (not partial and len(out) != n):
        raise CorruptImageError(
            f"{where()}: {f.ALGORITHM_NAMES[fmt]} stream decodes to {len(out)} bytes, wanted {n}"
        )
    dst[:] = out[:n]


def _zstd(src: memoryview, n: int, cfg: CompressionConfig, where: Where) -> bytes:
    # At most one byte more than wanted (enough to tell a stream that is too
    # long): a pcluster of RLE blocks could otherwise decode to 32768 times
    # its size in memory before being cut.
    try:
        dctx = zstandard.ZstdDecompressor(max_window_size=max(cfg.zstd_max_window, 1 << 10))
        with dctx.stream_reader(bytes(src)) as reader:
            out: bytes = reader.read(n + 1)
    except zstandard.ZstdError as e:
        raise CorruptImageError(f"{where()}: zstd: {e}") from None
    return out


def _deflate(src: memoryview, n: int, where: Where) -> bytes:
    try:
        d = zlib.decompressobj(-15)
        out = d.decompress(bytes(src), n + 1)
    except zlib.error as e:
        raise CorruptImageError(f"{where()}: deflate: {e}") from None
    return out


def _microlzma(src: memoryview, n: int, cfg: CompressionConfig, where: Where) -> bytes:
    """MicroLZMA = a raw LZMA1 stream whose first byte (always 0 for the range
    coder) is replaced by the bitwise NOT of the lc/lp/pb properties byte;
    no end marker, so decode exactly ``n`` bytes."""
    if not src:
        raise CorruptImageError(f"{where()}: empty lzma pcluster")
    props = ~src[0] & 0xFF
    if props >= 9 * 5 * 5:
        raise CorruptImageError(f"{where()}: bad MicroLZMA properties byte {src[0]:#x}")
    lc, rest = props % 9, props // 9
    lp, pb = rest % 5, rest // 5
    dict_size = max(cfg.lzma_dict_size, 4096)
    try:
        d = lzma.LZMADecompressor(
            format=lzma.FORMAT_RAW,
            filters=[
                {"id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb, "dict_size": dict_size}
            ],
        )
        out = d.decompress(b"\0" + bytes(src[1:]), max_length=n)
    except lzma.LZMAError as e:
        raise CorruptImageError(f"{where()}: lzma: {e}") from None
    return out
