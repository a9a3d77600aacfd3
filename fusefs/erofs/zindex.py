"""The lcluster index codec of compressed files: full and compact indexes.

A compressed inode maps its data in logical clusters ("lclusters") of
``1 << lclusterbits`` bytes; each has one index saying whether an extent
starts in it (HEAD/PLAIN, with the pcluster's block address) or how far back
and ahead the extent's head is (NONHEAD).  COMPRESSED_FULL inodes store one
8-byte ``struct z_erofs_lcluster_index`` (:class:`fusefs.erofs.format.LclusterIndex`)
per lcluster; COMPRESSED_COMPACT inodes pack 2 (4B packs) or 16 (2B packs)
bit fields before one le32 base address, laid out as :class:`CompactLayout`
says.  The reader decodes (:func:`decode_full_index`,
:func:`decode_compact_pack`, :func:`decode_compact_entry`), the writer
encodes (:func:`encode_compact_pack`) and checks its packs with the same
decoders.

The kernel decodes in ``fs/erofs/zmap.c`` (``z_erofs_load_full_lcluster``
and ``z_erofs_load_compact_lcluster``, which older kernels split into
``legacy_load_cluster_from_disk`` and ``unpack_compacted_index``), as
erofs-utils does in ``lib/zmap.c``; erofs-utils encodes in ``lib/compress.c``
(``z_erofs_convert_to_compacted_format``, ``write_compacted_indexes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from fusefs.erofs.format import (
    COMPACT_2B_PACK,
    COMPACT_2B_VCNT,
    COMPACT_4B_PACK,
    COMPACT_4B_VCNT,
    Z_EROFS_LCLUSTER_TYPE_NONHEAD,
    Z_EROFS_LI_D0_CBLKCNT,
    LclusterIndex,
)


class PackGeometry(NamedTuple):
    """One compact pack: ``vcnt`` fields of ``encodebits`` bits each (``lobits``
    of lo, then 2 of type) in ``pack_size - 4`` bytes, then the le32 base."""

    vcnt: int
    pack_size: int
    encodebits: int
    lobits: int


def pack_geometry(amortized_bytes: int, lclusterbits: int) -> PackGeometry | None:
    """Geometry of a 4B (``amortized_bytes`` 4) or 2B (2) pack; None when the
    lcluster size cannot be encoded (kernel: EOPNOTSUPP)."""
    if amortized_bytes == 4 and lclusterbits <= 14:
        vcnt = COMPACT_4B_VCNT
    elif amortized_bytes == 2 and lclusterbits <= 12:
        vcnt = COMPACT_2B_VCNT
    else:
        return None
    pack_size = vcnt * amortized_bytes
    encodebits = (pack_size - 4) * 8 // vcnt
    lobits = max(lclusterbits, Z_EROFS_LI_D0_CBLKCNT.bit_length())
    return PackGeometry(vcnt, pack_size, encodebits, lobits)


@dataclass(frozen=True, slots=True)
class CompactLayout:
    """Where each lcluster's compact index lives: ``init4`` 4B entries to reach
    32-byte alignment, then ``two`` 2B entries (whole packs), then 4B entries."""

    ebase: int
    total: int
    init4: int
    two: int

    @property
    def rest4(self) -> int:
        return max(self.total - self.init4 - self.two, 0)

    def position(self, lcn: int) -> tuple[int, int]:
        """``(byte position, amortized bytes 4 or 2)`` of lcluster ``lcn``."""
        if lcn < self.init4:
            return self.ebase + 4 * lcn, 4
        if lcn - self.init4 < self.two:
            return self.ebase + 4 * self.init4 + 2 * (lcn - self.init4), 2
        return self.ebase + 4 * self.init4 + 2 * self.two + 4 * (lcn - self.init4 - self.two), 4

    def next_pack_offset(self, lcn: int) -> int:
        """The byte just after the pack holding ``lcn``'s index (the kernel's
        ``nextpackoff``: where an inline tail pcluster starts)."""
        pos, amort = self.position(lcn)
        size = COMPACT_4B_PACK if amort == 4 else COMPACT_2B_PACK
        return pos - pos % size + size

    @property
    def end(self) -> int:
        """The byte after the whole index area (last 4B pack padded)."""
        if self.total == 0:
            return self.ebase
        return self.next_pack_offset(self.total - 1)


def compact_layout(ebase: int, total: int, two_b: bool) -> CompactLayout:
    """The 4B/2B split of ``total`` compact indexes starting at ``ebase``
    (``header_pos + 8``); ``two_b`` is Z_EROFS_ADVISE_COMPACTED_2B."""
    init4 = ((32 - ebase % 32) // 4) & 7
    two = 0
    if two_b and init4 < total:
        two = (total - init4) // 16 * 16
    return CompactLayout(ebase, total, init4, two)


class CompactEntry(NamedTuple):
    """One decoded field of a compact pack: the lcluster type and its ``lo``
    bits (clusterofs of a HEAD/PLAIN; delta0, CBLKCNT or delta1 of a NONHEAD)."""

    type: int
    lo: int


def decode_compact_pack(
    pack: bytes | bytearray | memoryview, geo: PackGeometry
) -> tuple[list[tuple[int, int]], int]:
    """The ``vcnt`` fields (``(type, lo)``, as :class:`CompactEntry` holds
    them; plain tuples, made without a Python-level constructor: a read
    decodes a pack every few pclusters) and the base block address of one pack."""
    raw = int.from_bytes(bytes(pack[: geo.pack_size - 4]), "little")
    lobits = geo.lobits
    lomask = (1 << lobits) - 1
    bits = geo.encodebits
    entries = []
    for i in range(geo.vcnt):
        v = raw >> (i * bits)
        entries.append(((v >> lobits) & 3, v & lomask))
    base = int.from_bytes(bytes(pack[geo.pack_size - 4 : geo.pack_size]), "little")
    return entries, base


def encode_compact_pack(entries: Sequence[CompactEntry], base: int, geo: PackGeometry) -> bytes:
    """The bytes of one pack (the inverse of :func:`decode_compact_pack`)."""
    if len(entries) != geo.vcnt:
        raise ValueError(f"a pack holds {geo.vcnt} entries, got {len(entries)}")
    raw = 0
    for i, (lctype, lo) in enumerate(entries):
        if lo >> geo.lobits or not 0 <= lctype <= 3:
            raise ValueError(f"entry {i} ({lctype}, {lo}) does not fit {geo.encodebits} bits")
        raw |= (lo | (lctype << geo.lobits)) << (i * geo.encodebits)
    return raw.to_bytes(geo.pack_size - 4, "little") + (base & 0xFFFFFFFF).to_bytes(4, "little")


class DecodedLcluster:
    """What one lcluster index says, normalised over the full and compact forms.

    A plain class, not a NamedTuple: compiled, it is a native object whose
    fields are read without a lookup (a read maps every extent through a few
    of these); it is never unpacked as a tuple."""

    __slots__ = (
        "blkaddr",
        "clusterofs",
        "compressedblks",
        "delta0",
        "delta1",
        "partial_ref",
        "type",
    )  # fmt: skip

    def __init__(
        self,
        type: int,
        clusterofs: int,
        blkaddr: int,
        delta0: int,
        delta1: int,
        compressedblks: int,
        partial_ref: bool,
    ) -> None:
        self.type: Final = type
        # HEAD/PLAIN: extent start in the lcluster; NONHEAD: the lcluster size
        self.clusterofs: Final = clusterofs
        self.blkaddr: Final = blkaddr  # HEAD/PLAIN: pcluster block; NONHEAD: 0
        self.delta0: Final = delta0  # NONHEAD: lookback distance
        self.delta1: Final = delta1  # NONHEAD: lookahead distance (0 when unknown)
        self.compressedblks: Final = compressedblks  # NONHEAD with CBLKCNT: block count, else 0
        self.partial_ref: Final = partial_ref

    def _fields(self) -> tuple[int, int, int, int, int, int, bool]:
        return (self.type, self.clusterofs, self.blkaddr, self.delta0, self.delta1,
                self.compressedblks, self.partial_ref)  # fmt: skip

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DecodedLcluster) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash(self._fields())

    def __repr__(self) -> str:
        return "DecodedLcluster({}, {}, {}, {}, {}, {}, {})".format(*self._fields())


def decode_compact_entry(
    entries: Sequence[tuple[int, int]],
    base: int,
    i: int,
    lclusterbits: int,
    big_pcluster: bool,
) -> DecodedLcluster:
    """Entry ``i`` of a decoded pack, as the kernel's ``unpack_compacted_index``
    reads it.  Raises ValueError where the kernel says EFSCORRUPTED (the
    caller names the inode)."""
    vcnt = len(entries)
    lctype, lo = entries[i]
    if lctype == Z_EROFS_LCLUSTER_TYPE_NONHEAD:
        # delta1: count NONHEADs forward to the next head within the pack;
        # the pack's last NONHEAD carries the rest of the distance in lo.
        d1 = 0
        j = i
        last_lo = lo
        while j < vcnt:
            t, last_lo = entries[j]
            if t != Z_EROFS_LCLUSTER_TYPE_NONHEAD:
                break
            d1 += 1
            j += 1
        else:
            if not last_lo & Z_EROFS_LI_D0_CBLKCNT:
                d1 += last_lo - 1
        if lo & Z_EROFS_LI_D0_CBLKCNT:
            if not big_pcluster:
                raise ValueError("CBLKCNT without big pcluster")
            return DecodedLcluster(
                lctype, 1 << lclusterbits, 0, 1, d1, lo & ~Z_EROFS_LI_D0_CBLKCNT, False
            )
        if i + 1 != vcnt:
            return DecodedLcluster(lctype, 1 << lclusterbits, 0, lo, d1, 0, False)
        # erofs: the pack's last field holds delta[1]; delta[0] comes from the previous one
        if i == 0:
            d0 = 1
        else:
            pt, plo = entries[i - 1]
            if pt != Z_EROFS_LCLUSTER_TYPE_NONHEAD:
                plo = 0
            elif plo & Z_EROFS_LI_D0_CBLKCNT:
                plo = 1
            d0 = plo + 1
        return DecodedLcluster(lctype, 1 << lclusterbits, 0, d0, d1, 0, False)
    # HEAD/PLAIN: the block address counts pclusters back to the pack's base
    j = i
    if not big_pcluster:
        nblk = 1
        while j > 0:
            j -= 1
            t, jlo = entries[j]
            if t == Z_EROFS_LCLUSTER_TYPE_NONHEAD:
                j -= jlo
            if j >= 0:
                nblk += 1
    else:
        nblk = 0
        while j > 0:
            j -= 1
            t, jlo = entries[j]
            if t == Z_EROFS_LCLUSTER_TYPE_NONHEAD:
                if jlo & Z_EROFS_LI_D0_CBLKCNT:
                    j -= 1
                    nblk += jlo & ~Z_EROFS_LI_D0_CBLKCNT
                    continue
                if jlo <= 1:
                    raise ValueError("big pcluster with a plain delta0 <= 1")
                j -= jlo - 2
                continue
            nblk += 1
    return DecodedLcluster(lctype, lo, (base + nblk) & 0xFFFFFFFF, 0, 0, 0, False)


def decode_full_index(idx: LclusterIndex, lclusterbits: int, big_pcluster: bool) -> DecodedLcluster:
    """A full index as the kernel's ``load_full_lcluster`` reads it.  Raises
    ValueError where the kernel says EFSCORRUPTED."""
    if idx.type == Z_EROFS_LCLUSTER_TYPE_NONHEAD:
        d0, d1 = idx.delta0, idx.delta1
        if d0 & Z_EROFS_LI_D0_CBLKCNT:
            if not big_pcluster:
                raise ValueError("CBLKCNT without big pcluster")
            return DecodedLcluster(
                idx.type, 1 << lclusterbits, 0, 1, d1, d0 & ~Z_EROFS_LI_D0_CBLKCNT, False
            )
        return DecodedLcluster(idx.type, 1 << lclusterbits, 0, d0, d1, 0, False)
    return DecodedLcluster(idx.type, idx.di_clusterofs, idx.blkaddr, 0, 0, 0, idx.partial_ref)
