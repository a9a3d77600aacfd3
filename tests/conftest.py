"""Shared fixtures: image builders, the kernel's EROFS mount and nommufs FUSE
mounts, each with a deadline and an unmount that always runs.

Capabilities are probed once; a test that needs one the machine truly lacks
is skipped with the name of what is missing (root, /dev/fuse, fusermount3,
the kernel's EROFS driver, mkfs.erofs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from fusefs.mounttab import find_mount, missing_fuse
from tests.trees import Entry, build_rich_tree, build_small_tree, snapshot

MOUNT_DEADLINE = 15.0

# Property tests: no per-example deadline (two shared cores make timings noisy;
# every test has pytest-timeout instead), and in CI a fixed example sequence so
# a run is reproducible — a failure found there replays locally with CI=true.
settings.register_profile(
    "nommufs",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=bool(os.environ.get("CI")),
    print_blob=True,
)
settings.load_profile("nommufs")


# -- capabilities ----------------------------------------------------------------


def missing_kernel_erofs() -> str | None:
    """Why the kernel's EROFS mount cannot work here, or None."""
    if os.geteuid() != 0:
        return "not root (the kernel mount needs root)"
    try:
        with open("/proc/filesystems") as f:
            if not any(line.split()[-1:] == ["erofs"] for line in f):
                # the module may be loadable
                subprocess.run(["modprobe", "erofs"], capture_output=True, check=False)
    except OSError:
        return "no /proc/filesystems"
    with open("/proc/filesystems") as f:
        if not any(line.split()[-1:] == ["erofs"] for line in f):
            return "the kernel has no EROFS driver (not in /proc/filesystems)"
    return None


def require(reason: str | None) -> None:
    if reason is not None:
        pytest.skip(reason)


# -- image builders ------------------------------------------------------------------


def mkfs_erofs(image: Path, source: Path, *options: str) -> Path:
    """Build ``image`` from ``source`` with the system's mkfs.erofs."""
    if shutil.which("mkfs.erofs") is None:
        pytest.skip("no mkfs.erofs (package erofs-utils)")
    proc = subprocess.run(
        ["mkfs.erofs", "--quiet", *options, str(image), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"mkfs.erofs {' '.join(options)} failed: {proc.stderr.strip()}")
    return image


def nommufs(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[bytes]:
    """Run the ``nommufs`` command (``python -m fusefs``) and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "fusefs", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[call-overload]
    )


# -- mounts ----------------------------------------------------------------------------


def _fusermount(mnt: Path, *flags: str) -> bool:
    return (
        subprocess.run(
            ["fusermount3", *flags, str(mnt)], capture_output=True, check=False, timeout=30
        ).returncode
        == 0
    )


@dataclass
class FuseMount:
    """A running ``nommufs mount -f``."""

    path: Path
    proc: subprocess.Popen[bytes]
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def unmount(self) -> None:
        """fusermount3 -u, then -uz, then kill: whatever it takes.  Mounts are
        found in the mount table: a stale one (the daemon was killed) is
        invisible to os.path.ismount."""
        if find_mount(self.path) is not None:
            _fusermount(self.path, "-u")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _fusermount(self.path, "-uz")
            self.proc.kill()
            self.proc.wait(timeout=10)
        if find_mount(self.path) is not None:
            _fusermount(self.path, "-uz")


@dataclass
class Mounter:
    base: Path
    mounts: list[FuseMount] = field(default_factory=list)
    kernel: list[Path] = field(default_factory=list)

    def _mountpoint(self, prefix: str) -> Path:
        n = len(self.mounts) + len(self.kernel)
        p = self.base / f"{prefix}-{n}"
        p.mkdir()
        return p

    def fuse(self, image: Path, *args: str) -> FuseMount:
        """``nommufs mount -f [args] image MNT``; returns once mounted (deadline
        MOUNT_DEADLINE s, failing with the daemon's stderr)."""
        m = self.try_fuse(image, *args)
        if isinstance(m, str):
            pytest.fail(f"nommufs mount exited: {m}")
        return m

    def try_fuse(self, image: Path, *args: str) -> FuseMount | str:
        """Like :meth:`fuse`, but a mount that exits (a refused image) returns
        its stderr instead of failing the test; a hang still fails it."""
        require(missing_fuse())
        mnt = self._mountpoint("fuse")
        err = self.base / f"fuse-{len(self.mounts)}.stderr"
        with open(err, "wb") as errf:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fusefs", "mount", "-f", *args, str(image), str(mnt)],
                stdout=subprocess.DEVNULL,
                stderr=errf,
            )
        m = FuseMount(mnt, proc, err)
        self.mounts.append(m)
        deadline = time.monotonic() + MOUNT_DEADLINE
        while not os.path.ismount(mnt):
            if proc.poll() is not None:
                return f"[exit {proc.returncode}] {m.stderr()}"
            if time.monotonic() > deadline:
                pytest.fail(f"nommufs mount not ready after {MOUNT_DEADLINE}s: {m.stderr()}")
            time.sleep(0.05)
        return m

    def kernel_erofs(self, image: Path) -> Path:
        """The kernel's ``mount -t erofs -o ro`` of ``image`` (a loop device
        when the kernel cannot mount a file directly)."""
        require(missing_kernel_erofs())
        mnt = self._mountpoint("kernel")
        for opts in ("ro", "ro,loop"):
            proc = subprocess.run(
                ["mount", "-t", "erofs", "-o", opts, str(image), str(mnt)],
                capture_output=True,
                text=True,
                check=False,
                timeout=30,
            )
            if proc.returncode == 0:
                self.kernel.append(mnt)
                return mnt
        raise AssertionError(f"kernel mount of {image} failed: {proc.stderr.strip()}")

    def close(self) -> None:
        for m in self.mounts:
            with contextlib.suppress(Exception):
                m.unmount()
        for mnt in self.kernel:
            if os.path.ismount(mnt):
                r = subprocess.run(["umount", str(mnt)], capture_output=True, check=False)
                if r.returncode != 0:
                    subprocess.run(["umount", "-l", str(mnt)], capture_output=True, check=False)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    """Mounts (FUSE and kernel) that are always unmounted at teardown."""
    m = Mounter(tmp_path)
    try:
        yield m
    finally:
        m.close()


@pytest.fixture(scope="module")
def module_mounter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mounter]:
    """Like :func:`mounter`, shared by the tests of one module."""
    m = Mounter(tmp_path_factory.mktemp("mnt"))
    try:
        yield m
    finally:
        m.close()


# -- trees --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def rich_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests.trees.build_rich_tree``, built once per session (do not modify)."""
    return build_rich_tree(tmp_path_factory.mktemp("rich") / "tree")


@pytest.fixture(scope="session")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tests.trees.build_small_tree``, built once per session (do not modify)."""
    return build_small_tree(tmp_path_factory.mktemp("small") / "tree")


SnapshotFn = Callable[[Path], dict[str, Entry]]


@pytest.fixture(scope="session")
def snap() -> SnapshotFn:
    return snapshot
