"""Decompression through mmshim: every --mm mode x --decompress strategy reads
the same bytes, except nommu-contig + vmap, which cannot mount (as the kernel:
its global buffer is vmapped at mount); under fragmentation contig-folio and
percpu-buffer succeed; counters say what it cost."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs.erofs.fs import ErofsFilesystem
from fusefs.errors import OutOfMemoryError
from fusefs.vfs import MM_MODES, STRATEGIES, Filesystem, Ino, MemoryConfig, open_image, walk
from mmshim import Owner, Page
from tests.conftest import mkfs_erofs
from tests.trees import build_small_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_small_tree(tmp_path_factory.mktemp("mem") / "tree")
    rng = random.Random(5)
    words = [b"alpha ", b"beta ", b"gamma ", b"delta\n", b"epsilon "]
    # compressible files large enough for multi-page pclusters and extents
    for i, size in enumerate((300_000, 1_000_003, 12_345)):
        (root / f"big{i}.txt").write_bytes(
            b"".join(rng.choice(words) for _ in range(size // 5))[:size]
        )
    return root


@pytest.fixture(scope="module")
def image(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mkfs_erofs(tmp_path_factory.mktemp("memimg") / "img", tree, "-zlz4hc", "-C65536")


def _hashes(fs: ErofsFilesystem) -> dict[bytes, str]:
    out = {}
    for item in walk(fs):
        if item.attr.is_reg:
            out[item.path] = hashlib.sha256(fs.read(item.ino, 0, item.attr.size + 1)).hexdigest()
    return out


def _expected(tree: Path) -> dict[bytes, str]:
    return {
        str(p.relative_to(tree)).encode(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in tree.rglob("*")
        if p.is_file() and not p.is_symlink()
    }


# nommu-contig + vmap cannot mount: test_nommu_contig_vmap_refuses_the_mount
@pytest.mark.parametrize(
    ("mm", "strategy"),
    [(m, s) for m in MM_MODES for s in STRATEGIES if (m, s) != ("nommu-contig", "vmap")],
)
def test_every_mode_and_strategy_reads_the_same(
    mm: str, strategy: str, image: Path, tree: Path
) -> None:
    with open_image(image, MemoryConfig(mm=mm, decompress=strategy, arena_bytes=16 << 20)) as fs:  # type: ignore[arg-type]
        assert isinstance(fs, ErofsFilesystem)
        assert _hashes(fs) == _expected(tree)
        st = fs.memory_stats()
        assert st["vmaps_live"] == 0
        assert st["bytes_decompressed"] >= 1_300_000
        assert st["frames_peak"] <= st["frames_total"]
        if strategy == "vmap" and mm == "mmu":
            assert st["copy_bytes"] == 0 and st["bounce_bytes"] == 0
        if strategy == "percpu-buffer":
            assert st["copy_bytes"] > 0 and st["frames_percpu"] > 0
        if strategy == "vmap":
            assert st["vmap_calls"] > 0


@contextlib.contextmanager
def fragmented(fs: ErofsFilesystem) -> Iterator[None]:
    """Fragment the arena as a long-running board's would be: every free
    frame of the lower half is taken order-0 and every other one given back
    (scattered single frames), the upper half stays in large free blocks."""
    arena = fs.reader.arena
    held: list[Page] = []
    while arena.stats.frames_free:
        held.append(arena.alloc_pages(0, Owner.OTHER))
    half = len(held) // 2
    keep = [p for i, p in enumerate(held[:half]) if i % 2 == 0]
    for p in [p for i, p in enumerate(held[:half]) if i % 2] + held[half:]:
        arena.free_pages(p)
    try:
        yield
    finally:
        for p in keep:
            arena.free_pages(p)


def _big(fs: Filesystem) -> tuple[Ino, int]:
    from fusefs.vfs import resolve

    ino = resolve(fs, "big1.txt")
    return ino, fs.getattr(ino).size


def test_nommu_contig_vmap_refuses_the_mount(image: Path) -> None:
    """The kernel (EROFS_FS_ZIP=y, no MMU) hits BUG in vmap() from
    z_erofs_gbuf_growsize at every EROFS mount: the model refuses the mount,
    with that reason, before any read (seen on a real nommu kernel, tests/nommu)."""
    cfg = MemoryConfig(mm="nommu-contig", decompress="vmap", arena_bytes=8 << 20)
    with pytest.raises(OutOfMemoryError) as err:
        open_image(image, cfg)
    assert err.value.errno == errno.ENOMEM
    assert "z_erofs_gbuf_growsize" in str(err.value) and "BUG" in str(err.value)


@pytest.mark.parametrize("strategy", ["contig-folio", "percpu-buffer", "bounce"])
def test_other_strategies_survive_that_fragmentation(
    strategy: str, image: Path, tree: Path
) -> None:
    cfg = MemoryConfig(mm="nommu-contig", decompress=strategy, arena_bytes=8 << 20)  # type: ignore[arg-type]
    want = (tree / "big1.txt").read_bytes()
    with open_image(image, cfg) as fs:
        assert isinstance(fs, ErofsFilesystem)
        ino, size = _big(fs)
        with fragmented(fs):
            got = b"".join(fs.read(ino, off, 128 << 10) for off in range(0, size, 128 << 10))
        assert got == want
        st = fs.memory_stats()
        assert st["vmaps_live"] == 0
        assert st["copy_bytes"] > 0 or st["folios_added"] > 0
        if strategy == "contig-folio":
            assert st["largest_alloc_order"] >= 4


def test_nommu_bounce_vmap_bounces_under_fragmentation(image: Path, tree: Path) -> None:
    cfg = MemoryConfig(mm="nommu-bounce", decompress="vmap", arena_bytes=8 << 20)
    with open_image(image, cfg) as fs:
        assert isinstance(fs, ErofsFilesystem)
        ino, _ = _big(fs)
        with fragmented(fs):
            assert fs.read(ino, 0, 200_000) == (tree / "big1.txt").read_bytes()[:200_000]
        st = fs.memory_stats()
        assert st["bounce_bytes"] > 0 and st["lost_writes"] == 0


def test_tiny_arena_fails_cleanly_and_small_one_works(image: Path, tree: Path) -> None:
    with open_image(
        image, MemoryConfig(mm="nommu-bounce", decompress="vmap", arena_bytes=64 << 10)
    ) as fs:
        ino, _ = _big(fs)
        with pytest.raises(OutOfMemoryError):
            fs.read(ino, 0, 1 << 20)
    # 1536K as on the small board: pages are evicted and reused, reads still right
    cfg = MemoryConfig(mm="nommu-bounce", decompress="percpu-buffer", arena_bytes=1536 << 10)
    with open_image(image, cfg) as fs:
        assert isinstance(fs, ErofsFilesystem)
        assert _hashes(fs) == _expected(tree)
        st = fs.memory_stats()
        assert st["evictions"] > 0 and st["frames_peak"] <= 384


def test_threads_share_one_image(image: Path, tree: Path) -> None:
    """The FUSE adapter reads from several threads at once: same bytes, no leaks."""
    import threading

    want = _expected(tree)
    cfg = MemoryConfig(mm="nommu-bounce", decompress="vmap", arena_bytes=2 << 20)
    with open_image(image, cfg) as fs:
        assert isinstance(fs, ErofsFilesystem)
        items = [(i.path, i.ino, i.attr.size) for i in walk(fs) if i.attr.is_reg]
        errors: list[BaseException] = []

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            try:
                for _ in range(3):
                    for path, ino, size in rng.sample(items, len(items)):
                        chunks, pos = [], 0
                        while pos < size:
                            step = rng.choice([4096, 10000, 128 << 10])
                            chunks.append(fs.read(ino, pos, step))
                            pos += len(chunks[-1])
                        assert hashlib.sha256(b"".join(chunks)).hexdigest() == want[path]
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[0]
        st = fs.memory_stats()
        assert st["vmaps_live"] == 0 and st["frames_peak"] <= 512


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_random_reads_decode_a_prefix_and_read_the_same(
    image: Path, tree: Path, strategy: str
) -> None:
    """Reads that are not sequential decode extents only as far as they need
    (vmap/bounce); whatever the order of reads, the bytes are the file's."""
    want = (tree / "big1.txt").read_bytes()
    rng = random.Random(3)
    offsets = [rng.randrange(len(want)) & ~4095 for _ in range(60)]
    with contextlib.closing(open_image(image, MemoryConfig(decompress=strategy))) as fs:
        ino = fs.lookup(fs.root, b"big1.txt")
        for off in offsets:
            size = rng.choice((1, 4096, 5000, 70_000))
            assert fs.read(ino, off, size) == want[off : off + size], (off, size)
        # then the whole file, sequentially in odd-sized pieces, over pages
        # some of which were decoded by the reads above
        got, off = bytearray(), 0
        while chunk := fs.read(ino, off, 12_345):
            got += chunk
            off += len(chunk)
        assert got == want
        stats = fs.memory_stats()
    assert stats["pclusters_decoded"] > 0
    if strategy in ("vmap", "bounce"):
        # a read from 0 is sequential and decodes the whole first extent; a
        # first read of page 1 decodes the first extent only up to page 2
        decoded = {}
        for off in (0, 4096):
            with contextlib.closing(open_image(image, MemoryConfig(decompress=strategy))) as fs:
                ino = fs.lookup(fs.root, b"big1.txt")
                assert fs.read(ino, off, 4096) == want[off : off + 4096]
                decoded[off] = fs.memory_stats()["bytes_decompressed"]
        assert decoded[4096] == 8192 < decoded[0]
