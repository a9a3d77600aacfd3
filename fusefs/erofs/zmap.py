"""Compressed extent mapping: full and compact lcluster indexes, big
pclusters (CBLKCNT), ztailpacking, fragments, dedupe's partial references,
48BIT's encoded extents (after the kernel's ``fs/erofs/zmap.c``).

Indexes, extent records and inline pclusters are metadata: they are read
from the inode's :attr:`~fusefs.erofs.inode.ErofsInode.meta` (the image, or
the inode's record in the metabox); pclusters are in the image.

:meth:`ZMap.map` returns the *whole* extent holding a logical offset as a
:class:`~fusefs.erofs.data.Map` — where its pcluster is and how many bytes
it decodes to — because the reader decodes each pcluster once, completely,
into the page cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fusefs.erofs import format as f
from fusefs.erofs import zindex as zi
from fusefs.erofs.data import ENCODED, FRAGMENT, MAPPED, META, PARTIAL_REF, Map
from fusefs.erofs.inode import ErofsInode
from fusefs.erofs.super import ErofsSuper
from fusefs.errors import CorruptImageError, UnsupportedFeatureError
from fusefs.vfs import ImageBytes

_STRUCT = "erofs compressed index"


# compact packs a ZMap keeps decoded (a few extents' worth, whatever their size)
_PACKS_KEPT: Final = 16


@dataclass(slots=True)
class _Pack:
    """One compact pack: where it is, its first lcluster, its fields, and the
    lclusters decoded from it so far."""

    start: int
    first: int
    entries: list[tuple[int, int]]  # (type, lo) of each field
    base: int
    decoded: list[zi.DecodedLcluster | None]


def trailer_end(h: f.MapHeader, header_pos: int, inode: ErofsInode, blkszbits: int) -> int:
    """Where the metadata of a compressed inode ends: after its map header,
    lcluster indexes or extent records, and inline tail pcluster.  (An inode
    in the metabox reads this much once, see :mod:`fusefs.erofs.data`.)"""
    end = header_pos + f.MapHeader.SIZE
    if h.whole_file_fragment:
        return end
    total = -(-inode.size // (1 << blkszbits))  # the kernel counts blocks
    if inode.layout == f.EROFS_INODE_COMPRESSED_FULL and h.h_advise & f.Z_EROFS_ADVISE_EXTENTS:
        recsz, pos, count = _extent_records(h, header_pos, inode.size, blkszbits)
        return pos + recsz * count
    if inode.layout == f.EROFS_INODE_COMPRESSED_COMPACT:
        two_b = bool(h.h_advise & f.Z_EROFS_ADVISE_COMPACTED_2B)
        end = zi.compact_layout(end, total, two_b).end
    else:
        end = f.full_index_pos(header_pos, total)
    if h.h_advise & f.Z_EROFS_ADVISE_INLINE_PCLUSTER:
        end += h.h_idata_size  # the tail pcluster follows the last index
    return end


def _extent_records(
    h: f.MapHeader, header_pos: int, size: int, blkszbits: int
) -> tuple[int, int, int]:
    """``(record size, position of record 0, record count)`` of encoded
    extents; 4-byte records follow one le64 physical start."""
    recsz = f.extent_recsize(h.h_advise)
    pos = f.round_up(header_pos + f.MapHeader.SIZE, recsz)
    if recsz > 8:
        return recsz, pos, h.h_extents
    lcsize = 1 << (blkszbits + (h.h_clusterbits & 15))
    return recsz, pos + (8 if recsz == 4 else 0), -(-size // lcsize)


class _Extents:
    """Encoded extents (48BIT, ``Z_EROFS_ADVISE_EXTENTS`` on a COMPRESSED_FULL
    inode): records of ``recsz`` bytes instead of lcluster indexes, after the
    kernel's ``z_erofs_map_blocks_ext``.

    * 4-byte records (``plen`` only), one per lcluster, after one le64
      physical start: the pclusters lie back to back from there;
    * 8-byte records (``plen``, ``pstart_lo``), one per lcluster;
    * 16/32-byte records with their logical start, sorted, ``h_extents`` of
      them: binary searched.  32 bytes add the high word of ``lstart``.

    Physical offsets are bytes (unaligned data is allowed).  The last
    extent of a FRAGMENT_PCLUSTER inode is its fragment: ``plen`` and
    ``pstart`` hold the offset in the packed inode."""

    def __init__(self, z: ZMap, h: f.MapHeader) -> None:
        self.z = z
        self.lcsize = 1 << z.lclusterbits
        self.interlaced = bool(z.advise & f.Z_EROFS_ADVISE_INTERLACED_PCLUSTER)
        self.fragment = bool(z.advise & f.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER)
        if self.fragment and not z.sbi.has(f.EROFS_FEATURE_INCOMPAT_FRAGMENTS):
            raise z._bad("fragment extent without the fragments feature")
        self.recsz, self.pos, self.count = _extent_records(
            h, z.header_pos, z.size, z.sbi.blkszbits
        )
        z.meta.check(
            self.pos, self.recsz * self.count, structure="erofs extent records", nid=z.nid
        )
        self.pstart = 0
        if self.recsz == 4:
            raw = z.meta.slice(self.pos - 8, 8, structure=_STRUCT, nid=z.nid)
            self.pstart = int.from_bytes(bytes(raw), "little")
        self._starts: list[int] | None = None  # 4-byte records: each one's physical start

    def record(self, i: int) -> f.ZExtent:
        raw = self.z.meta.slice(self.pos + self.recsz * i, self.recsz, structure=_STRUCT,
                                nid=self.z.nid)  # fmt: skip
        return f.ZExtent.unpack_from(raw, self.recsz)

    def _lstart(self, e: f.ZExtent) -> int:
        return e.lstart_lo | (e.lstart_hi << 32 if self.recsz == 32 else 0)

    def _pstart4(self, i: int) -> int:
        """Physical start of 4-byte record ``i``: the pclusters before it, back to back."""
        if self._starts is None:
            starts, pa = [], self.pstart
            for j in range(self.count):
                starts.append(pa)
                pa += self.record(j).plen & f.Z_EROFS_EXTENT_PLEN_MASK
            self._starts = starts
        return self._starts[i]

    def map(self, la: int) -> Map:
        z, size = self.z, self.z.size
        if self.recsz <= 8:
            i = la // self.lcsize
            e = self.record(i)
            lstart, lend = i * self.lcsize, min((i + 1) * self.lcsize, size)
            pa = self._pstart4(i) if self.recsz == 4 else e.pstart_lo
        else:
            # the last record starting at or before la (records sorted by lstart)
            lo, hi, lend, found = 0, self.count, size, None
            while lo < hi:
                mid = (lo + hi) // 2
                rec = self.record(mid)
                start = self._lstart(rec)
                if start > la:
                    if start > lend:
                        raise z._bad(f"extent record {mid} starts at {start}, out of order")
                    hi, lend = mid, start
                else:
                    lo, found = mid + 1, (mid, rec, start)
            if found is None:
                raise UnsupportedFeatureError(
                    f"erofs inode nid {z.nid}: no extent record holds offset {la} (a hole)"
                )
            # lend: the start of record i + 1, the last one the search went below
            i, e, lstart = found
            pa = e.pstart_lo | (e.pstart_hi << 32)
        if not lstart <= la < lend:
            raise z._bad(f"extent [{lstart}, {lend}) does not hold offset {la}")
        llen = lend - lstart
        if i == self.count - 1 and self.fragment:
            fragmentoff = e.plen | (pa << 32 if self.recsz > 4 else 0)
            return Map(lstart, llen, 0, 0, FRAGMENT | PARTIAL_REF, fragmentoff=fragmentoff)
        plen = e.plen & f.Z_EROFS_EXTENT_PLEN_MASK
        if not plen:
            raise UnsupportedFeatureError(
                f"erofs inode nid {z.nid}: unmapped extent [{lstart}, {lend}) (a hole)"
            )
        fmt = e.plen >> f.Z_EROFS_EXTENT_PLEN_FMT_BIT
        if fmt:
            algorithm = fmt - 1
            if algorithm >= f.Z_EROFS_COMPRESSION_MAX:
                raise UnsupportedFeatureError(
                    f"erofs inode nid {z.nid}: unknown compression algorithm {algorithm}"
                )
            if not z.sbi.compr.available_algs & (1 << algorithm):
                raise z._bad(
                    f"algorithm {f.ALGORITHM_NAMES[algorithm]} is not enabled in the superblock"
                )
        elif self.interlaced and not (pa | plen) % z.sbi.block_size:
            algorithm = f.Z_EROFS_COMPRESSION_INTERLACED
        else:
            algorithm = f.Z_EROFS_COMPRESSION_SHIFTED
            if llen > plen:
                raise z._bad(
                    f"uncompressed extent of {llen} bytes longer than its {plen}-byte pcluster"
                )
        if plen > f.Z_EROFS_PCLUSTER_MAX_SIZE or llen > f.Z_EROFS_PCLUSTER_MAX_DSIZE:
            raise UnsupportedFeatureError(
                f"erofs inode nid {z.nid}: extent [{lstart}, {lend}) of {plen} encoded bytes"
                " exceeds the kernel's limits (1 MiB encoded, 12 MiB decoded)"
            )
        z.image.check(pa, plen, structure="erofs pcluster", nid=z.nid)
        flags = MAPPED | ENCODED
        if e.plen & f.Z_EROFS_EXTENT_PLEN_PARTIAL:
            flags |= PARTIAL_REF
        return Map(lstart, llen, pa, plen, flags, algorithm)


class ZMap:
    """The parsed map header of one compressed inode and its extent mapper
    (the kernel's ``z_erofs_fill_inode_lazy`` + ``z_erofs_map_blocks_fo``)."""

    def __init__(self, image: ImageBytes, sbi: ErofsSuper, inode: ErofsInode) -> None:
        self.image = image
        self.meta = inode.meta
        self.sbi = sbi
        self.inode = inode
        self.nid = inode.nid
        self.size = inode.size
        self.compact = inode.layout == f.EROFS_INODE_COMPRESSED_COMPACT
        self.header_pos = f.map_header_pos(inode.iloc, inode.inode_isize, inode.xattr_isize)
        raw = self.meta.slice(
            self.header_pos, f.MapHeader.SIZE, structure="erofs map header", nid=self.nid
        )
        h = f.MapHeader.unpack_from(raw)
        self.header = h
        self.whole_fragment = h.whole_file_fragment
        self.fragmentoff = 0
        self.idata_size = 0
        self.idataoff = 0
        self.tail_head_lcn = -1
        self._pack_memo: _Pack | None = None  # the pack visited last
        self._packs: dict[int, _Pack] = {}  # recent packs by position, oldest first
        self._last: Map | None = None  # the extent mapped last (reads ask again and again)
        self.extents: _Extents | None = None
        if self.whole_fragment:
            if not sbi.has(f.EROFS_FEATURE_INCOMPAT_FRAGMENTS):
                raise self._bad("whole-file fragment without the fragments feature")
            self.fragmentoff = h.whole_file_fragmentoff
            self.advise = f.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER
            self.lclusterbits = sbi.blkszbits
            return
        self.advise = h.h_advise
        self.lclusterbits = sbi.blkszbits + (h.h_clusterbits & 15)
        if not self.compact and self.advise & f.Z_EROFS_ADVISE_EXTENTS:
            self.extents = _Extents(self, h)
            return
        self.algs = (h.h_algorithmtype & 15, h.h_algorithmtype >> 4)
        for alg in self.algs:
            if alg >= f.Z_EROFS_COMPRESSION_MAX:
                raise UnsupportedFeatureError(
                    f"erofs inode nid {self.nid}: unknown compression algorithm {alg}"
                )
        if self.lclusterbits > 30:
            raise UnsupportedFeatureError(
                f"erofs inode nid {self.nid}: lcluster bits {self.lclusterbits}"
            )
        self.big1 = bool(self.advise & f.Z_EROFS_ADVISE_BIG_PCLUSTER_1)
        self.big2 = bool(self.advise & f.Z_EROFS_ADVISE_BIG_PCLUSTER_2)
        if (self.big1 or self.big2) and not sbi.has(f.EROFS_FEATURE_INCOMPAT_BIG_PCLUSTER):
            raise self._bad("big pcluster advise without the big_pcluster feature")
        if self.compact and self.big1 != self.big2:
            raise self._bad("big pcluster head1/2 of compact indexes differ")
        self.lcsize = 1 << self.lclusterbits
        self.total = -(-self.size // sbi.block_size)  # the kernel counts blocks
        self.layout = (
            zi.compact_layout(
                self.header_pos + f.MapHeader.SIZE,
                self.total,
                bool(self.advise & f.Z_EROFS_ADVISE_COMPACTED_2B),
            )
            if self.compact
            else None
        )
        end = trailer_end(h, self.header_pos, inode, sbi.blkszbits)
        self.meta.check(
            self.header_pos, end - self.header_pos, structure="erofs index area", nid=self.nid
        )
        ztail = bool(self.advise & f.Z_EROFS_ADVISE_INLINE_PCLUSTER)
        frag = bool(self.advise & f.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER)
        if ztail:
            if not sbi.has(f.EROFS_FEATURE_INCOMPAT_ZTAILPACKING):
                raise self._bad("inline pcluster without the ztailpacking feature")
            self.idata_size = h.h_idata_size
        if frag:
            if not sbi.has(f.EROFS_FEATURE_INCOMPAT_FRAGMENTS):
                raise self._bad("fragment pcluster without the fragments feature")
            self.fragmentoff = h.h_fragmentoff
        if (ztail or frag) and self.size:
            # erofs: find the tail extent's head lcluster (EROFS_GET_BLOCKS_FINDTAIL)
            last = (self.size - 1) >> self.lclusterbits
            head, hlcn, _ = self._locate(self.size - 1)
            self.tail_head_lcn = hlcn
            if ztail:
                self.idataoff = self._next_pack_offset(last)
            if frag and not self.compact:
                self.fragmentoff |= head.blkaddr << 32

    def _bad(self, reason: str, offset: int | None = None) -> CorruptImageError:
        return CorruptImageError(reason, structure=_STRUCT, nid=self.nid, offset=offset)

    # -- lcluster indexes ------------------------------------------------------

    def _next_pack_offset(self, lcn: int) -> int:
        if self.layout is not None:
            return self.layout.next_pack_offset(lcn)
        return f.full_index_pos(self.header_pos, lcn) + f.LclusterIndex.SIZE

    def load(self, lcn: int) -> zi.DecodedLcluster:
        """The index of lcluster ``lcn``, decoded.  The lclusters of the
        last few compact packs visited are kept decoded: a sequential read
        asks for each of them several times, and mapping one extent walks
        back to its head and forward to its end, often across packs (a 4B
        pack holds only two lclusters)."""
        if lcn < 0 or lcn >= self.total:
            raise self._bad(f"lcluster {lcn} outside 0..{self.total - 1}")
        memo = self._pack_memo
        if memo is not None and memo.first <= lcn < memo.first + len(memo.decoded):
            hit = memo.decoded[lcn - memo.first]
            if hit is not None:
                return hit
        else:
            memo = None
        try:
            if self.layout is None:
                pos = f.full_index_pos(self.header_pos, lcn)
                raw = self.meta.slice(pos, f.LclusterIndex.SIZE, structure=_STRUCT, nid=self.nid)
                big = self.big1 or self.big2
                d = zi.decode_full_index(f.LclusterIndex.unpack_from(raw), self.lclusterbits, big)
                memo = None
            else:
                if memo is None:
                    memo = self._compact_pack(lcn)
                # decoded on demand: fields past the last lcluster may be garbage
                d = zi.decode_compact_entry(
                    memo.entries, memo.base, lcn - memo.first, self.lclusterbits, self.big1
                )
        except ValueError as e:
            raise self._bad(f"lcluster {lcn}: {e}") from None
        if d.type != f.Z_EROFS_LCLUSTER_TYPE_NONHEAD and d.clusterofs >= self.lcsize:
            raise self._bad(f"lcluster {lcn}: clusterofs {d.clusterofs} >= lcluster size")
        if memo is not None:
            memo.decoded[lcn - memo.first] = d
        return d

    def _compact_pack(self, lcn: int) -> _Pack:
        """The compact pack holding lcluster ``lcn``'s index, its fields read."""
        assert self.layout is not None
        pos, amort = self.layout.position(lcn)
        geo = zi.pack_geometry(amort, self.lclusterbits)
        if geo is None:
            raise UnsupportedFeatureError(
                f"erofs inode nid {self.nid}: {amort}B compact indexes "
                f"with lcluster bits {self.lclusterbits}"
            )
        start = pos - pos % geo.pack_size
        memo = self._packs.get(start)
        if memo is None:
            raw = self.meta.slice(start, geo.pack_size, structure=_STRUCT, nid=self.nid)
            entries, base = zi.decode_compact_pack(raw, geo)
            first = lcn - (pos - start) // amort
            memo = _Pack(start, first, entries, base, [None] * len(entries))
            self._packs[start] = memo
            if len(self._packs) > _PACKS_KEPT:
                del self._packs[next(iter(self._packs))]
        self._pack_memo = memo
        return memo

    def _lookback(self, lcn: int, distance: int) -> tuple[zi.DecodedLcluster, int]:
        # every step goes strictly back, so the walk ends
        while True:
            if distance <= 0 or distance > lcn:
                raise self._bad(f"bogus lookback distance {distance} at lcluster {lcn}")
            lcn -= distance
            m = self.load(lcn)
            if m.type != f.Z_EROFS_LCLUSTER_TYPE_NONHEAD:
                return m, lcn
            distance = m.delta0

    def _locate(self, la: int) -> tuple[zi.DecodedLcluster, int, int]:
        """``(head index, head lcn, extent start)`` of the extent holding ``la``."""
        lcn, endoff = divmod(la, self.lcsize)
        m = self.load(lcn)
        if m.type != f.Z_EROFS_LCLUSTER_TYPE_NONHEAD:
            if endoff >= m.clusterofs:
                return m, lcn, lcn * self.lcsize + m.clusterofs
            if lcn == 0:
                raise self._bad(f"offset {la} lies before the first extent")
            head, hlcn = self._lookback(lcn, 1)
        else:
            head, hlcn = self._lookback(lcn, m.delta0)
        return head, hlcn, hlcn * self.lcsize + head.clusterofs

    def _extent_end(self, hlcn: int, m_la: int) -> int:
        """Where the extent starting at head lcluster ``hlcn`` ends
        (``z_erofs_get_extent_decompressedlen``)."""
        lcn = hlcn
        limit = m_la + f.Z_EROFS_PCLUSTER_MAX_DSIZE
        while True:
            if lcn * self.lcsize >= self.size:
                return self.size
            m = self.load(lcn)
            if m.type == f.Z_EROFS_LCLUSTER_TYPE_NONHEAD:
                step = m.delta1 or 1
            else:
                if lcn != hlcn:
                    return lcn * self.lcsize + m.clusterofs
                step = 1
            lcn += step
            if lcn * self.lcsize > limit + self.lcsize:
                raise UnsupportedFeatureError(
                    f"erofs inode nid {self.nid}: extent at {m_la} decodes to more than 12 MiB"
                )

    def _compressed_blocks(self, head: zi.DecodedLcluster, hlcn: int) -> int:
        big = self.big1 if head.type == f.Z_EROFS_LCLUSTER_TYPE_HEAD1 else self.big2
        if not big or (hlcn + 1) * self.lcsize >= self.size:
            return 1
        m = self.load(hlcn + 1)
        if m.type != f.Z_EROFS_LCLUSTER_TYPE_NONHEAD:
            return 1
        if m.compressedblks:
            return m.compressedblks
        if m.delta0 == 1:
            return 1
        raise self._bad(f"cannot find CBLKCNT at lcluster {hlcn + 1}")

    # -- the mapper --------------------------------------------------------------

    def map(self, la: int) -> Map:
        """The whole extent holding logical byte ``la`` (``0 <= la < i_size``)."""
        last = self._last
        if last is not None and last.la <= la < last.la + last.llen:
            return last
        if la < 0 or la >= self.size:
            raise self._bad(f"offset {la} outside the {self.size}-byte file")
        if self.whole_fragment:
            m = Map(0, self.size, 0, 0, FRAGMENT | PARTIAL_REF, fragmentoff=self.fragmentoff)
        elif self.extents is not None:
            m = self.extents.map(la)
        else:
            m = self._map(la)
        self._last = m
        return m

    def _map(self, la: int) -> Map:
        head, hlcn, m_la = self._locate(la)
        end = self._extent_end(hlcn, m_la)
        if end <= la or m_la > la:
            raise self._bad(f"extent [{m_la}, {end}) does not hold offset {la}")
        llen = end - m_la
        bs = self.sbi.block_size
        if head.type == f.Z_EROFS_LCLUSTER_TYPE_PLAIN:
            fmt = (
                f.Z_EROFS_COMPRESSION_INTERLACED
                if self.advise & f.Z_EROFS_ADVISE_INTERLACED_PCLUSTER
                else f.Z_EROFS_COMPRESSION_SHIFTED
            )
        else:
            fmt = self.algs[1] if head.type == f.Z_EROFS_LCLUSTER_TYPE_HEAD2 else self.algs[0]
            if not self.sbi.compr.available_algs & (1 << fmt):
                raise self._bad(
                    f"algorithm {f.ALGORITHM_NAMES.get(fmt, fmt)} is not enabled in the superblock"
                )
        if hlcn == self.tail_head_lcn and self.idata_size:
            pa, plen = self.idataoff, self.idata_size
            if pa % bs + plen > bs:
                raise self._bad(f"inline pcluster of {plen} bytes crosses a block", offset=pa)
            self.meta.check(pa, plen, structure="erofs inline pcluster", nid=self.nid)
            flags = MAPPED | META | ENCODED
        elif hlcn == self.tail_head_lcn and self.advise & f.Z_EROFS_ADVISE_FRAGMENT_PCLUSTER:
            return Map(m_la, llen, 0, 0, FRAGMENT | PARTIAL_REF, fragmentoff=self.fragmentoff)
        else:
            pa = head.blkaddr * bs
            plen = self._compressed_blocks(head, hlcn) * bs
            if plen > f.Z_EROFS_PCLUSTER_MAX_SIZE:
                raise self._bad(f"pcluster of {plen} bytes exceeds 1 MiB")
            self.image.check(pa, plen, structure="erofs pcluster", nid=self.nid)
            flags = MAPPED | ENCODED
        if fmt >= f.Z_EROFS_COMPRESSION_MAX and llen > plen:
            raise self._bad(
                f"uncompressed extent of {llen} bytes longer than its {plen}-byte pcluster"
            )
        if llen > f.Z_EROFS_PCLUSTER_MAX_DSIZE:
            raise UnsupportedFeatureError(
                f"erofs inode nid {self.nid}: extent of {llen} bytes exceeds 12 MiB"
            )
        if head.partial_ref:
            flags |= PARTIAL_REF
        return Map(m_la, llen, pa, plen, flags, fmt)

    def all_extents(self) -> list[Map]:
        """Every extent of the file, in order (fsck)."""
        out: list[Map] = []
        la = 0
        while la < self.size:
            e = self.map(la)
            if e.la != la:
                raise self._bad(f"extent [{e.la}, {e.end}) does not follow the one ending at {la}")
            out.append(e)
            la = e.end
        return out

    def verify(self) -> None:
        """Map the start of every lcluster and check it agrees with the extent
        list (fsck): a corrupt index that reads of whole extents would never
        visit still raises CorruptImageError here."""
        extents = self.all_extents()
        if self.whole_fragment or self.extents is not None:
            return  # all_extents() checked that the records tile the file
        # Every lcluster's own index must lead back to the head of the extent
        # that holds it.  The rest of what _map() derives (the extent's end,
        # its pcluster) depends only on that head, so locating each lcluster
        # checks as much as mapping it would, without walking its whole
        # extent again for every lcluster (quadratic in the pcluster size).
        i = 0
        head_of: tuple[int, int] | None = None  # (head lcn, start) of extents[i]
        for lcn in range(self.total):
            la = lcn * self.lcsize
            if la >= self.size:
                break
            while i < len(extents) and extents[i].end <= la:
                i += 1
                head_of = None
            if i >= len(extents):
                raise self._bad(f"lcluster {lcn} lies past the file's extent list")
            if head_of is None:
                _head, hlcn, start = self._locate(extents[i].la)
                head_of = (hlcn, start)
            _head, hlcn, start = self._locate(max(la, extents[i].la))
            if (hlcn, start) != head_of:
                raise self._bad(
                    f"lcluster {lcn} leads to the extent at {start} (head lcluster {hlcn}),"
                    f" not to the file's extent [{extents[i].la}, {extents[i].end})"
                )
