"""What ``nommufs mkimage erofs`` was asked for, validated (shared by the
command line, the writer and the per-file workers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from mkimage.erofs.compress import MAX_EXTENT_BYTES, Codec

EXTENDED_OPTIONS: Final = (
    "ztailpacking",
    "fragments",
    "all-fragments",
    "dedupe",
    "noinline_data",
    "legacy-compress",
    "force-inode-compact",
    "force-inode-extended",
    "force-chunk-indexes",
    "nosbcrc",
    "48bit",
    "dot-omitted",
)
# the mkfs.erofs -x default is 2 (share an xattr found on 3 inodes or more);
# nommufs shares one found on 2 or more
XATTR_TOLERANCE_DEFAULT: Final = 1


@dataclass(frozen=True, slots=True)
class ErofsOptions:
    """Everything ``nommufs mkimage erofs`` was asked for, validated."""

    codec: Codec | None = None
    alt_codecs: tuple[Codec, ...] = ()  # -z A:B: B..., for --compress-hints
    pcluster_size: int = 4096
    max_extent_bytes: int = MAX_EXTENT_BYTES  # decoded bytes of one extent at most
    chunk_size: int = 0  # --chunksize: uncompressed files chunk-based (0: only for holes)
    xattr_tolerance: int = XATTR_TOLERANCE_DEFAULT  # -x: shared when on more inodes; < 0: none
    offset: int = 0  # --offset: bytes before the image in the output file
    block_size: int = 4096
    extended: frozenset[str] = frozenset()
    build_time: int = 0  # seconds; the superblock epoch
    fixed_time: bool = False  # -T / SOURCE_DATE_EPOCH given: reproducible
    all_mtimes: int | None = None  # -T without --mkfs-time: every inode's mtime
    uuid: bytes | None = None
    label: bytes = b""
    workers: int = 0  # 0: one per CPU
    durable: bool = False  # OUT is fsynced once complete: its data area is written back early
    progress: Callable[[int, int], None] | None = None

    @property
    def blkszbits(self) -> int:
        return self.block_size.bit_length() - 1

    @property
    def is_48bit(self) -> bool:
        return bool({"48bit", "dot-omitted"} & self.extended)

    @property
    def fragments(self) -> bool:
        return bool({"fragments", "all-fragments"} & self.extended)

    @property
    def codecs(self) -> tuple[Codec, ...]:
        """Every algorithm of the image, the default one first."""
        return () if self.codec is None else (self.codec, *self.alt_codecs)
