"""Extended attributes: the shared area and each inode's inline xattr body.

An xattr (name and value) used by at least ``share_min`` inodes is stored
once in the shared area and referenced by id (mkfs.erofs ``-x 2``); the
others are stored inline after the inode core.  Every xattr body carries the
name filter (COMPAT_XATTR_FILTER), so lookups of absent names stop early.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from fusefs.erofs.format import (
    EROFS_XATTR_FILTER_DEFAULT,
    EROFS_XATTR_INDEX_POSIX_ACL_ACCESS,
    EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT,
    EROFS_XATTR_INDEX_SECURITY,
    EROFS_XATTR_INDEX_TRUSTED,
    EROFS_XATTR_INDEX_USER,
    XATTR_PREFIXES,
    XattrEntry,
    XattrIbodyHeader,
    xattr_icount,
)
from fusefs.erofs.hash import xattr_filter_bit
from mkimage.errors import BuildError

Xattr = tuple[bytes, bytes]


def xattr_split_name(name: bytes) -> tuple[int, bytes] | None:
    """``(e_name_index, suffix)`` for a full xattr name, None if no short
    prefix fits (such a name needs a long prefix, or cannot be stored).
    erofs-utils: ``erofs_xattr_prefix_matches`` in ``lib/xattr.c``."""
    for index in (
        EROFS_XATTR_INDEX_POSIX_ACL_ACCESS,
        EROFS_XATTR_INDEX_POSIX_ACL_DEFAULT,
    ):
        if name == XATTR_PREFIXES[index]:
            return index, b""
    for index in (EROFS_XATTR_INDEX_USER, EROFS_XATTR_INDEX_TRUSTED, EROFS_XATTR_INDEX_SECURITY):
        prefix = XATTR_PREFIXES[index]
        if name.startswith(prefix) and len(name) > len(prefix):
            return index, name[len(prefix) :]
    return None


def encode_entry(name: bytes, value: bytes, where: str) -> bytes:
    """One ``erofs_xattr_entry`` with name suffix and value, padded to 4 bytes."""
    split = xattr_split_name(name)
    if split is None:
        raise BuildError(f"{where}: xattr {name.decode(errors='replace')!r} has no EROFS prefix")
    index, suffix = split
    if len(suffix) > 255 or len(value) > 0xFFFF:
        raise BuildError(f"{where}: xattr {name.decode(errors='replace')!r} is too long")
    raw = XattrEntry(len(suffix), index, len(value)).pack() + suffix + value
    return raw + bytes(-len(raw) % 4)


class XattrTable:
    """The shared xattr area of one image and the inline bodies of its inodes."""

    def __init__(self, per_inode: Iterable[tuple[str, Mapping[bytes, bytes]]], share_min: int = 2):
        counts: dict[Xattr, int] = {}
        for _where, xattrs in per_inode:
            for item in xattrs.items():
                counts[item] = counts.get(item, 0) + 1
        self.ids: dict[Xattr, int] = {}
        area = bytearray()
        for (name, value), n in sorted(counts.items()):
            if n >= share_min:
                self.ids[(name, value)] = len(area) // 4
                area += encode_entry(name, value, "shared xattr")
        self.area = bytes(area)

    def ibody(self, xattrs: Mapping[bytes, bytes], where: str) -> bytes:
        """The inline xattr area of an inode (empty when it has no xattrs)."""
        if not xattrs:
            return b""
        items = sorted(xattrs.items())
        shared = [self.ids[i] for i in items if i in self.ids]
        inline = b"".join(encode_entry(n, v, where) for n, v in items if (n, v) not in self.ids)
        if len(shared) > 255:
            raise BuildError(f"{where}: more than 255 shared xattrs")
        seen = 0
        for name, _value in items:
            split = xattr_split_name(name)
            if split is not None:
                seen |= 1 << xattr_filter_bit(*split)
        body = XattrIbodyHeader(EROFS_XATTR_FILTER_DEFAULT & ~seen, len(shared)).pack()
        body += b"".join(i.to_bytes(4, "little") for i in shared) + inline
        if xattr_icount(len(body)) > 0xFFFF:
            raise BuildError(f"{where}: xattrs take more than 256 KiB")
        return body
