"""Name lookup: binary search over directory blocks by their first name,
then over the names of one block (after the kernel's ``fs/erofs/namei.c``).
A directory whose names are not sorted gives ENOENT, as in the kernel;
``fsck`` reports the order."""

from __future__ import annotations

import bisect

from fusefs.erofs.dir import BlockReader
from fusefs.erofs.dirent import DirEntryRecord


def find_entry(get_block: BlockReader, nblocks: int, name: bytes) -> DirEntryRecord | None:
    """The dirent named ``name`` or None.  O(log blocks + log entries)."""
    head, back = 0, nblocks - 1
    candidate: list[DirEntryRecord] | None = None
    while head <= back:
        mid = (head + back) // 2
        entries = get_block(mid)
        first = entries[0].name
        if first == name:
            return entries[0]
        if first < name:
            candidate = entries
            head = mid + 1
        else:
            back = mid - 1
    if candidate is None:
        return None
    names = [e.name for e in candidate]
    i = bisect.bisect_left(names, name)
    if i < len(names) and names[i] == name:
        return candidate[i]
    return None
