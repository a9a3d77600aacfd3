"""The directory block codec: split, pack, unpack."""

from __future__ import annotations

import pytest

from fusefs.erofs.dirent import dirent_blocks, pack_dirent_block, unpack_dirent_block
from fusefs.errors import CorruptImageError


def test_dirent_blocks_pack_unpack() -> None:
    names = sorted([b".", b"..", *(f"name-{i:04d}".encode() * (1 + i % 5) for i in range(300))])
    entries = [(n, 100 + i, 1) for i, n in enumerate(names)]
    blocks = dirent_blocks(entries, 4096)
    assert len(blocks) > 1
    seen = []
    for blk in blocks:
        raw = pack_dirent_block(blk)
        assert len(raw) <= 4096
        got = unpack_dirent_block(raw + bytes(4096 - len(raw)), 4096)
        seen += [(e.name, e.nid, e.file_type) for e in got]
    assert seen == entries
    with pytest.raises(CorruptImageError):
        unpack_dirent_block(bytes(4096), 4096)
