"""Images of the rich tree, for each compressor and a spread of -C / -b / -E,
mount with the kernel's EROFS driver and show every field of the source; the
nommufs reader and (where it understands the image) Debian's fsck.erofs agree."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from fusefs.vfs import MemoryConfig, open_image
from tests.conftest import Mounter
from tests.mkimage.conftest import Build
from tests.trees import Entry, diff_trees, snapshot, snapshot_fs

EPOCH = 1_600_000_000

# (id, options, fsck.erofs 1.5 understands it: 4 KiB blocks, lz4 only)
SPREAD = [
    ("none", ["-z", "none"], True),
    ("none-b512-noinline-ext", ["-b", "512", "-E", "noinline_data,force-inode-extended"], False),
    ("lz4", ["-z", "lz4"], True),
    ("lz4-legacy", ["-z", "lz4", "-E", "legacy-compress"], True),
    ("lz4hc-C64k", ["-z", "lz4hc", "-C", "65536"], True),
    ("lz4hc12-b1024-C8k", ["-z", "lz4hc,12", "-b", "1024", "-C", "8192"], False),
    ("lz4hc-b2048-nosbcrc", ["-z", "lz4hc", "-b", "2048", "-E", "nosbcrc"], False),
    ("lz4hc-C256k-compact-T", ["-z", "lz4hc", "-C", "262144", "-E", "force-inode-compact"], True),
    ("lz4hc-ztail", ["-z", "lz4hc", "-E", "ztailpacking"], True),
    ("lz4-ztail-legacy", ["-z", "lz4", "-E", "ztailpacking,legacy-compress"], True),
    (
        "zstd-b1024-C8k-ztail",
        ["-z", "zstd", "-b", "1024", "-C", "8192", "-E", "ztailpacking"],
        False,
    ),
    (
        "lz4hc-C64k-fragments-dedupe",
        ["-z", "lz4hc", "-C", "65536", "-E", "fragments,dedupe"],
        False,
    ),
    ("lz4-fragments-legacy", ["-z", "lz4", "-E", "fragments,legacy-compress"], False),
    ("zstd-b1024-fragments", ["-z", "zstd", "-b", "1024", "-E", "fragments,ztailpacking"], False),
    ("zstd", ["-z", "zstd"], False),
    ("zstd12-b512-C16k", ["-z", "zstd,12", "-b", "512", "-C", "16384"], False),
    ("deflate-C64k", ["-z", "deflate", "-C", "65536"], False),
    ("deflate9-b4096-legacy", ["-z", "deflate,9", "-E", "legacy-compress"], False),
    ("lzma-C64k-maxext256k", ["-z", "lzma", "-C", "65536", "--max-extent-bytes", "262144"], False),
    ("lz4hc-dot-omitted-ztail", ["-z", "lz4hc", "-E", "dot-omitted,ztailpacking"], False),
    ("none-48bit-chunks-16k", ["-E", "48bit", "--chunksize", "16384"], False),
]


def expected_for(src: dict[str, Entry], options: list[str]) -> dict[str, Entry]:
    """The source as the image must show it under ``options``."""
    if "force-inode-compact" not in " ".join(options):
        return src
    # the -T case below: every inode's mtime is the epoch (mkfs.erofs -T)
    return {k: dataclasses.replace(e, mtime_ns=EPOCH * 10**9) for k, e in src.items()}


def files_with_holes(root: Path, block: int = 512) -> list[str]:
    """Regular files with an all-zero aligned block (stored as holes by -z none)."""
    out = []
    for p in root.rglob("*"):
        if not p.is_symlink() and p.is_file():
            data = p.read_bytes()
            if any(
                not data[i : i + block].strip(b"\0") for i in range(0, len(data) - block + 1, block)
            ):
                out.append(str(p.relative_to(root)))
    return out


@pytest.mark.kernel
@pytest.mark.parametrize(("options", "fsck_ok"), [(o, f) for _, o, f in SPREAD],
                         ids=[i for i, _, _ in SPREAD])  # fmt: skip
def test_kernel_mount_matches_source(
    options: list[str],
    fsck_ok: bool,
    rich_tree: Path,
    rich_snapshot: dict[str, Entry],
    build: Build,
    mounter: Mounter,
    tmp_path: Path,
) -> None:
    timing = ["-T", str(EPOCH)] if "force-inode-compact" in options[-1] else []
    timing = timing or ["-T", str(EPOCH), "--mkfs-time"]
    img = build(rich_tree, *options, *timing)
    block = int(options[options.index("-b") + 1]) if "-b" in options else 4096
    assert img.stat().st_size % block == 0
    expected = expected_for(rich_snapshot, options)
    mnt = mounter.kernel_erofs(img)
    assert diff_trees(expected, snapshot(mnt)) == []
    if fsck_ok and shutil.which("fsck.erofs"):
        out = tmp_path / "extract"
        proc = subprocess.run(
            ["fsck.erofs", f"--extract={out}", str(img)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        # fsck.erofs 1.5 extracts neither hard links, set-id bits nor xattrs,
        # and drops the holes of chunk-based files (write() without seek)
        fields = ("uid", "gid", "size", "mtime_ns", "rdev", "target", "data_sha")
        holes = [] if "-z" in options and options[1] != "none" else files_with_holes(rich_tree)
        assert diff_trees(expected, snapshot(out), fields=fields, ignore_paths=holes) == []


@pytest.mark.parametrize(
    "options",
    [
        ["-z", "lz4hc", "-C", "65536"],
        ["-z", "zstd", "-b", "1024", "-E", "ztailpacking"],
        ["-z", "lz4hc", "-E", "fragments"],
        ["-z", "none"],
    ],
    ids=["lz4hc-C64k", "zstd-b1024-ztail", "lz4hc-fragments", "none"],
)
def test_nommufs_reader_agrees(
    options: list[str], rich_tree: Path, rich_snapshot: dict[str, Entry], build: Build
) -> None:
    img = build(rich_tree, *options, "-T", str(EPOCH), "--mkfs-time")
    with open_image(str(img), MemoryConfig()) as fs:
        assert diff_trees(rich_snapshot, snapshot_fs(fs)) == []


@pytest.mark.kernel
@pytest.mark.parametrize(
    "options",
    [["-z", "lz4hc"], ["-z", "lz4hc", "-C", "65536", "-E", "ztailpacking"], ["-z", "zstd"]],
    ids=["lz4hc", "lz4hc-C64k-ztail", "zstd"],
)
def test_dedupe_shares_pclusters(
    options: list[str], rich_tree: Path, build: Build, mounter: Mounter, tmp_path: Path
) -> None:
    src = tmp_path / "dup"
    src.mkdir()
    for name in ("a", "b"):
        shutil.copytree(rich_tree / "files", src / name)
    (src / "prefix").write_bytes((rich_tree / "files" / "text-1048581").read_bytes()[:300_000])
    timing = ["-T", str(EPOCH), "--mkfs-time"]
    plain = build(src, *options, *timing)
    deduped = build(src, *options, "-E", "dedupe", *timing)
    assert deduped.stat().st_size < plain.stat().st_size * 0.95
    expected = snapshot(src)
    assert diff_trees(expected, snapshot(mounter.kernel_erofs(deduped))) == []
    with open_image(str(deduped), MemoryConfig()) as fs:
        assert diff_trees(expected, snapshot_fs(fs)) == []
    if options[1] != "zstd" and shutil.which("fsck.erofs"):
        out = tmp_path / "extract"
        proc = subprocess.run(
            ["fsck.erofs", f"--extract={out}", str(deduped)], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        fields = ("size", "target", "data_sha")
        assert diff_trees(expected, snapshot(out), fields=fields) == []


def _sweep(seed: int, count: int) -> list[list[str]]:
    """Random -z/-b/-C/-E combinations (fixed seed) the kernel must mount."""
    import random

    rng = random.Random(seed)
    out = []
    while len(out) < count:
        z = rng.choice(["lz4", "lz4hc", "zstd", "deflate", "none"])
        b = rng.choice([512, 1024, 2048, 4096])
        c = rng.choice([x for x in (4096, 8192, 16384, 65536, 262144, 1 << 20) if x >= b])
        ext = [e for e in ("ztailpacking", "fragments", "dedupe", "noinline_data",
                           "legacy-compress", "force-inode-extended", "nosbcrc")
               if rng.random() < 0.3]  # fmt: skip
        if z == "none":
            ext = [e for e in ext if e in ("noinline_data", "force-inode-extended", "nosbcrc")]
        if "legacy-compress" in ext:
            c = b
        if z.startswith("lz4") and c // b > 256:
            continue
        out.append(["-z", z, "-b", str(b), "-C", str(c)] + (["-E", ",".join(ext)] if ext else []))
    return out


@pytest.mark.slow
@pytest.mark.kernel
@pytest.mark.parametrize("options", _sweep(20261121, 8), ids=lambda o: "_".join(o))
def test_random_option_sweep(
    options: list[str],
    rich_tree: Path,
    rich_snapshot: dict[str, Entry],
    build: Build,
    mounter: Mounter,
) -> None:
    img = build(rich_tree, *options, "-T", str(EPOCH), "--mkfs-time")
    assert diff_trees(rich_snapshot, snapshot(mounter.kernel_erofs(img))) == []
