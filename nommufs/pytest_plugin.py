"""The nommufs pytest plugin: build images and mount them in a test.

Installed with the package and loaded by pytest through its ``pytest11``
entry point (``nommufs``); nothing to add to a conftest.  Fixtures:

``nommufs_image(tree, *flags, format="erofs", name=None, **options) -> Path``
    Builds an image (``nommufs mkimage FORMAT``, in-process) from ``tree``: a
    directory, or a mapping of relative paths to file contents (``bytes`` or
    ``str``), written to a fresh directory first.  ``flags``/``options`` are
    mkimage's (see :func:`nommufs.build_image`): ``z="lz4hc", C=16384, T=0``.

``nommufs_mount(image, *, mm="mmu", arena="64M", decompress="vmap", **kw) -> Mount``
    Mounts ``image`` through FUSE on a fresh directory and returns the ready
    :class:`nommufs.Mount`: ``.path``, ``.stats()`` (the daemon's memory
    counters), ``.pid``, ``.log()``.  Every mount is unmounted at teardown,
    whatever the test did to it (a killed daemon's stale mount included);
    when the test fails, each mount's daemon log is attached to its report.

The mounts need FUSE (``/dev/fuse`` and ``fusermount3``); without it the
test that asks for a mount is skipped, saying what is missing.  Needs pytest 8
or later.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pytest

if TYPE_CHECKING:  # the package is imported when a fixture is used, not at start-up
    from nommufs import Mount

TreeSpec = str | os.PathLike[str] | Mapping[str, bytes | str]
_MOUNTS: pytest.StashKey[list[Mount]] = pytest.StashKey()


def _write_tree(root: Path, files: Mapping[str, bytes | str]) -> Path:
    root.mkdir(parents=True)
    for rel, content in files.items():
        path = root / rel.lstrip("/")
        if root.resolve() not in path.resolve().parents:
            raise ValueError(f"nommufs_image: {rel!r} is outside the tree")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


@pytest.fixture
def nommufs_image(tmp_path: Path) -> Callable[..., Path]:
    """A factory: ``nommufs_image(tree, *flags, format="erofs", name=None, **options)``."""
    from nommufs import build_image

    made = [0]

    def build(tree: TreeSpec, *flags: str, format: Literal["erofs", "cramfs"] = "erofs",
              name: str | None = None, **options: Any) -> Path:  # fmt: skip
        made[0] += 1
        n = made[0]
        src = (
            _write_tree(tmp_path / f"nommufs-tree-{n}", tree)
            if isinstance(tree, Mapping)
            else Path(tree)
        )
        out = tmp_path / (name or f"nommufs-image-{n}.{format}")
        return build_image(src, out, *flags, format=format, **options)

    return build


@pytest.fixture
def nommufs_mount(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Mount]]:
    """A factory: ``nommufs_mount(image, *, mm=, arena=, decompress=, ...)`` -> a ready Mount."""
    from fusefs.mounttab import missing_fuse
    from nommufs import FsError, mount

    mounts: list[Mount] = request.node.stash.setdefault(_MOUNTS, [])

    def start(image: str | os.PathLike[str], **options: Any) -> Mount:
        reason = missing_fuse()
        if reason is not None:
            pytest.skip(f"nommufs_mount: {reason}")
        n = len(mounts) + 1
        mnt = tmp_path / f"nommufs-mnt-{n}"
        work = tmp_path / f"nommufs-daemon-{n}"
        mnt.mkdir()
        work.mkdir()
        options.setdefault("verbose", 1)
        m = mount(image, mnt, workdir=work, **options)
        mounts.append(m)
        return m

    yield start
    problems = []
    for m in mounts:
        try:
            m.unmount()
        except FsError as e:
            problems.append(str(e))
    if problems:
        pytest.fail("nommufs_mount teardown: " + "; ".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed setup, call or teardown gets each mount's daemon log."""
    report = yield
    if report.failed:
        for m in item.stash.get(_MOUNTS, []):
            report.sections.append((f"nommufs daemon log: {m.path}", m.log() or "(empty)"))
    return report
