"""Seed corpora for the fuzz targets, built on the spot (nothing committed
but what tests/corpus already holds).

``erofs``: one small tree through nommufs's ``mkimage erofs`` in the layouts
the reader has code for (plain, inline, lz4/lz4hc/zstd/deflate/lzma, big
pclusters, ztailpacking, fragments, dedupe, legacy indexes, chunks), the
system's ``mkfs.erofs`` when there is one, and the committed EROFS images of
tests/corpus (the upstream 1.9.3 layouts and the hostile reproducers).
``cramfs``: the same tree through ``mkimage cramfs`` (zlib, holes, XIP,
extended pointers, both byte orders, the boot pad) and ``mkfs.cramfs``.
``mkimage``: a few inputs that make trees of every kind of entry.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

CORPUS: Final = Path(__file__).resolve().parents[1] / "corpus"
MAX_SEED: Final = 96 << 10  # bytes: a seed larger than this is left out

EROFS_LAYOUTS: Final[tuple[tuple[str, ...], ...]] = (
    (),
    ("-E", "noinline_data"),
    ("-z", "lz4"),
    ("-z", "lz4hc", "-C", "16384"),
    ("-z", "lz4hc", "-E", "legacy-compress"),
    ("-z", "zstd", "-C", "16384", "-E", "fragments,ztailpacking"),
    ("-z", "deflate", "-E", "dedupe"),
    ("-z", "lzma", "-E", "ztailpacking"),
    ("-z", "lz4", "-E", "fragments,dedupe"),
    ("--chunksize", "8192"),
    ("-b", "1024"),
)
CRAMFS_LAYOUTS: Final[tuple[tuple[str, ...], ...]] = (
    (), ("-z",), ("-X",), ("-X", "-X"), ("-x",), ("-N", "big"), ("-p",),
)  # fmt: skip
MKFS_EROFS: Final[tuple[tuple[str, ...], ...]] = (
    ("-zlz4hc",), ("-zlz4", "-Eztailpacking", "-C16384"), ("--chunksize=8192",),
)  # fmt: skip


def seed_tree(root: Path) -> Path:
    """A small tree with one of each thing the readers handle."""
    rng = random.Random(13)
    (root / "d" / "e").mkdir(parents=True)
    words = [b"erofs ", b"page ", b"folio\n", b"nommu "]
    for i, size in enumerate((0, 1, 3000, 4096, 9000)):
        (root / f"f{i}").write_bytes(b"".join(rng.choice(words) for _ in range(size))[:size])
    (root / "d" / "r").write_bytes(rng.randbytes(5000))
    (root / "d" / "e" / "z").write_bytes(bytes(12000))
    (root / "d" / "e" / "z2").write_bytes(bytes(12000))
    os.symlink("d/e/z", root / "lnk")
    os.symlink("y" * 200, root / "long-lnk")
    os.link(root / "f2", root / "hard")
    os.mkfifo(root / "fifo")
    for i in range(12):
        (root / "d" / f"n{i:02d}").write_bytes(b"%d" % i)
    try:
        for name in ("f1", "f2", "d/r"):
            os.setxattr(root / name, "user.shared", b"same")
        os.setxattr(root / "f3", "user.own", b"x" * 50)
    except OSError:
        pass  # a filesystem without user xattrs: seeds without them
    return root


def _mkimage(fmt: str, src: Path, out: Path, flags: tuple[str, ...]) -> bytes | None:
    import nommufs
    from fusefs.errors import FsError

    fixed = ("-T", "0") if fmt == "erofs" else ()  # cramfs stores no times
    try:
        nommufs.build_image(src, out, *fixed, *flags, format=fmt)  # type: ignore[arg-type]
    except FsError:
        return None
    return out.read_bytes()


def _system(cmd: list[str], out: Path) -> bytes | None:
    if shutil.which(cmd[0]) is None:
        return None
    proc = subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    return out.read_bytes() if proc.returncode == 0 and out.exists() else None


def image_seeds(fmt: str) -> Iterator[bytes]:
    """Seed images of ``fmt`` (``erofs`` or ``cramfs``)."""
    with tempfile.TemporaryDirectory(prefix="nommufs-seeds-") as tmp:
        src = seed_tree(Path(tmp) / "src")
        layouts = EROFS_LAYOUTS if fmt == "erofs" else CRAMFS_LAYOUTS
        for i, flags in enumerate(layouts):
            data = _mkimage(fmt, src, Path(tmp) / f"ours{i}.img", flags)
            if data is not None:
                yield data
        if fmt == "erofs":
            for i, opts in enumerate(MKFS_EROFS):
                out = Path(tmp) / f"mkfs{i}.img"
                data = _system(["mkfs.erofs", "-T0", "-q", *opts, str(out), str(src)], out)
                if data is not None:
                    yield data
            for path in sorted(CORPUS.rglob("erofs-*.img")):
                yield path.read_bytes()
        else:
            out = Path(tmp) / "mkfs.img"
            data = _system(["mkfs.cramfs", "-b", "4096", str(src), str(out)], out)
            if data is not None:
                yield data
            for path in sorted(CORPUS.rglob("cramfs-*.img")):
                yield path.read_bytes()


def mkimage_seeds() -> Iterator[bytes]:
    rng = random.Random(5)
    for n in range(12):
        yield bytes([n % 2]) + rng.randbytes(64 + 64 * n)


def write_seeds(target: str, into: Path) -> int:
    """Write ``target``'s seeds into the directory ``into``, named by their
    hash as libFuzzer names its corpus files; how many."""
    into.mkdir(parents=True, exist_ok=True)
    seeds = mkimage_seeds() if target == "mkimage" else image_seeds(target)
    n = 0
    for data in seeds:
        if len(data) > MAX_SEED:
            continue
        (into / hashlib.sha1(data).hexdigest()).write_bytes(data)
        n += 1
    return n
