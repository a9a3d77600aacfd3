"""The directory block codec: dirents and names packed into one block.

A directory's data is a run of blocks.  Each block starts with one 12-byte
``struct erofs_dirent`` (:class:`fusefs.erofs.format.Dirent`) per entry,
followed by the entries' names back to back, without NULs, in name order;
so the first dirent's ``nameoff`` also says how many dirents the block has,
and a name ends where the next one starts.  The writer splits and packs
(:func:`dirent_blocks`, :func:`pack_dirent_block`), the reader unpacks
(:func:`unpack_dirent_block`) for readdir and lookup.

The kernel decodes in ``fs/erofs/dir.c`` (``erofs_fill_dentries``) and
``fs/erofs/namei.c`` (``find_target_dirent``); erofs-utils splits in
``lib/inode.c`` (``erofs_prepare_dir_file``) and packs in ``fill_dirblock``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from fusefs.erofs.format import DIRENT_STRUCT, EROFS_NAME_LEN, Dirent
from fusefs.errors import CorruptImageError


class DirEntryRecord(NamedTuple):
    """One decoded entry of a directory block."""

    name: bytes
    nid: int
    file_type: int
    nameoff: int


def dirent_blocks(
    entries: Sequence[tuple[bytes, int, int]], block_size: int
) -> list[list[tuple[bytes, int, int]]]:
    """Split sorted ``(name, nid, file_type)`` entries into directory blocks
    the way mkfs fills them: greedily, an entry (12 bytes + name) that does
    not fit in the rest of the block starts the next one."""
    blocks: list[list[tuple[bytes, int, int]]] = []
    cur: list[tuple[bytes, int, int]] = []
    used = 0
    for e in entries:
        need = Dirent.SIZE + len(e[0])
        if cur and used + need > block_size:
            blocks.append(cur)
            cur, used = [], 0
        cur.append(e)
        used += need
    if cur:
        blocks.append(cur)
    return blocks


def pack_dirent_block(entries: Sequence[tuple[bytes, int, int]]) -> bytes:
    """One directory block's used bytes (no zero fill): dirents, then names
    packed back to back (erofs: nameoff[i+1] == nameoff[i] + len(name[i]))."""
    nameoff = Dirent.SIZE * len(entries)
    out = bytearray(nameoff)
    for i, (name, nid, ftype) in enumerate(entries):
        # the struct itself: a Dirent object per entry costs a directory
        # build several times what packing it does
        DIRENT_STRUCT.pack_into(out, i * Dirent.SIZE, nid, nameoff, ftype, 0)
        nameoff += len(name)
    out += b"".join([e[0] for e in entries])
    return bytes(out)


def unpack_dirent_block(
    block: bytes | bytearray | memoryview,
    maxsize: int,
    *,
    nid: int | None = None,
    offset: int | None = None,
) -> list[DirEntryRecord]:
    """Decode one directory block of which ``maxsize`` bytes are in use
    (``min(block_size, i_size - block_start)``).  The last name ends at the
    first NUL or at ``maxsize``.  Raises CorruptImageError on a malformed block."""

    def bad(reason: str) -> CorruptImageError:
        return CorruptImageError(reason, structure="erofs dirent block", nid=nid, offset=offset)

    if maxsize < Dirent.SIZE or len(block) < maxsize:
        raise bad(f"directory block of {maxsize} bytes is too short for a dirent")
    mv = memoryview(block)
    nameoff0 = DIRENT_STRUCT.unpack_from(mv, 0)[1]
    if nameoff0 < Dirent.SIZE or nameoff0 >= maxsize or nameoff0 % Dirent.SIZE:
        raise bad(f"first nameoff {nameoff0} is invalid")
    count = nameoff0 // Dirent.SIZE
    heads = [DIRENT_STRUCT.unpack_from(mv, i * Dirent.SIZE) for i in range(count)]
    out: list[DirEntryRecord] = []
    for i, (dnid, nameoff, ftype, _res) in enumerate(heads):
        if i + 1 < count:
            end = heads[i + 1][1]
        else:
            raw = bytes(mv[nameoff:maxsize]) if nameoff < maxsize else b""
            nul = raw.find(b"\0")
            end = nameoff + (nul if nul >= 0 else len(raw))
        if nameoff < nameoff0 or end > maxsize or end <= nameoff:
            raise bad(f"dirent {i}: name [{nameoff}, {end}) is outside the block or empty")
        if end - nameoff > EROFS_NAME_LEN:
            raise bad(f"dirent {i}: name of {end - nameoff} bytes is longer than 255")
        out.append(DirEntryRecord(bytes(mv[nameoff:end]), dnid, ftype, nameoff))
    return out
