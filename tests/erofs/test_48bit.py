"""48-bit inode fields no small image shows by itself, patched into the
committed mkfs.erofs 1.9.3 image and checked against the kernel's mount:
start blocks with high bits in ``i_nb`` (NLINK_1), and FLAT_PLAIN hole
files (an all-ones start block in its 32- or 48-bit width reads as zeros)."""

from __future__ import annotations

import errno
import struct
from pathlib import Path

import pytest

from fusefs.erofs import format as f
from fusefs.erofs.fs import ErofsFilesystem
from fusefs.erofs.hash import superblock_checksum
from fusefs.errors import CorruptImageError
from fusefs.vfs import open_image, resolve
from tests.conftest import Mounter, missing_kernel_erofs

IMAGE = Path(__file__).resolve().parent.parent / "corpus" / "upstream-1.9.3" / "erofs-48bit.img"
FILE = "files/text-4096"  # a compact FLAT_PLAIN inode of one block, nlink 1


def _patched(tmp_path: Path, *, nlink_1: bool, i_nb: int, i_u: int) -> Path:
    with open_image(IMAGE) as fs:
        assert isinstance(fs, ErofsFilesystem)
        inode = fs.inode(resolve(fs, FILE))
        assert (inode.version, inode.layout) == (0, f.EROFS_INODE_FLAT_PLAIN)
        iloc = inode.iloc
    out = bytearray(IMAGE.read_bytes())
    (ifmt,) = struct.unpack_from("<H", out, iloc)
    bit = 1 << f.EROFS_I_NLINK_1_BIT
    struct.pack_into("<H", out, iloc, ifmt | bit if nlink_1 else ifmt & ~bit)
    struct.pack_into("<H", out, iloc + 6, i_nb)
    struct.pack_into("<I", out, iloc + 0x10, i_u)
    sb = f.SuperBlock.unpack_from(out, f.EROFS_SUPER_OFFSET)
    region = out[1024 : 1024 + f.sb_checksum_length(sb.blkszbits)]
    out[1028:1032] = superblock_checksum(region).to_bytes(4, "little")
    path = tmp_path / f"patched-{int(nlink_1)}-{i_nb:x}-{i_u:x}.img"
    path.write_bytes(out)
    return path


def _kernel_read(mounter: Mounter, image: Path) -> bytes | int:
    """The file's bytes through the kernel's mount, or the errno of the read."""
    mnt = mounter.kernel_erofs(image)
    try:
        return (mnt / FILE).read_bytes()
    except OSError as e:
        return e.errno or -1


@pytest.mark.parametrize(
    ("nlink_1", "i_nb", "i_u"),
    [(False, 1, 0xFFFFFFFF), (True, 0xFFFF, 0xFFFFFFFF)],
    ids=["compact-32bit", "nlink1-48bit"],
)
def test_all_ones_start_block_is_a_hole(
    tmp_path: Path, mounter: Mounter, nlink_1: bool, i_nb: int, i_u: int
) -> None:
    image = _patched(tmp_path, nlink_1=nlink_1, i_nb=i_nb, i_u=i_u)
    with open_image(image) as fs:
        ino = resolve(fs, FILE)
        assert fs.read(ino, 0, 8192) == bytes(4096)
        assert fs.getattr(ino).nlink == 1
    if missing_kernel_erofs() is None:
        assert _kernel_read(mounter, image) == bytes(4096)


def test_nlink_1_start_block_has_high_bits(tmp_path: Path, mounter: Mounter) -> None:
    # all ones in 32 bits is not a hole when the address has 48: it is block
    # 0xFFFFFFFF; and i_nb = 1 puts the file at block 1 << 32 | i_u
    for i_nb, i_u, block in ((0, 0xFFFFFFFF, 0xFFFFFFFF), (1, 59, (1 << 32) | 59)):
        image = _patched(tmp_path, nlink_1=True, i_nb=i_nb, i_u=i_u)
        with open_image(image) as fs:
            ino = fs.lookup(resolve(fs, "files"), FILE.split("/")[1].encode())
            # the data's claimed place is checked when the inode is loaded
            with pytest.raises(CorruptImageError, match=f"nid .* @{block * 4096:#x}: 4096 bytes"):
                fs.read(ino, 0, 4096)
        if missing_kernel_erofs() is None:
            assert _kernel_read(mounter, image) in (errno.EIO, errno.EUCLEAN)
