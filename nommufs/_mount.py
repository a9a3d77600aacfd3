"""Mounting from Python: :func:`mount` and :class:`Mount`, a ``nommufs mount``
that is always unmounted.

The daemon is a separate process (FUSE serving needs the main thread and
signals of a process of its own): ``nommufs mount -f`` as a child of the
caller (``foreground=True``, the default: its stderr is the log), or
``nommufs mount`` detached as a shell user would start it, logging to a file.
Either way the mount is *ready* when :func:`mount` returns (the daemon wrote
its first stats, with its pid; see :mod:`fusefs.fuse.daemon`), and
:meth:`Mount.unmount` takes it down whatever happened to the daemon: a live
mount is unmounted and the daemon waited for; a stale one (the daemon was
killed) is cleared; a busy one is detached lazily; a daemon that does not end
is killed.  Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final, Literal

from fusefs import mounttab
from fusefs.errors import FsError
from fusefs.vfs import MmMode, Strategy, parse_size

READY_TIMEOUT: Final = 15.0
EXIT_TIMEOUT: Final = 10.0
POLL: Final = 0.02


def mount(
    image: str | os.PathLike[str],
    mountpoint: str | os.PathLike[str],
    *,
    foreground: bool = True,
    mm: MmMode = "mmu",
    decompress: Strategy = "vmap",
    arena: int | str = "64M",
    xip_read: Literal["pagecache", "direct"] = "pagecache",
    offset: int = 0,
    threads: int = 2,
    options: tuple[str, ...] | list[str] = (),
    verbose: int = 0,
    workdir: str | os.PathLike[str] | None = None,
    timeout: float = READY_TIMEOUT,
) -> Mount:
    """Mount ``image`` read-only at the existing directory ``mountpoint`` and
    return once the mount is ready.

    ``mm``, ``decompress``, ``arena``, ``xip_read``: the simulated machine
    (as :func:`~nommufs.open_image`); ``options``: FUSE ``-o`` options;
    ``verbose``: ``-v`` count for the daemon's log; ``workdir``: where the log
    and stats files go (default: a private temporary directory, removed at
    unmount).  Use the result as a context manager, or call
    :meth:`Mount.unmount`.  Raises :class:`~fusefs.errors.FsError` with the
    daemon's one-line message when it cannot mount (nothing is left mounted).
    """
    own_dir = workdir is None
    work = Path(tempfile.mkdtemp(prefix="nommufs-mount-") if workdir is None else workdir)
    stats, log = work / "stats.json", work / "daemon.log"
    argv = [
        sys.executable, "-m", "fusefs", "mount", *(["-f"] if foreground else []),
        *(["-v"] * verbose), "--stats", str(stats), "--mm", mm, "--decompress", decompress,
        "--arena", str(parse_size(arena)), "--xip-read", xip_read, "--offset", str(offset),
        "--threads", str(threads), *(f"-o{o}" for o in options),
    ]  # fmt: skip
    for stale in (stats, log):
        stale.unlink(missing_ok=True)
    m = Mount(Path(mountpoint), Path(image), stats, log, work if own_dir else None)
    if foreground:
        with open(log, "ab") as errf:
            m._proc = subprocess.Popen(
                [*argv, os.fspath(image), os.fspath(mountpoint)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errf,
            )  # fmt: skip
    else:
        r = subprocess.run(
            [*argv, "--log", str(log), os.fspath(image), os.fspath(mountpoint)],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
            check=False,
        )  # fmt: skip
        if r.returncode != 0:
            m._discard()
            raise FsError(_last_line(r.stderr) or f"nommufs mount exited with {r.returncode}")
    try:
        m._wait_ready(timeout)
    except BaseException:
        m.unmount()
        raise
    return m


def _last_line(text: str) -> str:
    """The daemon's one-line error, without the command line's ``nommufs mount:``."""
    lines = text.strip().splitlines()
    return lines[-1].removeprefix("nommufs mount: ") if lines else ""


class Mount:
    """A ready ``nommufs mount``: :attr:`path`, the daemon's :attr:`pid`,
    :meth:`stats`, :meth:`log`, and :meth:`unmount` (also on leaving a ``with``)."""

    def __init__(
        self, path: Path, image: Path, stats_path: Path, log_path: Path, own_dir: Path | None
    ) -> None:
        self.path = path
        self.image = image
        self.stats_path = stats_path
        self.log_path = log_path
        self.pid = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._own_dir = own_dir
        self._last_stats: dict[str, Any] = {}
        self.unmounted = False

    # -- the daemon ------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the daemon process still runs."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid > 0 and _running(self.pid)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            stats = self._read_stats()
            if stats.get("serial", 0) >= 1:
                self.pid = int(stats["pid"])
                return
            if self._proc is not None and self._proc.poll() is not None:
                raise FsError(
                    _last_line(self.log()) or f"nommufs mount exited with {self._proc.returncode}"
                )
            if time.monotonic() > deadline:
                raise FsError(f"{self.path}: nommufs mount not ready after {timeout:.0f}s")
            time.sleep(POLL)

    def _read_stats(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.stats_path.read_text())
        except (OSError, ValueError):
            return self._last_stats
        self._last_stats = data
        return data

    def stats(self, timeout: float = READY_TIMEOUT) -> dict[str, Any]:
        """The daemon's memory counters now (it writes them on SIGUSR1): arena
        frames, peak, page cache, bytes decompressed, copies, vmap calls,
        evictions...  After unmounting: the last ones it wrote."""
        if self.unmounted or not self.alive:
            return self._read_stats()
        before = int(self._read_stats().get("serial", 0))
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while int(self._read_stats().get("serial", 0)) <= before:
            if not self.alive or time.monotonic() > deadline:
                raise FsError(f"{self.path}: the daemon wrote no stats within {timeout:.0f}s")
            time.sleep(POLL)
        return self._last_stats

    def log(self) -> str:
        """What the daemon logged so far (its stderr in the foreground)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- unmounting ------------------------------------------------------------------

    def unmount(self, timeout: float = EXIT_TIMEOUT) -> None:
        """Unmount and wait for the daemon to end, whatever state it is in
        (idempotent).  Raises FsError when the mount could not be removed."""
        if self.unmounted:
            return
        deadline = time.monotonic() + timeout
        problem = self._unmount_until(deadline)
        if not self._wait_exit(deadline):
            if self._proc is not None:
                self._proc.kill()
            elif self.pid:
                os.kill(self.pid, signal.SIGKILL)
            self._wait_exit(time.monotonic() + timeout)
            problem = problem or f"{self.path}: the daemon did not end; killed"
        if mounttab.find_mount(self.path) is not None:  # killed under its mount: stale now
            try:
                mounttab.unmount(self.path, lazy=True)
            except FsError as e:
                problem = problem or str(e)
        self.unmounted = True
        self._read_stats()  # the last ones, written after unmounting, before they go
        if self._own_dir is not None and not problem:
            self._discard()
        if problem:
            raise FsError(problem)

    def _unmount_until(self, deadline: float) -> str | None:
        """Unmount, retrying while busy until ``deadline``, then lazily."""
        while True:
            try:
                if mounttab.find_mount(self.path) is None:
                    return None
                mounttab.unmount(self.path)
                return None
            except FsError as e:
                if time.monotonic() > deadline:
                    try:
                        mounttab.unmount(self.path, lazy=True)
                    except FsError:
                        return str(e)
                    return None
            time.sleep(0.1)

    def _wait_exit(self, deadline: float) -> bool:
        while self.alive:
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)
        if self._proc is not None:
            self._proc.wait()
        return True

    def _discard(self) -> None:
        if self._own_dir is None:
            return
        for f in (self.stats_path, self.log_path):
            f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self._own_dir.rmdir()

    def __enter__(self) -> Mount:
        return self

    def __exit__(self, *exc: object) -> None:
        self.unmount()

    def __repr__(self) -> str:
        return f"<Mount {self.image} at {self.path} (pid {self.pid})>"


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, which is not our child to
    reap, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
