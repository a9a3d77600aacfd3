"""Extended attributes: the inline area, shared entries, short and long name
prefixes (after the kernel's ``fs/erofs/xattr.c``).

The inline area is read from the inode's metadata (:attr:`ErofsInode.meta`);
the shared area and the long prefix table from the image, or from the
metabox / packed inode where the superblock puts them."""

from __future__ import annotations

from collections.abc import Callable

from fusefs.erofs import format as f
from fusefs.erofs.data import MetaBuf
from fusefs.erofs.inode import ErofsInode
from fusefs.erofs.super import ErofsSuper
from fusefs.errors import CorruptImageError
from fusefs.vfs import ImageBytes

_STRUCT = "erofs xattr"
_MAX_PREFIXES = 128


def read_long_prefixes(
    image: ImageBytes,
    sbi: ErofsSuper,
    metabox: MetaBuf | None,
    read_packed: Callable[[int, int], bytes],
) -> list[bytes]:
    """The long name prefix table: full prefix (short prefix + infix) per index.

    Without PLAIN_XATTR_PFX the table lives in the metabox inode's data when
    there is a metabox, else in the packed inode's when there is one; else
    (and always with PLAIN_XATTR_PFX) it is a plain image region."""
    sb = sbi.sb
    if not sbi.has(f.EROFS_FEATURE_INCOMPAT_XATTR_PREFIXES) or not sb.xattr_prefix_count:
        return []
    start = sb.xattr_prefix_start * 4
    plain = bool(sb.feature_compat & f.EROFS_FEATURE_COMPAT_PLAIN_XATTR_PFX)
    src: MetaBuf = image
    if not plain and metabox is not None:
        src = metabox
    in_packed = (
        not plain
        and metabox is None
        and sb.packed_nid != 0
        and sbi.has(f.EROFS_FEATURE_INCOMPAT_FRAGMENTS)
    )

    def read(off: int, n: int) -> bytes:
        if in_packed:
            data = read_packed(off, n)
            if len(data) != n:
                raise CorruptImageError(
                    "long prefix beyond the packed inode", structure=_STRUCT, offset=off
                )
            return data
        return bytes(src.slice(off, n, structure="erofs xattr prefix"))

    out = []
    pos = start
    for _ in range(min(sb.xattr_prefix_count, _MAX_PREFIXES)):
        size = int.from_bytes(read(pos, 2), "little")
        if size < 1:
            raise CorruptImageError(
                "empty long xattr prefix", structure="erofs xattr prefix", offset=pos
            )
        body = read(pos + 2, size)
        base = body[0]
        if base not in f.XATTR_PREFIXES:
            raise CorruptImageError(
                f"long prefix base index {base}", structure="erofs xattr prefix", offset=pos
            )
        out.append(f.XATTR_PREFIXES[base] + body[1:])
        pos = f.round_up(pos + 2 + size, 4)
    return out


def _entry(
    buf: MetaBuf, pos: int, end: int | None, nid: int, prefixes: list[bytes]
) -> tuple[bytes | None, bytes, int]:
    """``(full name or None if not served, value, entry size)`` of the entry
    at ``pos``, inside ``[.., end)`` (None: wherever ``buf`` ends)."""
    raw = buf.slice(pos, f.XattrEntry.SIZE, structure=_STRUCT, nid=nid)
    e = f.XattrEntry.unpack_from(raw)
    size = f.xattr_entry_size(e.e_name_len, e.e_value_size)
    if end is not None and pos + size > end:
        raise CorruptImageError(
            f"entry of {size} bytes overruns the xattr area", structure=_STRUCT, nid=nid, offset=pos
        )
    body = buf.slice(pos + 4, e.e_name_len + e.e_value_size, structure=_STRUCT, nid=nid)
    suffix = bytes(body[: e.e_name_len])
    value = bytes(body[e.e_name_len :])
    if e.e_name_index & f.EROFS_XATTR_LONG_PREFIX:
        k = e.e_name_index & f.EROFS_XATTR_LONG_PREFIX_MASK
        if k >= len(prefixes):
            raise CorruptImageError(
                f"long prefix {k} is not in the table", structure=_STRUCT, nid=nid, offset=pos
            )
        return prefixes[k] + suffix, value, size
    prefix = f.XATTR_PREFIXES.get(e.e_name_index)
    if prefix is None or e.e_name_index == f.EROFS_XATTR_INDEX_LUSTRE:
        return None, value, size  # the kernel serves no such name
    return prefix + suffix, value, size


def read_xattrs(
    shared: MetaBuf, sbi: ErofsSuper, inode: ErofsInode, prefixes: list[bytes]
) -> list[tuple[bytes, bytes]]:
    """Every xattr of an inode as ``(full name, value)``: shared ones first
    (from ``shared``: the image, or the metabox with SHARED_EA_IN_METABOX),
    then inline ones, in on-disk order."""
    if not inode.xattr_isize:
        return []
    nid = inode.nid
    meta = inode.meta
    pos = inode.xattr_pos
    end = pos + inode.xattr_isize
    if inode.xattr_isize < f.XattrIbodyHeader.SIZE:
        raise CorruptImageError("xattr area shorter than its header", structure=_STRUCT, nid=nid)
    hdr = f.XattrIbodyHeader.unpack_from(
        meta.slice(pos, f.XattrIbodyHeader.SIZE, structure=_STRUCT, nid=nid)
    )
    ids_at = pos + f.XattrIbodyHeader.SIZE
    inline_at = ids_at + 4 * hdr.h_shared_count
    if inline_at > end:
        raise CorruptImageError(
            f"{hdr.h_shared_count} shared xattr ids overrun the {inode.xattr_isize}-byte area",
            structure=_STRUCT,
            nid=nid,
        )
    out: list[tuple[bytes, bytes]] = []
    raw_ids = meta.slice(ids_at, 4 * hdr.h_shared_count, structure=_STRUCT, nid=nid)
    for i in range(hdr.h_shared_count):
        xid = int.from_bytes(bytes(raw_ids[4 * i : 4 * i + 4]), "little")
        spos = sbi.xattr_base + 4 * xid
        name, value, _ = _entry(shared, spos, None, nid, prefixes)
        if name is not None:
            out.append((name, value))
    p = inline_at
    while p + f.XattrEntry.SIZE <= end:
        name, value, size = _entry(meta, p, end, nid, prefixes)
        if name is not None:
            out.append((name, value))
        p += size
    return out
