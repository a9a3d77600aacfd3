"""Images for the budget tests, built once per session by ``nommufs mkimage``.

The tree is about 3 MiB: the shared small tree, twenty compressible text
files of 100..195 KB (each several 16 KiB pclusters) and two real ELF
programs (``/usr/bin/true``, ``/usr/bin/ls``) for the loader workload.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from tests.conftest import nommufs
from tests.trees import _content, build_small_tree

PROGRAMS = (Path("/usr/bin/true"), Path("/usr/bin/ls"))


def build_budget_tree(root: Path) -> Path:
    build_small_tree(root)
    rng = random.Random(11)
    for i in range(20):
        (root / f"big{i:02}.txt").write_bytes(_content(rng, 100_000 + i * 5000, "text"))
    (root / "bin").mkdir()
    for prog in PROGRAMS:
        if not prog.exists():
            pytest.skip(f"no {prog} to use as an ELF program")
        shutil.copyfile(prog, root / "bin" / prog.name)
        (root / "bin" / prog.name).chmod(0o755)
    return root


def mkimage(*args: str) -> None:
    r = nommufs("mkimage", *args)
    assert r.returncode == 0, r.stderr.decode()


@pytest.fixture(scope="session")
def budget_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_budget_tree(tmp_path_factory.mktemp("budget") / "tree")


@pytest.fixture(scope="session")
def erofs16(budget_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """lz4hc with 16 KiB pclusters: multi-page clusters to scatter."""
    out = tmp_path_factory.mktemp("budget-img") / "c16.erofs"
    mkimage("erofs", "-q", "-z", "lz4hc", "-C", "16384", str(out), str(budget_tree))
    return out


@pytest.fixture(scope="session")
def cramfs_xip(budget_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cramfs with the ELF programs stored XIP, page aligned for an MMU (-X -X)."""
    out = tmp_path_factory.mktemp("budget-img") / "xip.cramfs"
    mkimage("cramfs", "-q", "-X", "-X", str(budget_tree), str(out))
    return out


@pytest.fixture(scope="session")
def cramfs_plain(budget_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("budget-img") / "plain.cramfs"
    mkimage("cramfs", "-q", str(budget_tree), str(out))
    return out
