"""The superblock: validation, feature gating, compression configurations
(after the kernel's ``fs/erofs/super.c``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fusefs.erofs import format as f
from fusefs.erofs.hash import superblock_checksum, verify_superblock_checksum
from fusefs.errors import CorruptImageError, UnsupportedFeatureError
from fusefs.vfs import ImageBytes

_SB_STRUCT = "erofs superblock"


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """What the superblock says about compression."""

    available_algs: int  # bitmap of algorithm ids the image may use
    lz4_max_distance: int
    lz4_max_pclusterblks: int  # >= 1
    lzma_dict_size: int = 0
    deflate_windowbits: int = 15
    zstd_max_window: int = 1 << 20
    records: dict[int, bytes] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErofsSuper:
    """A validated superblock and what follows from it."""

    sb: f.SuperBlock
    blkszbits: int
    block_size: int
    meta_base: int  # byte offset of nid 0
    xattr_base: int  # byte offset of shared xattr id 0
    root_nid: int
    compr: CompressionConfig
    checksum_ok: bool | None  # None: the image has no checksum
    metabox_nid: int = 0  # METABOX: the inode whose data holds metabox nids' slots

    @property
    def incompat(self) -> int:
        return self.sb.feature_incompat

    def has(self, feature: int) -> bool:
        return bool(self.sb.feature_incompat & feature)

    def nid_offset(self, nid: int) -> int:
        """Where inode ``nid`` starts: a byte offset in the image, or in the
        metabox inode's data when the nid has the metabox bit."""
        if f.nid_in_metabox(nid):
            return (nid & f.EROFS_DIRENT_NID_MASK) << f.EROFS_ISLOTBITS
        return self.meta_base + (nid << f.EROFS_ISLOTBITS)


def probe(image: ImageBytes) -> bool:
    """True if the image has the EROFS magic at byte 1024."""
    if image.size < f.EROFS_SUPER_OFFSET + f.SuperBlock.SIZE:
        return False
    raw = image.slice(f.EROFS_SUPER_OFFSET, 4, structure="erofs superblock")
    magic = int.from_bytes(raw, "little")
    return magic == f.EROFS_SUPER_MAGIC_V1


def read_super(image: ImageBytes) -> ErofsSuper:
    """Parse and check the superblock in the kernel's order: magic, block
    size, dirblkbits, checksum, incompat features, sb size, compression
    configurations, device table.  Raises CorruptImageError or
    UnsupportedFeatureError naming what is wrong."""
    off = f.EROFS_SUPER_OFFSET
    raw = image.slice(off, f.SuperBlock.SIZE, structure=_SB_STRUCT)
    sb = f.SuperBlock.unpack_from(raw)
    if sb.magic != f.EROFS_SUPER_MAGIC_V1:
        raise CorruptImageError(f"bad magic {sb.magic:#010x}", structure=_SB_STRUCT, offset=off)
    if not f.EROFS_MIN_BLKSZBITS <= sb.blkszbits <= f.EROFS_MAX_BLKSZBITS:
        raise CorruptImageError(
            f"block size bits {sb.blkszbits} not in 9..16", structure=_SB_STRUCT, offset=off
        )
    bs = 1 << sb.blkszbits
    if sb.dirblkbits:
        raise UnsupportedFeatureError(f"erofs superblock: dirblkbits {sb.dirblkbits} (must be 0)")
    checksum_ok: bool | None = None
    if sb.feature_compat & f.EROFS_FEATURE_COMPAT_SB_CHKSUM:
        region = image.slice(off, f.sb_checksum_length(sb.blkszbits), structure=_SB_STRUCT)
        checksum_ok = verify_superblock_checksum(region)
        if not checksum_ok:
            raise CorruptImageError(
                f"checksum mismatch (stored {sb.checksum:#010x}, computed "
                f"{superblock_checksum(region):#010x})",
                structure=_SB_STRUCT,
                offset=off + 4,
            )
    # every incompat feature the 6.18 kernel knows is read here; DEVICE_TABLE
    # only without extra devices (refused below; the bit doubles as COMPR_HEAD2)
    unknown = sb.feature_incompat & ~f.EROFS_ALL_FEATURE_INCOMPAT
    if unknown:
        names = ", ".join(f.feature_names(unknown, f.INCOMPAT_NAMES))
        raise UnsupportedFeatureError(f"erofs: unknown incompatible features {names}")
    if sb.sb_size > 4096 - off:
        raise CorruptImageError(
            f"superblock size {sb.sb_size} too large", structure=_SB_STRUCT, offset=off
        )
    image.check(off, sb.sb_size, structure=_SB_STRUCT)
    if sb.feature_incompat & f.EROFS_FEATURE_INCOMPAT_DEVICE_TABLE and sb.extra_devices:
        raise UnsupportedFeatureError(
            f"erofs: {sb.extra_devices} extra devices (multi-device/blob images) are not supported"
        )
    if f.nid_in_metabox(sb.packed_nid):
        raise CorruptImageError(
            f"packed nid {sb.packed_nid:#x} points into the metabox",
            structure=_SB_STRUCT,
            offset=off,
        )
    metabox_nid = 0
    if sb.feature_incompat & f.EROFS_FEATURE_INCOMPAT_METABOX:
        if sb.sb_size <= f.EROFS_SB_METABOX_NID_OFFSET:
            raise CorruptImageError(
                f"metabox feature with a {sb.sb_size}-byte superblock (no metabox_nid slot)",
                structure=_SB_STRUCT,
                offset=off,
            )
        metabox_nid = f.metabox_nid_from(
            image.slice(off + f.EROFS_SB_METABOX_NID_OFFSET, 16, structure=_SB_STRUCT), 0
        )
        if f.nid_in_metabox(metabox_nid):
            # erofs: the metabox inode cannot live in itself (self-loop)
            raise CorruptImageError(
                f"metabox nid {metabox_nid:#x} points into the metabox",
                structure=_SB_STRUCT,
                offset=off + f.EROFS_SB_METABOX_NID_OFFSET,
            )
    compr = _read_compr_cfgs(image, sb)
    meta_base = sb.meta_blkaddr * bs
    xattr_base = sb.xattr_blkaddr * bs
    return ErofsSuper(
        sb=sb,
        blkszbits=sb.blkszbits,
        block_size=bs,
        meta_base=meta_base,
        xattr_base=xattr_base,
        root_nid=sb.root_nid,
        compr=compr,
        checksum_ok=checksum_ok,
        metabox_nid=metabox_nid,
    )


def _read_compr_cfgs(image: ImageBytes, sb: f.SuperBlock) -> CompressionConfig:
    if not sb.feature_incompat & f.EROFS_FEATURE_INCOMPAT_COMPR_CFGS:
        # u1 is lz4_max_distance; only LZ4 with one-block pclusters
        return CompressionConfig(
            available_algs=1 << f.Z_EROFS_COMPRESSION_LZ4,
            lz4_max_distance=sb.u1,
            lz4_max_pclusterblks=1,
        )
    algs = sb.u1
    if algs & ~((1 << f.Z_EROFS_COMPRESSION_MAX) - 1):
        raise UnsupportedFeatureError(f"erofs: unknown compression algorithms in bitmap {algs:#x}")
    pos = f.EROFS_SUPER_OFFSET + sb.sb_size
    records: dict[int, bytes] = {}
    for alg in range(f.Z_EROFS_COMPRESSION_MAX):
        if not algs & (1 << alg):
            continue
        pos = f.round_up(pos, 4)
        hdr = image.slice(pos, 2, structure="erofs compression config")
        length = int.from_bytes(bytes(hdr), "little") or 65536
        size = f.COMPR_CFG_SIZES[alg]
        if length < size:
            raise CorruptImageError(
                f"{f.ALGORITHM_NAMES[alg]} config record of {length} bytes (need {size})",
                structure="erofs compression config",
                offset=pos,
            )
        records[alg] = bytes(image.slice(pos + 2, length, structure="erofs compression config"))
        pos += 2 + length
    lz4_dist, lz4_blks = sb.u1, 1
    lzma_dict, windowbits, zstd_window = 0, 15, 1 << 20
    if f.Z_EROFS_COMPRESSION_LZ4 in records:
        c = f.Lz4Cfgs.unpack_from(records[f.Z_EROFS_COMPRESSION_LZ4])
        lz4_dist, lz4_blks = c.max_distance, c.max_pclusterblks or 1
        if lz4_blks << sb.blkszbits > f.Z_EROFS_PCLUSTER_MAX_SIZE:
            raise CorruptImageError(
                f"lz4 max_pclusterblks {lz4_blks} exceeds 1 MiB",
                structure="erofs compression config",
            )
    if f.Z_EROFS_COMPRESSION_LZMA in records:
        m = f.LzmaCfgs.unpack_from(records[f.Z_EROFS_COMPRESSION_LZMA])
        if m.format or not 4096 <= m.dict_size <= 8 << 20:
            raise UnsupportedFeatureError(
                f"erofs: lzma config format {m.format} dict_size {m.dict_size}"
            )
        lzma_dict = m.dict_size
    if f.Z_EROFS_COMPRESSION_DEFLATE in records:
        d = f.DeflateCfgs.unpack_from(records[f.Z_EROFS_COMPRESSION_DEFLATE])
        if d.windowbits > 15:
            raise UnsupportedFeatureError(f"erofs: deflate windowbits {d.windowbits} > 15")
        windowbits = d.windowbits
    if f.Z_EROFS_COMPRESSION_ZSTD in records:
        z = f.ZstdCfgs.unpack_from(records[f.Z_EROFS_COMPRESSION_ZSTD])
        if z.format or z.windowlog > 10:
            raise UnsupportedFeatureError(
                f"erofs: zstd config format {z.format} windowlog {z.windowlog}"
            )
        zstd_window = 1 << (z.windowlog + 10)
    return CompressionConfig(
        available_algs=algs,
        lz4_max_distance=lz4_dist,
        lz4_max_pclusterblks=lz4_blks,
        lzma_dict_size=lzma_dict,
        deflate_windowbits=windowbits,
        zstd_max_window=zstd_window,
        records=records,
    )
