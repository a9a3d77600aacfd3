"""The hand-made hostile images of issue 13, built deterministically:
``scripts/make-hostile-corpus [DIR]`` (default tests/corpus) writes them and
``hostile.txt`` saying how each was made; the tests check the committed
bytes are what this module makes.

Each starts as a small image from nommufs's own ``mkimage erofs`` (``-T0
--all-root``: byte-identical every time) and then has a few bytes patched,
with the superblock checksum recomputed.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Final

from fusefs.erofs import format as f
from fusefs.erofs.hash import superblock_checksum

REPO: Final = Path(__file__).resolve().parents[2]
CORPUS: Final = REPO / "tests" / "corpus"


def mkimage(out: Path, src: Path, *flags: str) -> bytearray:
    cmd = [sys.executable, "-m", "mkimage", "erofs", "-q", "-T0", "--all-root", *flags,
           str(out), str(src)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=120)
    return bytearray(out.read_bytes())


def superblock(img: bytearray) -> f.SuperBlock:
    return f.SuperBlock.unpack_from(img, f.EROFS_SUPER_OFFSET)


def put_superblock(img: bytearray, sb: f.SuperBlock) -> None:
    """Write ``sb`` back with its checksum made right."""
    img[f.EROFS_SUPER_OFFSET : f.EROFS_SUPER_OFFSET + f.SuperBlock.SIZE] = sb.pack()
    length = f.sb_checksum_length(sb.blkszbits)
    region = bytes(img[1024 : 1024 + length])
    img[1028:1032] = superblock_checksum(region).to_bytes(4, "little")


def inode_offset(img: bytearray, nid: int) -> int:
    sb = superblock(img)
    return (sb.meta_blkaddr << sb.blkszbits) + (nid << f.EROFS_ISLOTBITS)


def nid_of(image: Path, path: bytes) -> int:
    from fusefs.vfs import open_image, resolve

    with open_image(image) as fs:
        return int(fs.describe_inode(resolve(fs, path))["nid"])


# -- the images -----------------------------------------------------------------------


RAW_BIN: Final = random.Random(13).randbytes(8192)


def packed_loop(tmp: Path) -> bytes:
    """Fragments image (``-z lz4hc -E fragments``) of ``small`` (a fragment),
    ``d/other``, ``big`` (fragments too), ``raw.bin`` (8 KiB that do not
    compress: its first block a pcluster, its tail a fragment), a symlink
    and a directory; the superblock's ``packed_nid`` then set to ``small``'s
    nid: reading any fragment reads ``small``, whose own data is a fragment
    -- a loop."""
    src = tmp / "src"
    (src / "d").mkdir(parents=True)
    (src / "small").write_bytes(b"hello fragment\n")
    (src / "d" / "other").write_bytes(b"x\n")
    (src / "raw.bin").write_bytes(RAW_BIN)
    (src / "big").write_bytes(b"nommufs " * 3000)
    os.symlink("d/other", src / "link")
    img_path = tmp / "packed.img"
    img = mkimage(img_path, src, "-z", "lz4hc", "-E", "fragments")
    nid = nid_of(img_path, b"small")
    put_superblock(img, dataclasses.replace(superblock(img), packed_nid=nid))
    return bytes(img)


def chunk_hole_huge(tmp: Path) -> bytes:
    """8 KiB: one chunk-based file (``--chunksize 4096 -E force-inode-extended``
    of a 4 KiB hole), then its extended inode's size set to 2^43 and its
    chunk format to chunkbits 43 (blkszbits 12 + 31), so one chunk whose index
    is the null address (a hole) covers it all.  The kernel mounts it and
    reads zeros."""
    src = tmp / "src"
    src.mkdir()
    with open(src / "hole", "wb") as out:
        out.truncate(4096)
    img_path = tmp / "hole.img"
    img = mkimage(img_path, src, "--chunksize", "4096", "-E", "force-inode-extended")
    off = inode_offset(img, nid_of(img_path, b"hole"))
    ino = f.ExtendedInode.unpack_from(img, off)
    assert ino.i_u & f.EROFS_CHUNK_FORMAT_BLKBITS_MASK == 0
    ino = dataclasses.replace(ino, i_size=1 << 43, i_u=(ino.i_u & ~0x1F) | 31)
    img[off : off + f.ExtendedInode.SIZE] = ino.pack()
    return bytes(img)


HOSTILE_NAME: Final = b"a\n/bc"
ESC_NAME: Final = b"\x1b[31mred\x1b[0m"


def hostile_names(tmp: Path) -> bytes:
    """Names no terminal should see raw: ``esc/<ESC>[31mred<ESC>[0m`` (a file
    name Linux allows, written by mkimage as it is) and ``d/a\\n/bc`` (a
    newline and a slash: patched over the 5-byte name ``aXYbc`` of the only
    entry of ``d``, so the directory stays sorted)."""
    src = tmp / "src"
    (src / "d").mkdir(parents=True)
    (src / "esc").mkdir()
    (src / "d" / "aXYbc").write_bytes(b"hidden\n")
    (src / "esc" / os.fsdecode(ESC_NAME)).write_bytes(b"red\n")
    (src / "plain").write_bytes(b"plain\n")
    img = mkimage(tmp / "names.img", src)
    at = img.find(b"aXYbc")
    assert at > 0 and img.find(b"aXYbc", at + 1) < 0
    img[at : at + 5] = HOSTILE_NAME
    return bytes(img)


ZSTD_BYTE: Final = b"x"


def zstd_rle_frame(size: int, byte: bytes = ZSTD_BYTE) -> bytes:
    """A zstd frame, written by hand, that decodes to ``size`` copies of
    ``byte``: RLE blocks of 128 KiB (3-byte header and the byte), a 128 KiB
    window, no content size or checksum: 4 bytes per 128 KiB."""
    block = 128 << 10
    out = bytearray(b"\x28\xb5\x2f\xfd\x00\x38")  # magic, descriptor, window 2^17
    while size:
        n = min(block, size)
        size -= n
        out += ((n << 3) | (1 << 1) | (not size)).to_bytes(3, "little") + byte  # RLE, last?
    return bytes(out)


DEDUPE_EXTENT_BITS: Final = 23  # 8 MiB per extent: lclusterbits 12 + 11


def dedupe_bomb(tmp: Path, extents: int | None = None) -> bytes:
    """12 KiB that claim 3.9 GiB, all of one 262-byte pcluster: ``-z zstd -E
    48bit`` of ``big`` (20000 bytes of ``x``: one pcluster in block 1, the
    compact inode at the end of the metadata), then the pcluster replaced by
    a hand-made zstd frame of 8 MiB of ``x`` (RLE blocks), and the inode made
    COMPRESSED_FULL with encoded extents (8-byte records, lcluster bits 23,
    ``h_clusterbits`` 11) filling the rest of the metadata block: 495 records,
    each an 8 MiB extent of that same pcluster, the size 495 x 8 MiB.  Valid:
    the kernel (6.18) mounts it and reads 3.9 GiB of ``x``, fsck.erofs 1.9.3
    ``--extract`` finds no errors (1.5 predates 48bit); ``extents`` gives a
    smaller variant (for measuring)."""
    src = tmp / "src"
    src.mkdir()
    (src / "big").write_bytes(ZSTD_BYTE * 20000)
    img_path = tmp / "bomb.img"
    img = mkimage(img_path, src, "-z", "zstd", "-E", "48bit")
    bs = 1 << superblock(img).blkszbits
    off = inode_offset(img, nid_of(img_path, b"big"))
    ino = f.CompactInode.unpack_from(img, off)
    assert f.i_format_layout(ino.i_format) == f.EROFS_INODE_COMPRESSED_COMPACT
    header = f.map_header_pos(off, f.CompactInode.SIZE, 0)
    records = header + f.MapHeader.SIZE  # 8-aligned already: recsz 8
    room = (-records % bs or bs) // 8
    count = room if extents is None else extents
    end = records + 8 * room
    # the inode is the last thing in its block: after its own short index, zeros
    assert 0 < count <= room and img[records + 64 : end] == bytes(end - records - 64)
    size = count << DEDUPE_EXTENT_BITS
    ino = dataclasses.replace(
        ino, i_format=f.i_format(0, f.EROFS_INODE_COMPRESSED_FULL), i_size=size
    )
    img[off : off + f.CompactInode.SIZE] = ino.pack()
    advise = f.Z_EROFS_ADVISE_EXTENTS | (1 << f.Z_EROFS_ADVISE_EXTRECSZ_BIT)  # 8-byte records
    clusterbits = DEDUPE_EXTENT_BITS - superblock(img).blkszbits
    img[header:records] = f.MapHeader(0, 0, advise, 0, clusterbits).pack()
    frame = zstd_rle_frame(1 << DEDUPE_EXTENT_BITS)
    pa = bs  # the one pcluster, block 1: zero padding first (0PADDING), the frame at its end
    assert pa == 4096
    img[pa : pa + bs] = frame.rjust(bs, b"\0")
    plen = ((f.Z_EROFS_COMPRESSION_ZSTD + 1) << f.Z_EROFS_EXTENT_PLEN_FMT_BIT) | bs
    rec = f.ZExtent(plen, pa, 0, 0, 0).pack(8)
    img[records : records + 8 * count] = rec * count
    return bytes(img)


IMAGES: Final[dict[str, Callable[[Path], bytes]]] = {
    "erofs-packed-loop.img": packed_loop,
    # valid (the kernel mounts it), so not among the erofs-*.img every test expects reported
    "valid-erofs-chunk-hole-2e43.img": chunk_hole_huge,
    "erofs-hostile-names.img": hostile_names,
    "valid-erofs-dedupe-bomb.img": dedupe_bomb,
}


def build(name: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="nommufs-hostile-") as tmp:
        return IMAGES[name](Path(tmp))


def describe() -> str:
    lines = [
        "Hand-made hostile images (issue 13), written by scripts/make-hostile-corpus",
        "(tests/hostile/corpus.py); tests/hostile checks these bytes are what it makes.",
        "",
    ]
    for name, make in IMAGES.items():
        doc = " ".join((make.__doc__ or "").split())
        lines += [f"{name}:", f"  {doc}", ""]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    into = Path(argv[0]) if argv else CORPUS
    into.mkdir(parents=True, exist_ok=True)
    for name in IMAGES:
        (into / name).write_bytes(build(name))
        print(f"{into / name}")
    (into / "hostile.txt").write_text(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
