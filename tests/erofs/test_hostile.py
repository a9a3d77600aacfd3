"""Corrupt and hostile EROFS images: opening, walking every inode, reading
everything and fsck raise only FsError (CorruptImageError naming the
structure and nid/offset, or UnsupportedFeatureError), in bounded time.

``tests/corpus/erofs-*.img`` are small images with one targeted corruption
each (made from mkfs.erofs images); every one must be reported, not just
survived."""

from __future__ import annotations

import contextlib
import datetime
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusefs.erofs import format as f
from fusefs.erofs.hash import superblock_checksum
from fusefs.errors import CorruptImageError, FsError, NotFoundError, UnsupportedFeatureError
from fusefs.vfs import MemoryConfig, open_image, walk
from tests.conftest import mkfs_erofs

CORPUS = Path(__file__).resolve().parent.parent / "corpus"


def exercise(path: Path) -> list[str]:
    """Open, walk, read every file and xattr, readlink, fsck; the FsErrors seen."""
    problems: list[str] = []
    try:
        fs = open_image(path, MemoryConfig(arena_bytes=4 << 20))
    except FsError as e:
        return [f"open: {e}"]
    try:
        problems += fs.fsck_extra()
        for item in walk(fs, on_error=lambda p, e: problems.append(f"{p!r}: {e}")):
            try:
                for name in fs.listxattr(item.ino):
                    fs.getxattr(item.ino, name)
                if item.attr.is_reg:
                    pos = 0
                    while pos < min(item.attr.size, 4 << 20):
                        chunk = fs.read(item.ino, pos, 256 << 10)
                        if not chunk:
                            break
                        pos += len(chunk)
                    fs.read(item.ino, item.attr.size // 2, 5000)
                elif item.attr.is_lnk:
                    fs.readlink(item.ino)
                elif item.attr.is_dir:
                    with contextlib.suppress(NotFoundError):
                        fs.lookup(item.ino, b"no-such-name")
                fs.describe_inode(item.ino)
            except FsError as e:
                problems.append(f"{item.path!r}: {e}")
        fs.describe()
        st_ = fs.memory_stats()
        assert st_["vmaps_live"] == 0
    finally:
        fs.close()
    return problems


@pytest.mark.parametrize("image", sorted(CORPUS.glob("erofs-*.img")), ids=lambda p: p.name)
def test_corpus_reports_every_corruption(image: Path) -> None:
    problems = exercise(image)
    assert problems, f"{image.name}: corruption went unnoticed"
    for line in problems:
        assert "\n" not in line


def test_corpus_errors_are_typed() -> None:
    with pytest.raises(UnsupportedFeatureError, match="unknown incompatible"):
        open_image(CORPUS / "erofs-unknown-incompat.img")
    with pytest.raises(CorruptImageError, match="checksum"):
        open_image(CORPUS / "erofs-bad-checksum.img")
    with pytest.raises(CorruptImageError, match="root inode is not a directory"):
        open_image(CORPUS / "erofs-root-not-dir.img")


# -- random corruption of small valid images ----------------------------------------------

VARIANTS = {
    "plain": [],
    "lz4hc": ["-zlz4hc"],
    "legacy": ["-zlz4", "-Elegacy-compress", "-x1"],
    "ztail-16k": ["-zlz4hc", "-C16384", "-Eztailpacking"],
    "chunks": ["--chunksize=8192", "-Eforce-chunk-indexes"],
}


OUR_VARIANTS = {
    "ours-zstd-fragments": ["-z", "zstd", "-C", "16384", "-E", "fragments,ztailpacking"],
    "ours-deflate-dedupe": ["-z", "deflate", "-E", "dedupe"],
}
REPO = Path(__file__).resolve().parents[2]
# 48-bit layouts (encoded extents, NLINK_1) and a metabox, made by mkfs.erofs 1.9.3
UPSTREAM = {
    "upstream-48bit-fragments": "erofs-48bit-zstd-fragments-dedupe.img",
    "upstream-metabox": "erofs-metabox-lz4hc.img",
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("hostile")
    src = root / "src"
    (src / "d" / "e").mkdir(parents=True)
    rng = random.Random(9)
    words = [b"erofs ", b"page ", b"folio\n", b"nommu "]
    for i, size in enumerate((0, 1, 3000, 4096, 9000, 70000)):
        (src / f"f{i}").write_bytes(b"".join(rng.choice(words) for _ in range(size))[:size])
    (src / "d" / "r").write_bytes(rng.randbytes(10000))
    (src / "d" / "e" / "z").write_bytes(bytes(20000))
    os.symlink("d/e/z", src / "lnk")
    os.symlink("y" * 300, src / "long-lnk")
    for i in range(40):
        (src / "d" / f"n{i:03d}").write_bytes(b"%d" % i)
    for name in ("f1", "f2", "d/r"):
        os.setxattr(src / name, "user.shared", b"same")
    os.setxattr(src / "f3", "user.own", b"x" * 50)
    out = {
        name: mkfs_erofs(root / f"{name}.img", src, "-T0", *opts).read_bytes()
        for name, opts in VARIANTS.items()
    }
    # algorithms and features mkfs.erofs 1.5 lacks, from our writer
    for name, opts in OUR_VARIANTS.items():
        img = root / f"{name}.img"
        cmd = [sys.executable, "-m", "mkimage", "erofs", *opts, str(img), str(src)]
        subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=240)
        out[name] = img.read_bytes()
    for name, file in UPSTREAM.items():
        out[name] = (CORPUS / "upstream-1.9.3" / file).read_bytes()
    return out


mutation = st.tuples(
    st.floats(0, 1),  # where: fraction of the metadata-heavy first blocks or the whole image
    st.booleans(),  # whole image or first 3 blocks
    st.sampled_from(["byte", "u16", "u32"]),
    st.one_of(
        st.integers(0, 255),
        st.sampled_from([0, 1, 2, 0x7FF, 0x800, 0xFFFF, 0xFFFFFFFF, 0x80000000, 4096]),
        st.integers(0, 2**32 - 1),
    ),
)


def corrupt(
    data: bytes, mutations: list[tuple[float, bool, str, int]], fix_checksum: bool
) -> bytes:
    out = bytearray(data)
    for where, whole, kind, value in mutations:
        span = len(out) if whole else min(len(out), 3 * 4096)
        pos = min(int(where * span), len(out) - 4)
        if kind == "byte":
            out[pos] = value & 0xFF
        elif kind == "u16":
            struct.pack_into("<H", out, pos, value & 0xFFFF)
        else:
            struct.pack_into("<I", out, pos, value & 0xFFFFFFFF)
    sb = f.SuperBlock.unpack_from(out, f.EROFS_SUPER_OFFSET)
    if fix_checksum and f.EROFS_MIN_BLKSZBITS <= sb.blkszbits <= 12:
        region = out[1024 : 1024 + f.sb_checksum_length(sb.blkszbits)]
        out[1028:1032] = superblock_checksum(region).to_bytes(4, "little")
    return bytes(out)


@pytest.mark.parametrize("variant", [*VARIANTS, *OUR_VARIANTS, *UPSTREAM])
@settings(
    max_examples=120,
    deadline=datetime.timedelta(seconds=10),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
@given(mutations=st.lists(mutation, min_size=1, max_size=6), fix_checksum=st.booleans())
def test_random_corruption_raises_only_fserror(
    variant: str,
    images: dict[str, bytes],
    tmp_path: Path,
    mutations: list[tuple[float, bool, str, int]],
    fix_checksum: bool,
) -> None:
    path = tmp_path / f"{variant}-corrupt.img"
    path.write_bytes(corrupt(images[variant], mutations, fix_checksum))
    exercise(path)  # anything but FsError fails the test; the deadline bounds the time


def test_truncated_images(images: dict[str, bytes], tmp_path: Path) -> None:
    data = images["lz4hc"]
    for cut in (0, 100, 1024, 1100, 1152, 4096, 8192, len(data) - 4096, len(data) - 1):
        path = tmp_path / f"cut{cut}.img"
        path.write_bytes(data[:cut])
        assert exercise(path)



def test_data_read_from_an_image_file_cut_short_is_corruption(tmp_path: Path) -> None:
    """Pcluster data is read from the image file like a bio (``preadv``), not
    through the mapping: a file truncated under an open image gives a short
    read, said as corruption naming the structure, never SIGBUS."""
    from fusefs.vfs import ImageBytes

    path = tmp_path / "img"
    path.write_bytes(bytes(range(256)) * 64)  # 16 KiB
    image = ImageBytes(path)
    try:
        buf = bytearray(8192)
        image.read_into(4096, [memoryview(buf)[:4096], memoryview(buf)[4096:]],
                        structure="erofs pcluster")  # fmt: skip
        assert bytes(buf) == path.read_bytes()[4096 : 4096 + 8192]
        with pytest.raises(CorruptImageError, match="outside the 16384-byte image"):
            image.read_into(12288, [memoryview(buf)], structure="erofs pcluster")
        os.truncate(path, 10000)
        with pytest.raises(CorruptImageError, match="shorter than when it was opened") as info:
            image.read_into(4096, [memoryview(buf)], structure="erofs pcluster", nid=36)
        assert info.value.structure == "erofs pcluster" and info.value.nid == 36
    finally:
        image.close()
