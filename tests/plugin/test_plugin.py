"""The pytest plugin, used as a user's project uses it: the installed
``pytest11`` entry point (this repository's conftest does not define
``nommufs_image`` or ``nommufs_mount``), in this run and in a separate pytest
run of a user's test file, where a test kills the daemon under its mount, one
fails (and gets the daemon's log in its report), and teardown still leaves
nothing mounted and no daemon running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fusefs import mounttab
from nommufs import Mount

pytestmark = pytest.mark.fuse

USER_TESTS = '''
import errno, os, signal, time
import pytest

ROOTFS = {"etc/hostname": "board\\n", "bin/tool": b"\\x7fELF" + bytes(range(256)) * 400}


def test_reads_on_a_small_board(nommufs_image, nommufs_mount):
    image = nommufs_image(ROOTFS, z="lz4hc", C=16384, T=0)
    m = nommufs_mount(image, mm="nommu-contig", arena="1536K", decompress="percpu-buffer")
    assert (m.path / "etc" / "hostname").read_text() == "board\\n"
    assert (m.path / "bin" / "tool").read_bytes() == ROOTFS["bin/tool"]
    stats = m.stats()
    assert stats["frames_total"] == 384 and stats["bytes_decompressed"] > 0


def test_daemon_killed_mid_test(nommufs_image, nommufs_mount):
    m = nommufs_mount(nommufs_image({"a": "a"}, format="cramfs"))
    os.kill(m.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while m.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(OSError) as info:
        os.statvfs(m.path)
    assert info.value.errno == errno.ENOTCONN  # stale, for teardown to clear


def test_fails_and_shows_the_daemon_log(nommufs_image, nommufs_mount):
    m = nommufs_mount(nommufs_image({"x": "x"}))
    assert (m.path / "x").read_text() == "y", "on purpose"
'''


def test_fixtures_come_from_the_installed_entry_point(pytestconfig: pytest.Config) -> None:
    plugin = pytestconfig.pluginmanager.get_plugin("nommufs")
    assert plugin is not None and plugin.__name__ == "nommufs.pytest_plugin"
    dists = [d for p, d in pytestconfig.pluginmanager.list_plugin_distinfo() if p is plugin]
    assert [d.metadata["Name"] for d in dists] == ["nommufs"]
    conftest = Path(__file__).parents[1] / "conftest.py"
    assert "def nommufs_mount" not in conftest.read_text()


def test_mount_reads_and_reports_stats(
    nommufs_image: Callable[..., Path], nommufs_mount: Callable[..., Mount]
) -> None:
    image = nommufs_image({"etc/motd": "hello\n", "big": b"abc" * 100_000}, z="lz4", T=0)
    m = nommufs_mount(image, mm="nommu-bounce", arena="2M")
    assert (m.path / "etc" / "motd").read_bytes() == b"hello\n"
    assert (m.path / "big").read_bytes() == b"abc" * 100_000
    stats = m.stats()
    assert stats["mounted"] is True and stats["frames_total"] == 512
    assert stats["pid"] == m.pid and m.alive


def test_daemon_killed_mid_test_still_tears_down(
    nommufs_image: Callable[..., Path], nommufs_mount: Callable[..., Mount]
) -> None:
    m = nommufs_mount(nommufs_image({"f": "f"}))
    os.kill(m.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while m.alive and time.monotonic() < deadline:
        time.sleep(0.02)
    assert mounttab.is_stale(m.path)
    m.unmount()  # what the fixture's teardown does (again, idempotently)
    assert mounttab.find_mount(m.path) is None


def _daemons_under(base: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
            except OSError:
                continue
            if b"fusefs\0mount" in cmd and str(base).encode() in cmd:
                pids.append(int(d.name))
    return pids


def test_a_users_test_suite(tmp_path: Path) -> None:
    """A separate pytest run, in a directory with no conftest, as a user's CI runs it."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "test_rootfs.py").write_text(textwrap.dedent(USER_TESTS))
    base = tmp_path / "basetemp"
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", f"--basetemp={base}",
         "-q", "-rA", "test_rootfs.py"],
        cwd=project, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "1 failed, 2 passed" in out, out
    assert "FAILED test_rootfs.py::test_fails_and_shows_the_daemon_log" in out, out
    # the failing test's report carries its daemon's log (-v: the mount line)
    assert "nommufs daemon log: " in out and "INFO: mounted " in out, out
    assert [m.point for m in mounttab.read_mounts() if m.point.startswith(str(base))] == []
    assert _daemons_under(base) == []
    for p in base.rglob("nommufs-mnt-*"):
        assert os.listdir(p) == [], p  # plain empty directories again (the stale one too)
