"""mkfs.erofs images read through nommufs (FUSE mount and ``extract``) must
show exactly what the kernel's EROFS mount of the same image shows.

A sample of mkfs.erofs's options, each image paired with one ``--mm`` mode
(and a decompression strategy that suits it) so that every mode is covered
without the full cartesian product.  The rich tree is built once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import Mounter, missing_kernel_erofs, mkfs_erofs, nommufs
from tests.erofs.helpers import rich_tree_for_mkfs
from tests.trees import Entry, diff_trees, snapshot

# (id, mkfs.erofs options, nommufs memory options)
VARIANTS = [
    ("lz4-64k", ["-zlz4", "-C65536"], ["--mm", "mmu"]),
    (
        "lz4hc12-1m-ztailpacking",
        ["-zlz4hc,12", "-C1048576", "-Eztailpacking"],
        ["--mm", "nommu-contig", "--decompress", "contig-folio", "--arena", "256M"],
    ),
    (
        "lz4-4k-legacy-compact-allroot",
        # compact inodes cannot hold uid 100000: --all-root
        ["-zlz4", "-C4096", "-Elegacy-compress,force-inode-compact", "--all-root"],
        ["--mm", "nommu-bounce", "--decompress", "bounce", "--arena", "64M"],
    ),
    (
        "lz4hc-16k-extended-T",
        ["-zlz4hc", "-C16384", "-Eforce-inode-extended", "-T1000000000"],
        ["--mm", "mmu", "--decompress", "percpu-buffer"],
    ),
    # nommu-contig with the default vmap cannot mount (the global buffer's vmap at
    # mount, as the kernel): the strategy of an image without compression is moot
    (
        "plain-noinline",
        ["-Enoinline_data"],
        ["--mm", "nommu-contig", "--decompress", "contig-folio", "--arena", "16M"],
    ),
    (
        "chunks-8k-indexes",
        ["--chunksize=8192", "-Eforce-chunk-indexes"],
        ["--mm", "nommu-bounce", "--arena", "16M"],
    ),
    ("chunks-4k-blockmap", ["--chunksize=4096", "-Eforce-inode-blockmap"], ["--mm", "mmu"]),
]
FAST = {"lz4-64k", "plain-noinline"}


def _params(*, only_fast: bool = False) -> list[object]:
    return [
        pytest.param(v, id=v[0], marks=() if v[0] in FAST else (pytest.mark.slow,))
        for v in VARIANTS
        if v[0] in FAST or not only_fast
    ]


@pytest.fixture(scope="module")
def rich_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The rich tree as mkfs.erofs 1.5 can take it (no 255-byte name)."""
    return rich_tree_for_mkfs(tmp_path_factory.mktemp("rich") / "tree")


@pytest.fixture(scope="module")
def images() -> dict[str, Path]:
    """Images built lazily, once per module."""
    return {}


@pytest.fixture(scope="module")
def kernel_views() -> dict[str, dict[str, Entry]]:
    """The kernel's snapshot per variant, taken once per module."""
    return {}


def _prepare(
    variant: tuple[str, list[str], list[str]],
    rich_tree: Path,
    module_mounter: Mounter,
    images: dict[str, Path],
    kernel_views: dict[str, dict[str, Entry]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, Entry]]:
    reason = missing_kernel_erofs()
    if reason:
        pytest.skip(reason)
    name, mkfs_opts, _ = variant
    if name not in images:
        images[name] = mkfs_erofs(
            tmp_path_factory.mktemp("img") / f"{name}.erofs", rich_tree, *mkfs_opts
        )
    if name not in kernel_views:
        kernel_views[name] = snapshot(module_mounter.kernel_erofs(images[name]))
        assert len(kernel_views[name]) > 3000  # the whole rich tree is there
    return images[name], kernel_views[name]


def _show(problems: list[str]) -> str:
    more = f"\n... {len(problems) - 40} more" if len(problems) > 40 else ""
    return "\n".join(problems[:40]) + more


@pytest.mark.kernel
@pytest.mark.fuse
@pytest.mark.parametrize("variant", _params())
def test_fuse_mount_matches_kernel(
    variant: tuple[str, list[str], list[str]],
    rich_tree: Path,
    module_mounter: Mounter,
    mounter: Mounter,
    images: dict[str, Path],
    kernel_views: dict[str, dict[str, Entry]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    image, expected = _prepare(
        variant, rich_tree, module_mounter, images, kernel_views, tmp_path_factory
    )
    m = mounter.fuse(image, *variant[2])
    actual = snapshot(m.path)
    problems = diff_trees(expected, actual)
    assert not problems, _show(problems)
    assert m.alive, m.stderr()
    assert "Traceback" not in m.stderr(), m.stderr()


@pytest.mark.kernel
@pytest.mark.parametrize("variant", _params())
def test_extract_matches_kernel(
    variant: tuple[str, list[str], list[str]],
    rich_tree: Path,
    module_mounter: Mounter,
    images: dict[str, Path],
    kernel_views: dict[str, dict[str, Entry]],
    tmp_path_factory: pytest.TempPathFactory,
    tmp_path: Path,
) -> None:
    image, expected = _prepare(
        variant, rich_tree, module_mounter, images, kernel_views, tmp_path_factory
    )
    dest = tmp_path / "out"
    r = nommufs("extract", *variant[2], str(image), str(dest))
    assert r.returncode == 0, r.stderr.decode()
    problems = diff_trees(expected, snapshot(dest))
    assert not problems, _show(problems)


@pytest.mark.kernel
@pytest.mark.parametrize("variant", _params(only_fast=True))
def test_fsck_clean(
    variant: tuple[str, list[str], list[str]],
    rich_tree: Path,
    module_mounter: Mounter,
    images: dict[str, Path],
    kernel_views: dict[str, dict[str, Entry]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    image, _ = _prepare(
        variant, rich_tree, module_mounter, images, kernel_views, tmp_path_factory
    )
    r = nommufs("fsck", *variant[2], str(image))
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert ": clean;" in out.splitlines()[-1], out
