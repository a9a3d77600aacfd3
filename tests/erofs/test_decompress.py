"""The per-algorithm pcluster decoders on hand-built pclusters.  (Whole images
compressed with zstd/deflate come from our mkimage; mkfs.erofs 1.5 has only
lz4/lz4hc.)"""

from __future__ import annotations

import lzma
import zlib

import lz4.block
import pytest
import zstandard

from fusefs.erofs import format as f
from fusefs.erofs.decompress import decompress
from fusefs.erofs.super import CompressionConfig
from fusefs.errors import CorruptImageError

CFG = CompressionConfig(
    available_algs=0xF, lz4_max_distance=0, lz4_max_pclusterblks=16, lzma_dict_size=1 << 16
)
DATA = b"".join(b"erofs %d nommu folio\n" % (i % 97) for i in range(3000))


def run(
    fmt: int,
    pcluster: bytes,
    n: int,
    *,
    partial: bool = False,
    zero_padding: bool = True,
    la: int = 0,
) -> bytes:
    dst = bytearray(n)
    decompress(
        fmt,
        memoryview(pcluster),
        memoryview(dst),
        cfg=CFG,
        zero_padding=zero_padding,
        partial=partial,
        pad_window=4096,
        la=la,
        block_size=4096,
        where=lambda: "test",
    )
    return bytes(dst)


def padded(stream: bytes) -> bytes:
    """Right-aligned in whole blocks (0PADDING)."""
    size = -(-len(stream) // 4096) * 4096
    return bytes(size - len(stream)) + stream


def test_lz4_zero_padding_full_and_partial() -> None:
    comp = lz4.block.compress(DATA, store_size=False)
    assert run(f.Z_EROFS_COMPRESSION_LZ4, padded(comp), len(DATA)) == DATA
    assert run(f.Z_EROFS_COMPRESSION_LZ4, padded(comp), 1000, partial=True) == DATA[:1000]
    with pytest.raises(CorruptImageError):
        run(f.Z_EROFS_COMPRESSION_LZ4, padded(comp), len(DATA) - 1)  # exact length required


def test_lz4_legacy_without_padding_decodes_partially() -> None:
    comp = lz4.block.compress(DATA, store_size=False)
    legacy = comp + bytes(-len(comp) % 4096)  # stream first, zeros after
    assert run(f.Z_EROFS_COMPRESSION_LZ4, legacy, len(DATA), zero_padding=False) == DATA


def test_all_zero_first_block_is_corrupt() -> None:
    with pytest.raises(CorruptImageError, match="zeros"):
        run(f.Z_EROFS_COMPRESSION_LZ4, bytes(8192), 100)


def test_zstd_deflate_lzma() -> None:
    z = zstandard.ZstdCompressor(level=3).compress(DATA)
    assert run(f.Z_EROFS_COMPRESSION_ZSTD, padded(z), len(DATA)) == DATA
    assert run(f.Z_EROFS_COMPRESSION_ZSTD, padded(z), 5000, partial=True) == DATA[:5000]
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    d = co.compress(DATA) + co.flush()
    assert run(f.Z_EROFS_COMPRESSION_DEFLATE, padded(d), len(DATA)) == DATA
    lc, lp, pb = 3, 0, 2
    raw = lzma.compress(
        DATA,
        format=lzma.FORMAT_RAW,
        filters=[{"id": lzma.FILTER_LZMA1, "lc": lc, "lp": lp, "pb": pb, "dict_size": 1 << 16}],
    )
    assert raw[0] == 0  # the range coder's first byte, which MicroLZMA replaces
    micro = bytes([~((pb * 5 + lp) * 9 + lc) & 0xFF]) + raw[1:]
    assert run(f.Z_EROFS_COMPRESSION_LZMA, padded(micro), len(DATA)) == DATA
    with pytest.raises(CorruptImageError):
        run(f.Z_EROFS_COMPRESSION_ZSTD, padded(b"\x28\xb5\x2f\xfd" + bytes(range(1, 60))), 100)
    with pytest.raises(CorruptImageError):
        run(f.Z_EROFS_COMPRESSION_DEFLATE, padded(b"\xff" * 100), 100)


def test_plain_shifted_and_interlaced() -> None:
    block = bytes(range(256)) * 16
    assert run(f.Z_EROFS_COMPRESSION_SHIFTED, block, 300) == block[:300]
    # an extent starting 1000 bytes into its block: rotated by 1000
    want = bytes(reversed(block))[:4096]
    stored = want[3096:] + want[:3096]
    assert run(f.Z_EROFS_COMPRESSION_INTERLACED, stored, 4096, la=8192 + 1000) == want
    with pytest.raises(CorruptImageError):
        run(f.Z_EROFS_COMPRESSION_SHIFTED, block[:100], 300)


def test_zstd_decodes_no_more_than_it_is_asked_for() -> None:
    """A small pcluster of RLE blocks decodes to megabytes: a partial read of
    it holds only what it wants (and one byte more), never the whole stream."""
    import tracemalloc

    params = zstandard.ZstdCompressionParameters(window_log=17)  # within the CFG's 1 MiB
    bomb = zstandard.ZstdCompressor(compression_params=params).compress(b"x" * (16 << 20))
    assert len(bomb) < 4096
    tracemalloc.start()
    try:
        out = run(f.Z_EROFS_COMPRESSION_ZSTD, padded(bomb), 8192, partial=True)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out == b"x" * 8192
    assert peak < 1 << 20, f"decoding 8 KiB held {peak} bytes"
