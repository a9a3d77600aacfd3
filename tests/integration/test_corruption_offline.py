"""Random byte corruption of valid images: ``fsck`` and ``extract`` see only
FsError (clean, one-line errors), never another exception or a hang."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from fusefs.commands.extract import extract
from fusefs.commands.fsck import check
from fusefs.errors import FsError
from fusefs.vfs import MemoryConfig, open_image
from tests.conftest import mkfs_erofs
from tests.trees import build_small_tree

SAMPLES = 40
DEADLINE = 10.0  # seconds per corrupted image


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    base = tmp_path_factory.mktemp("corrupt")
    tree = build_small_tree(base / "tree")
    (tree / "text.txt").write_bytes(b"corrupt me, compress me " * 3000)
    return [
        mkfs_erofs(base / "lz4.erofs", tree, "-zlz4", "-C16384", "-Enosbcrc"),
        mkfs_erofs(base / "plain.erofs", tree, "-Enosbcrc"),
        mkfs_erofs(base / "tail.erofs", tree, "-zlz4hc", "-Eztailpacking,nosbcrc"),
    ]


@pytest.mark.slow
@pytest.mark.parametrize("mm", ["mmu", "nommu-bounce"])
def test_random_corruption_gives_only_fserror(
    images: list[Path], tmp_path: Path, mm: str
) -> None:
    rng = random.Random(f"nommufs-{mm}")
    memory = MemoryConfig(mm=mm, decompress="bounce" if mm != "mmu" else "vmap",  # type: ignore[arg-type]
                          arena_bytes=8 << 20)
    outcomes = {"clean": 0, "problems": 0, "refused": 0}
    for i in range(SAMPLES):
        source = images[i % len(images)]
        raw = bytearray(source.read_bytes())
        for _ in range(rng.choice((1, 4, 16))):
            raw[rng.randrange(1024, len(raw))] = rng.randrange(256)
        bad = tmp_path / f"bad{i}.erofs"
        bad.write_bytes(bytes(raw))
        start = time.monotonic()
        try:
            with open_image(bad, memory) as fs:
                report = check(fs)
                outcomes["clean" if report.clean else "problems"] += 1
                try:
                    extract(fs, tmp_path / f"out{i}")
                except FsError:
                    assert not report.clean, "extract failed where fsck saw no problem"
        except FsError as e:
            outcomes["refused"] += 1
            assert "\n" not in str(e)
        assert time.monotonic() - start < DEADLINE, f"sample {i} took too long"
    assert outcomes["problems"] + outcomes["refused"] > 0, outcomes
