"""Compressors with a fixed-size output, and the cutting of a file into extents.

EROFS pclusters have a fixed *output* size (``-C``): each compressor takes
as much input as fits in that many bytes.  LZ4 and MicroLZMA do it natively
(``LZ4_compress_destSize`` / ``LZ4_compress_HC_destSize``,
``lzma_microlzma_encoder``); zstd and DEFLATE get it by a few bisection
steps on the input length.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, NamedTuple, Protocol

from fusefs.codecs import lz4 as liblz4
from fusefs.erofs.format import (
    Z_EROFS_COMPRESSION_DEFLATE,
    Z_EROFS_COMPRESSION_LZ4,
    Z_EROFS_COMPRESSION_LZMA,
    Z_EROFS_COMPRESSION_ZSTD,
    Z_EROFS_PCLUSTER_MAX_SIZE,
    round_up,
)
from mkimage.erofs import liblzma
from mkimage.errors import BuildError

# name -> (algorithm id, default level, level ranges, dictionary sizes (0: no dictsize=))
ALGORITHMS: Final[dict[str, tuple[int, int | None, tuple[range, ...], range]]] = {
    "lz4": (Z_EROFS_COMPRESSION_LZ4, None, (), range(0)),
    "lz4hc": (
        Z_EROFS_COMPRESSION_LZ4, liblz4.LZ4HC_CLEVEL_DEFAULT,
        (range(1, liblz4.LZ4HC_CLEVEL_MAX + 1),), range(0),
    ),
    "lzma": (
        Z_EROFS_COMPRESSION_LZMA, liblzma.LZMA_PRESET_DEFAULT,
        (range(10), range(100, 110)), range(4096, (8 << 20) + 1),
    ),
    "deflate": (Z_EROFS_COMPRESSION_DEFLATE, 6, (range(10),), range(512, 32768 + 1)),
    "zstd": (Z_EROFS_COMPRESSION_ZSTD, 3, (range(1, 23),), range(1024, (1 << 20) + 1)),
}  # fmt: skip

# Decoded bytes one extent holds at most, by default (--max-extent-bytes):
# reading any byte of an extent decodes it whole, so this much output
# memory, contiguous without an MMU, is what one read may need at once.
# mkfs.erofs leaves it unbounded; the kernel refuses more than 12 MiB.
MAX_EXTENT_BYTES: Final = Z_EROFS_PCLUSTER_MAX_SIZE
MAX_EXTENT_BYTES_LIMIT: Final = 12 << 20
# Larger files are cut in segments of at least this size, in parallel;
# extents never cross a segment boundary, so the image does not depend on
# the thread count.
SEGMENT_BYTES: Final = 4 * MAX_EXTENT_BYTES


def segment_bytes(max_extent: int) -> int:
    """Segment length for files cut with extents of at most ``max_extent`` bytes."""
    return max(SEGMENT_BYTES, 4 * max_extent)


class DestSize(Protocol):
    """Per-thread fixed-output compressor over one bound input buffer."""

    def bind(self, src: bytearray) -> None: ...

    def compress(self, pos: int, end: int, cap: int) -> tuple[bytes, int]:
        """(stream, consumed): the longest prefix of ``src[pos:end]`` whose
        stream fits ``cap`` bytes (consumed 0: nothing fits)."""
        ...


@dataclass(frozen=True, slots=True)
class Codec:
    """One ``-z ALG[,LEVEL]`` / ``-z ALG[,level=N][,dictsize=N]`` choice."""

    name: str
    algorithm: int
    level: int | None
    dict_size: int = 0  # dictsize=, 0: the default

    @property
    def zstd_window_log(self) -> int:
        return (self.dict_size or 1 << 20).bit_length() - 1

    @property
    def deflate_window_bits(self) -> int:
        return (self.dict_size or 32768).bit_length() - 1

    def lzma_dict_size(self, pcluster: int) -> int:
        """mkfs.erofs's default: four pclusters, at least 32 KiB, at most 8 MiB."""
        return self.dict_size or min(8 << 20, max(32768, pcluster << 2))

    def destsize(self, capacity: int) -> DestSize:
        """A fresh compressor for one thread (they are not shared), for
        outputs of at most ``capacity`` bytes."""
        if self.name in ("lz4", "lz4hc"):
            return liblz4.DestSizeCompressor(capacity, self.level)
        if self.name == "lzma":
            level = liblzma.LZMA_PRESET_DEFAULT if self.level is None else self.level
            return liblzma.MicroLzmaCompressor(capacity, level, self.lzma_dict_size(capacity))
        if self.name == "zstd":
            import zstandard  # only here: importing it costs an lz4 build a few ms

            params = zstandard.ZstdCompressionParameters.from_level(
                self.level or 3, window_log=self.zstd_window_log, write_checksum=0,
                write_content_size=1,
            )  # fmt: skip
            cctx = zstandard.ZstdCompressor(compression_params=params)
            return _bisected(lambda b: cctx.compress(b))
        level = self.level if self.level is not None else 6

        wbits = self.deflate_window_bits

        def deflate(b: bytes | memoryview) -> bytes:
            c = zlib.compressobj(level, zlib.DEFLATED, -wbits)
            out = c.compress(b) + c.flush()
            # erofs: a 0PADDING stream must not start with 0; bit 3 of a
            # stored block's first byte is padding that inflate ignores
            if out[:1] == b"\0":
                out = b"\x08" + out[1:]
            return out

        return _bisected(deflate)


def parse_codecs(text: str) -> tuple[Codec, ...]:
    """``-z``: ``ALG[,LEVEL]`` (mkfs.erofs 1.5) or ``ALG[,level=N][,dictsize=N]``
    (1.9), alternatives after colons (``lz4hc,12:lzma``); ``()`` for ``none``."""
    if text.strip().lower() == "none":
        return ()
    codecs = tuple(_parse_one(part, text) for part in text.split(":"))
    algorithms = [c.algorithm for c in codecs]
    if len(set(algorithms)) != len(algorithms):
        raise BuildError(f"-z {text}: each algorithm may be given once (lz4 and lz4hc are one)")
    return codecs


def parse_codec(text: str) -> Codec | None:
    """One ``-z`` algorithm (the first of alternatives); None for ``none``."""
    codecs = parse_codecs(text)
    return codecs[0] if codecs else None


def _parse_one(part: str, text: str) -> Codec:
    name, *opts = [p.strip() for p in part.split(",")]
    name = name.lower()
    if name not in ALGORITHMS:
        raise BuildError(f"-z {text}: unknown compressor {name!r} (none, {', '.join(ALGORITHMS)})")
    alg, level, levels, dict_sizes = ALGORITHMS[name]
    dict_size = 0
    for i, opt in enumerate(opts):
        key, eq, value = opt.partition("=")
        if not eq and i == 0:
            key, value = "level", opt  # the old -z ALG,LEVEL
        number = _number(value, f"-z {text}: {key}")
        if key == "level":
            if not any(number in r for r in levels):
                shown = " or ".join(f"{r.start}..{r.stop - 1}" for r in levels)
                raise BuildError(f"-z {text}: {name} takes " + (
                    f"a level in {shown}" if levels else "no level (use lz4hc,LEVEL)"
                ))  # fmt: skip
            level = number
        elif key == "dictsize":
            if number not in dict_sizes or (name != "lzma" and number & (number - 1)):
                if not dict_sizes:
                    raise BuildError(f"-z {text}: {name} takes no dictsize")
                kind = "" if name == "lzma" else "a power of two "
                raise BuildError(f"-z {text}: dictsize must be {kind}in "
                                 f"{dict_sizes.start}..{dict_sizes.stop - 1}")  # fmt: skip
            dict_size = number
        else:
            raise BuildError(f"-z {text}: unknown option {opt!r} (level=N, dictsize=N)")
    if alg == Z_EROFS_COMPRESSION_LZ4:
        liblz4.require()  # missing: one line now, not a failure mid-build
    if alg == Z_EROFS_COMPRESSION_LZMA:
        liblzma.require()
    return Codec(name, alg, level, dict_size)


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise BuildError(f"{what}: {text!r} is not a number") from None


class _Bisected:
    """Destsize for compressors without one (see :func:`_search`)."""

    def __init__(self, compress: Callable[[bytes | memoryview], bytes]) -> None:
        self.search = _search(compress)
        self.src = memoryview(bytearray())

    def bind(self, src: bytearray) -> None:
        self.src = memoryview(src)

    def compress(self, pos: int, end: int, cap: int) -> tuple[bytes, int]:
        return self.search(self.src[pos:end], cap)


def _bisected(compress: Callable[[bytes | memoryview], bytes]) -> DestSize:
    return _Bisected(compress)


def _search(
    compress: Callable[[bytes | memoryview], bytes],
) -> Callable[[memoryview, int], tuple[bytes, int]]:
    """Destsize by search: the longest input prefix whose stream fits ``cap``.

    A probe of ``4 * cap`` bytes gives the ratio; each next length is
    predicted from the last ratio, kept inside the bracket of lengths known
    to fit / not to fit, for at most 8 compressions; the best fitting result
    is kept.  Data that does not compress at all is given up on after the
    probe.  Deterministic: depends only on the input bytes."""

    def destsize(src: memoryview, cap: int) -> tuple[bytes, int]:
        n = len(src)
        best: tuple[bytes, int] = (b"", 0)
        lo, hi = 0, n + 1  # a prefix of lo bytes fits (or lo is 0), of hi bytes does not
        length = min(n, 4 * cap)
        for step in range(8):
            out = compress(src[:length])
            if len(out) <= cap:
                lo, best = length, (out, length)
            else:
                hi = length
                if step == 0 and len(out) * 64 >= length * 63:
                    break  # incompressible: stored plain
            if hi - lo <= max(64, hi >> 6) or lo == n:
                break
            predicted = length * cap * 63 // (64 * max(len(out), 1))
            length = max(lo + 1, min(predicted, hi - 1, n))
            if length <= lo or length >= hi:
                length = (lo + min(hi, n + 1)) // 2
                if length <= lo:
                    break
        return best

    return destsize


class Extent(NamedTuple):
    """One extent of a compressed file: logical bytes ``[la, la + llen)``
    stored in a pcluster of ``len(payload)`` bytes (a multiple of the block
    size).  ``compressed`` False means the raw bytes at pcluster offset 0."""

    la: int
    llen: int
    payload: bytes
    compressed: bool
    stream: bytes = b""  # the compressed stream itself (no padding)

    @property
    def inline_bytes(self) -> bytes:
        """What an inline (ztailpacking) copy of this pcluster holds."""
        return self.stream if self.compressed else self.payload[: self.llen]


def cut_extents(
    data: bytearray,
    destsize: DestSize,
    pcluster: int,
    block: int,
    *,
    zero_padding: bool,
    inline_max: int = 0,
    start: int = 0,
    end: int | None = None,
    max_extent: int = MAX_EXTENT_BYTES,
) -> list[Extent]:
    """Cut a file into extents, mkfs-style: each pcluster holds as much input
    as fits in ``pcluster`` bytes; the input of a pcluster that would not
    save a block is stored uncompressed, in one-block extents.  With ``inline_max`` (ztailpacking)
    a final extent whose stream is at most that long is kept compressed when
    it is shorter than its data, since it will not take a block.  ``start``
    and ``end`` cut only that segment (extents keep file offsets); no extent
    decodes to more than ``max_extent`` bytes."""
    extents: list[Extent] = []
    mv = memoryview(data)
    pos, size = start, len(data) if end is None else end
    destsize.bind(data)
    while pos < size:
        stream, consumed = destsize.compress(pos, min(size, pos + max_extent), pcluster)
        plen = round_up(len(stream), block)
        # erofs: keep a compressed pcluster only if it is shorter than what it decodes to
        final_inline = pos + consumed == size and len(stream) <= inline_max
        if (
            consumed > 0
            and stream
            and (plen < consumed or (final_inline and len(stream) < consumed))
        ):
            pad = plen - len(stream)
            payload = bytes(pad) + stream if zero_padding else stream + bytes(pad)
            extents.append(Extent(pos, consumed, payload, True, stream))
            pos += consumed
            continue
        # erofs-utils 1.9: what did not compress is stored raw, one block per
        # extent, all of it at once -- trying again one block further on
        # would compress the same bytes again (16 times for -C 65536)
        stop = min(size, pos + max(block, min(consumed, pcluster) // block * block))
        while pos < stop:
            llen = min(block, size - pos)
            piece = bytes(mv[pos : pos + llen])
            extents.append(Extent(pos, llen, piece + bytes(block - llen), False))
            pos += llen
    return extents
