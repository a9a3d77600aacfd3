"""The lcluster index codec: compact layout, pack round trips, decoding."""

from __future__ import annotations

import random

import pytest

from fusefs.erofs.format import Z_EROFS_LCLUSTER_TYPE_HEAD1, Z_EROFS_LCLUSTER_TYPE_NONHEAD
from fusefs.erofs.zindex import (
    CompactEntry,
    compact_layout,
    decode_compact_entry,
    decode_compact_pack,
    encode_compact_pack,
    pack_geometry,
)


def test_compact_layout() -> None:
    lay = compact_layout(ebase=1176, total=40, two_b=True)  # 1176 % 32 == 24
    assert lay.init4 == 2 and lay.two == 32 and lay.rest4 == 6
    assert lay.position(0) == (1176, 4)
    assert lay.position(2) == (1184, 2) and 1184 % 32 == 0
    assert lay.position(34) == (1184 + 64, 4)
    assert lay.next_pack_offset(39) == lay.end
    nolay = compact_layout(ebase=1176, total=3, two_b=False)
    assert nolay.two == 0 and nolay.position(2) == (1184, 4)


@pytest.mark.parametrize("amort", [4, 2])
def test_compact_pack_round_trip(amort: int) -> None:
    geo = pack_geometry(amort, 12)
    assert geo is not None
    assert geo.pack_size == (8 if amort == 4 else 32)
    rng = random.Random(amort)
    for _ in range(50):
        entries = [
            CompactEntry(rng.randrange(4), rng.randrange(1 << geo.lobits)) for _ in range(geo.vcnt)
        ]
        base = rng.getrandbits(32)
        raw = encode_compact_pack(entries, base, geo)
        assert decode_compact_pack(raw, geo) == (entries, base)
    assert pack_geometry(2, 13) is None and pack_geometry(4, 15) is None


def test_compact_decode_block_addresses() -> None:
    geo = pack_geometry(2, 12)
    assert geo is not None
    # HEAD, NONHEAD(CBLKCNT 3), NONHEAD(d0 2), HEAD, HEAD ... big pcluster
    H, N = Z_EROFS_LCLUSTER_TYPE_HEAD1, Z_EROFS_LCLUSTER_TYPE_NONHEAD
    ents = [
        CompactEntry(H, 0),
        CompactEntry(N, 0x800 | 3),
        CompactEntry(N, 2),
        CompactEntry(H, 100),
    ]
    ents += [CompactEntry(H, 0)] * (16 - len(ents))
    d = decode_compact_entry(ents, 50, 3, 12, True)
    assert d.blkaddr == 53 and d.clusterofs == 100
    assert decode_compact_entry(ents, 50, 0, 12, True).blkaddr == 50
    assert decode_compact_entry(ents, 50, 4, 12, True).blkaddr == 54
    n1 = decode_compact_entry(ents, 50, 1, 12, True)
    assert (n1.delta0, n1.compressedblks, n1.delta1) == (1, 3, 2)
