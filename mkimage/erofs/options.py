"""What ``nommufs mkimage erofs`` was asked for, validated (shared by the
command line, the writer and the per-file workers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mkimage.erofs.compress import Codec

EXTENDED_OPTIONS: Final = (
    "ztailpacking",
    "fragments",
    "dedupe",
    "noinline_data",
    "legacy-compress",
    "force-inode-compact",
    "force-inode-extended",
    "nosbcrc",
)


@dataclass(frozen=True, slots=True)
class ErofsOptions:
    """Everything ``nommufs mkimage erofs`` was asked for, validated."""

    codec: Codec | None = None
    pcluster_size: int = 4096
    block_size: int = 4096
    extended: frozenset[str] = frozenset()
    build_time: int = 0  # seconds; the superblock epoch
    fixed_time: bool = False  # -T / SOURCE_DATE_EPOCH given: reproducible
    all_mtimes: int | None = None  # -T without --mkfs-time: every inode's mtime
    uuid: bytes | None = None
    label: bytes = b""
    workers: int = 0  # 0: one per CPU
    progress: Callable[[int, int], None] | None = None

    @property
    def blkszbits(self) -> int:
        return self.block_size.bit_length() - 1
