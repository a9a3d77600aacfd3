"""Images made by our own writer (``python -m mkimage erofs``) read back through
the reader: the algorithms and layouts mkfs.erofs 1.5 cannot make (zstd,
raw deflate, block sizes other than 4096), plus ztailpacking and dedupe."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from fusefs.erofs.fs import ErofsFilesystem
from fusefs.errors import OutOfMemoryError
from fusefs.vfs import MemoryConfig, open_image, walk
from tests.trees import DEFAULT_FIELDS, build_small_tree, diff_trees, snapshot, snapshot_fs

ROOT = Path(__file__).resolve().parents[2]
WRITER = ROOT / "mkimage" / "erofs" / "writer.py"

VARIANTS = [
    ("zstd-64k", ["-z", "zstd", "-C", "65536"], "zstd"),
    ("deflate", ["-z", "deflate"], "deflate"),
    ("zstd-2k-ztail", ["-z", "zstd", "-b", "2048", "-C", "8192", "-E", "ztailpacking"], "zstd"),
    ("lz4hc-1k", ["-z", "lz4hc", "-b", "1024", "-C", "16384"], "lz4"),
    ("lz4-dedupe", ["-z", "lz4", "-E", "dedupe"], "lz4"),
    ("plain-512", ["-b", "512"], None),
    ("lz4hc-16k-blocks", ["-z", "lz4hc", "-b", "16384"], "lz4"),
    (
        "zstd-8k-blocks-ztail",
        ["-z", "zstd", "-b", "8192", "-C", "32768", "-E", "ztailpacking"],
        "zstd",
    ),
    ("lz4hc-fragments", ["-z", "lz4hc", "-E", "fragments"], "lz4"),
    ("zstd-fragments-ztail", ["-z", "zstd", "-C", "16384", "-E", "fragments,ztailpacking"], "zstd"),
    ("lz4-fragments-legacy", ["-z", "lz4", "-E", "fragments,legacy-compress"], "lz4"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_small_tree(tmp_path_factory.mktemp("mkimg") / "tree")
    rng = random.Random(11)
    words = [b"zstd ", b"deflate ", b"erofs ", b"page\n"]
    text = b"".join(rng.choice(words) for _ in range(80_000))
    (root / "text").write_bytes(text)
    (root / "again").write_bytes(text[:150_000] * 2)  # repeats: dedupe material
    (root / "mixed").write_bytes(rng.randbytes(30_000) + text[:90_000])
    os.setxattr(root / "text", "user.alg", b"any")
    return root


@pytest.mark.skipif(
    not WRITER.exists(), reason="our EROFS writer (mkimage/erofs) is not in this tree"
)
@pytest.mark.parametrize("variant", VARIANTS, ids=[v[0] for v in VARIANTS])
def test_our_images_read_like_source(
    variant: tuple[str, list[str], str | None], tree: Path, tmp_path: Path
) -> None:
    name, options, alg = variant
    img = tmp_path / f"{name}.img"
    proc = subprocess.run(
        [sys.executable, "-m", "mkimage", "erofs", *options, str(img), str(tree)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    cfg = MemoryConfig(mm="nommu-bounce", decompress="percpu-buffer", arena_bytes=8 << 20)
    with open_image(img, cfg) as fs:
        assert isinstance(fs, ErofsFilesystem)
        got = snapshot_fs(fs)
        problems = [
            p
            for p in diff_trees(snapshot(tree), got, fields=DEFAULT_FIELDS)
            if not p.startswith(".:")
        ]
        assert not problems, "\n".join(problems[:20])
        assert list(fs.fsck_extra()) == []
        d = fs.describe()
        if alg is not None:
            assert alg in d["compression"]["algorithms"]
            assert fs.memory_stats()["pclusters_decoded"] > 0
        bs = int(options[options.index("-b") + 1]) if "-b" in options else 4096
        assert d["block_size"] == bs


def mkimage_erofs(img: Path, src: Path, *options: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "mkimage", "erofs", "-q", *options, str(img), str(src)],
        check=True, cwd=ROOT, timeout=240, capture_output=True,
    )


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # the budget counter test's generated rootfs: its busybox-sized program
    # and its sparse file make the packed inode large enough to matter
    from tests.budget.test_counters import build_rootfs_tree

    return build_rootfs_tree(tmp_path_factory.mktemp("rootfs") / "tree")


@pytest.mark.parametrize("decompress", ["vmap", "bounce", "contig-folio", "percpu-buffer"])
@pytest.mark.parametrize("arena", [3584 << 10, 8 << 20], ids=["3.5M", "8M"])
def test_fragments_read_under_every_strategy(
    decompress: str, arena: int, rootfs: Path, tmp_path: Path
) -> None:
    """Reading a fragment reads the packed inode through the same strategy:
    it must not reuse the buffers of the read that asked for it (the
    percpu-buffer strategy once regrew its output buffer under that read:
    ``ValueError: negative count`` at 3.5M)."""
    img = tmp_path / "frag.img"
    mkimage_erofs(img, rootfs, "-z", "lz4hc", "-C", "16384", "-E", "fragments")
    cfg = MemoryConfig(mm="mmu", decompress=decompress, arena_bytes=arena)  # type: ignore[arg-type]
    with open_image(img, cfg) as fs:
        problems = [
            p
            for p in diff_trees(snapshot(rootfs), snapshot_fs(fs), fields=DEFAULT_FIELDS)
            if not p.startswith(".:")
        ]
        assert not problems, "\n".join(problems[:20])
        assert fs.memory_stats()["vmaps_live"] == 0


@pytest.mark.parametrize("decompress", ["vmap", "bounce", "contig-folio", "percpu-buffer"])
def test_a_page_of_a_tail_and_a_fragment_in_a_small_arena(
    decompress: str, rootfs: Path, tmp_path: Path
) -> None:
    """A page that one extent starts and a fragment ends: reading the fragment
    reads the packed inode, which in a small arena pushes the page's pending
    record out; the page then needs both extents again (it once raised
    ``page N was not filled`` for a sound image under percpu-buffer).  A
    256K arena cannot hold every extent of this tree: ENOMEM is an answer,
    any other error is not, and every file read is the source's."""
    img = tmp_path / "tailfrag.img"
    mkimage_erofs(img, rootfs, "-z", "lz4hc", "-C", "4096", "-E", "ztailpacking,fragments")
    cfg = MemoryConfig(mm="mmu", decompress=decompress, arena_bytes=256 << 10)  # type: ignore[arg-type]
    read = enomem = 0
    with open_image(img, cfg) as fs:
        for item in walk(fs):
            if not item.attr.is_reg:
                continue
            try:
                data = b"".join(
                    fs.read(item.ino, off, 131072) for off in range(0, item.attr.size, 131072)
                )
            except OutOfMemoryError:
                enomem += 1
                continue
            assert data == (rootfs / os.fsdecode(item.path)).read_bytes(), item.path
            read += 1
        assert fs.memory_stats()["vmaps_live"] == 0
    assert read > enomem
