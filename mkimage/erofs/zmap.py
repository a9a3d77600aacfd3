"""Lcluster indexes of compressed files: full ("legacy") and compact (2B/4B).

Both are built from one list of per-lcluster entries computed from the
extents (:func:`lcluster_entries`), then encoded with the shared
definitions of :mod:`fusefs.erofs.format` and the shared codec of
:mod:`fusefs.erofs.zindex`: a compact pack's base address is what makes the
reader's own decoder find each HEAD's block (tests/mkimage/test_zmap.py
decodes random files' packs back).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from fusefs.erofs.format import (
    Z_EROFS_FULL_INDEX_START,
    Z_EROFS_LCLUSTER_TYPE_HEAD1,
    Z_EROFS_LCLUSTER_TYPE_NONHEAD,
    Z_EROFS_LCLUSTER_TYPE_PLAIN,
    Z_EROFS_LI_D0_CBLKCNT,
    LclusterIndex,
    MapHeader,
)
from fusefs.erofs.zindex import (
    CompactEntry,
    compact_layout,
    decode_compact_entry,
    encode_compact_pack,
    pack_geometry,
)
from mkimage.errors import BuildError

_D0_MAX = Z_EROFS_LI_D0_CBLKCNT - 1


class Lcluster(NamedTuple):
    """What one lcluster's index says (before encoding).  A NamedTuple: a
    file has one per block, and tuples are made several times faster."""

    type: int
    clusterofs: int = 0  # HEAD/PLAIN
    blkaddr: int = 0  # HEAD/PLAIN (0 for the EOF sentinel and a fragment)
    delta0: int = 0  # NONHEAD
    delta1: int = 0  # NONHEAD
    cblkcnt: int = 0  # NONHEAD right after a big-pcluster HEAD: its block count
    sentinel: bool = False  # no block address: the EOF sentinel, or a fragment's HEAD


class PlacedExtent(NamedTuple):
    """An extent with its pcluster's first block and block count."""

    la: int
    llen: int
    blkaddr: int
    blocks: int
    compressed: bool
    fragment: bool = False  # the tail stored in the packed inode


def lcluster_entries(
    extents: Sequence[PlacedExtent], size: int, lclusterbits: int, big: bool
) -> list[Lcluster]:
    """One entry per lcluster of a file of ``size`` bytes (kernel rules: a
    HEAD where each extent starts, NONHEADs with look-back/ahead distances,
    CBLKCNT on the first NONHEAD when big pclusters are on, a PLAIN sentinel
    for a final partial lcluster)."""
    lc = 1 << lclusterbits
    total = -(-size // lc)
    out: list[Lcluster | None] = [None] * total
    nonhead, head1, plain = (
        Z_EROFS_LCLUSTER_TYPE_NONHEAD, Z_EROFS_LCLUSTER_TYPE_HEAD1, Z_EROFS_LCLUSTER_TYPE_PLAIN
    )  # fmt: skip
    # positional arguments throughout: this runs once per block of every file
    for la, llen, blkaddr, blocks, compressed, fragment in extents:
        n0, c = divmod(la, lc)
        crossed = (c + llen) >> lclusterbits
        if out[n0] is not None:
            raise BuildError(f"internal: two extents start in lcluster {n0}")
        if fragment:
            # erofs: a fragment's HEAD1 has no pcluster; in full indexes its
            # blkaddr holds bits 32..63 of the fragment offset (0 here)
            out[n0] = Lcluster(head1, c, 0, 0, 0, 0, True)
        else:
            out[n0] = Lcluster(head1 if compressed else plain, c, blkaddr, 0, 0, 0, False)
        stop = min(crossed, total - n0)
        first = 1
        if big and stop > 1:
            out[n0 + 1] = Lcluster(nonhead, 0, 0, 1, crossed - 1, blocks, False)
            first = 2
        for j in range(first, stop):
            out[n0 + j] = Lcluster(nonhead, 0, 0, min(j, _D0_MAX), crossed - j, 0, False)
    if total and out[-1] is None:
        # erofs: EOF inside an lcluster after the last extent's boundary: a PLAIN sentinel
        out[-1] = Lcluster(plain, size % lc, 0, 0, 0, 0, True)
    if None in out:
        raise BuildError(f"internal: lcluster {out.index(None)} has no index")
    return out  # type: ignore[return-value]  # no None left


def full_index_bytes(header: MapHeader, entries: Sequence[Lcluster]) -> bytes:
    """Map header, 8 reserved bytes, then one 8-byte index per lcluster."""
    parts = [header.pack(), bytes(Z_EROFS_FULL_INDEX_START - MapHeader.SIZE)]
    for e in entries:
        if e.type == Z_EROFS_LCLUSTER_TYPE_NONHEAD:
            d0 = Z_EROFS_LI_D0_CBLKCNT | e.cblkcnt if e.cblkcnt else e.delta0
            parts.append(LclusterIndex.nonhead(d0, min(e.delta1, 0xFFFF)).pack())
        else:
            parts.append(LclusterIndex.head(e.type, e.clusterofs, e.blkaddr).pack())
    return b"".join(parts)


def compact_size(header_pos: int, total: int, lclusterbits: int, two_b: bool) -> int:
    """Bytes of map header + compact indexes for a header at ``header_pos``."""
    layout = compact_layout(header_pos + MapHeader.SIZE, total, two_b)
    return layout.end - header_pos


def compact_ok(lclusterbits: int, two_b: bool) -> bool:
    return pack_geometry(2 if two_b else 4, lclusterbits) is not None


def compact_index_bytes(
    header: MapHeader,
    header_pos: int,
    entries: Sequence[Lcluster],
    lclusterbits: int,
    two_b: bool,
    big: bool,
) -> bytes:
    """Map header and compact packs for an inode whose header sits at byte
    ``header_pos`` (only its value mod 32 matters).  Pclusters must be laid
    back to back in logical order."""
    layout = compact_layout(header_pos + MapHeader.SIZE, len(entries), two_b)
    parts = [header.pack()]
    i = 0
    while i < len(entries):
        _pos, amort = layout.position(i)
        geo = pack_geometry(amort, lclusterbits)
        if geo is None:
            raise BuildError(f"internal: no compact pack for lclusterbits {lclusterbits}")
        group = entries[i : i + geo.vcnt]
        fields = [_field(e, False) for e in group]
        if len(group) == geo.vcnt:
            fields[-1] = _field(group[-1], True)
        fields += [_PAD_FIELD] * (geo.vcnt - len(group))
        base = 0
        for h, e in enumerate(group):
            if e.type != Z_EROFS_LCLUSTER_TYPE_NONHEAD:
                # the decoder adds the pclusters before the pack's first HEAD to base
                base = e.blkaddr - decode_compact_entry(fields, 0, h, lclusterbits, big).blkaddr
                break
        raw = encode_compact_pack(fields, base, geo)
        parts.append(raw)
        i += geo.vcnt
    out = b"".join(parts)
    if len(out) != layout.end - header_pos:
        raise BuildError("internal: compact index area has the wrong size")
    return out


_PAD_FIELD = CompactEntry(Z_EROFS_LCLUSTER_TYPE_PLAIN, 0)


def _field(e: Lcluster, last: bool) -> CompactEntry:
    # plain (type, lo) tuples: the pack codec only unpacks them
    t = e.type
    if t != Z_EROFS_LCLUSTER_TYPE_NONHEAD:
        return (t, e.clusterofs)  # type: ignore[return-value]
    if e.cblkcnt:
        return (t, Z_EROFS_LI_D0_CBLKCNT | e.cblkcnt)  # type: ignore[return-value]
    # erofs: the last field of a pack holds delta[1] (capped), not delta[0]
    return (t, min(e.delta1, _D0_MAX) if last else e.delta0)  # type: ignore[return-value]


def rebase_offsets(header_pos: int, entries: Sequence[Lcluster], *, compact: bool,
                   lclusterbits: int, two_b: bool) -> list[int]:  # fmt: skip
    """Where, in index bytes for a header at ``header_pos``, the le32 block
    addresses are that :func:`rebase` moves: each non-sentinel HEAD/PLAIN
    index (full), each pack's base address (compact)."""
    if not compact:
        return [
            Z_EROFS_FULL_INDEX_START + LclusterIndex.SIZE * n + 4
            for n, e in enumerate(entries)
            if e.type != Z_EROFS_LCLUSTER_TYPE_NONHEAD and not e.sentinel
        ]
    layout = compact_layout(header_pos + MapHeader.SIZE, len(entries), two_b)
    out = []
    i = 0
    while i < len(entries):
        pos, amort = layout.position(i)
        geo = pack_geometry(amort, lclusterbits)
        assert geo is not None
        # erofs: every compact pack ends with its le32 base block address
        out.append(pos - header_pos + geo.pack_size - 4)
        i += geo.vcnt
    return out


def rebase(raw: bytes, offsets: Sequence[int], *, compact: bool, delta: int) -> bytes:
    """Index bytes encoded with pcluster addresses relative to block 0,
    moved to start at block ``delta`` (workers encode before placement);
    ``offsets`` from :func:`rebase_offsets`."""
    if delta == 0:
        return raw
    out = bytearray(raw)
    for at in offsets:
        addr = int.from_bytes(out[at : at + 4], "little") + delta
        out[at : at + 4] = (addr & 0xFFFFFFFF if compact else addr).to_bytes(4, "little")
    return bytes(out)
