"""The writer's compact indexes decode, with the reader's own decoder, to
the lclusters they were made from: random files of random extents, with and
without big pclusters, 2B and 4B packs, headers at every position mod 32."""

from __future__ import annotations

import random

import pytest

from fusefs.erofs.format import Z_EROFS_LCLUSTER_TYPE_NONHEAD, MapHeader
from fusefs.erofs.zindex import compact_layout, decode_compact_entry, decode_compact_pack
from fusefs.erofs.zindex import pack_geometry as geometry
from mkimage.erofs.zmap import PlacedExtent, compact_index_bytes, lcluster_entries


def _extents(rng: random.Random, big: bool, lcbits: int) -> tuple[list[PlacedExtent], int]:
    lc = 1 << lcbits
    out, la, blk = [], 0, rng.randrange(1 << 20)
    for _ in range(rng.randrange(1, 80)):
        compressed = rng.random() < 0.8
        blocks = rng.randrange(1, 9) if big and compressed else 1
        # every extent but the last crosses an lcluster boundary; a kept
        # pcluster decodes to more than it takes (so it has room for CBLKCNT)
        least = max(lc - la % lc, blocks * lc) + 1
        llen = rng.randrange(least, least + 12 * lc) if compressed else lc - la % lc
        out.append(PlacedExtent(la, llen, blk, blocks, compressed))
        la += llen
        blk += blocks
    return out, la - rng.randrange(min(out[-1].llen, lc))


@pytest.mark.parametrize(
    ("big", "two_b"), [(False, True), (True, True), (False, False), (True, False)]
)
def test_compact_packs_decode_to_their_lclusters(big: bool, two_b: bool) -> None:
    rng = random.Random(big * 2 + two_b)
    lcbits = 12
    for _ in range(150):
        extents, size = _extents(rng, big, lcbits)
        entries = lcluster_entries(extents, size, lcbits, big)
        header_pos = 8 * rng.randrange(4)
        raw = compact_index_bytes(MapHeader(0, 0, 0, 0, 0), header_pos, entries, lcbits, two_b, big)
        layout = compact_layout(header_pos + MapHeader.SIZE, len(entries), two_b)
        for n, e in enumerate(entries):
            pos, amort = layout.position(n)
            geo = geometry(amort, lcbits)
            assert geo is not None
            start = pos - pos % geo.pack_size
            fields, base = decode_compact_pack(raw[start - header_pos :], geo)
            d = decode_compact_entry(fields, base, (pos - start) // amort, lcbits, big)
            assert d.type == e.type, (n, d, e)
            if e.type != Z_EROFS_LCLUSTER_TYPE_NONHEAD:
                assert d.clusterofs == e.clusterofs
                assert e.sentinel or d.blkaddr == e.blkaddr, (n, d, e)
            elif e.cblkcnt:
                assert d.compressedblks == e.cblkcnt
