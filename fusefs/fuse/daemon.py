"""Mounting: open the image, mount through /dev/fuse, serve until unmounted.

The mount point is checked first, in the calling process (a stale nommufs
mount there is cleared: see :func:`fusefs.mounttab.prepare_mount_point`).
Without ``foreground`` the process then forks *before* anything else happens
(no trio, no threads yet): the child opens the image, mounts, reports ``OK``
(or its one-line error) through a pipe, detaches and serves; the parent waits
on the pipe and returns the outcome, like squashfuse.  SIGINT, SIGTERM and
SIGHUP end the serving loop and unmount cleanly; an external ``fusermount3
-u`` ends it too.

The mount is *ready* once the signal handlers are in place and the request
loop is about to start: then the stats file (if any) is written for the
first time, with the daemon's pid, and the parent hears ``OK``.  The stats
file holds the image's memory counters as JSON and is rewritten on SIGUSR1
and once more after unmounting (``"mounted": false``); ``"serial"`` counts
the writes.  With a log file, the daemon's log goes there (stderr stays for
the foreground; a detached daemon would otherwise log to syslog).
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import signal
from collections.abc import Callable, Iterable
from typing import Final

import pyfuse3
import trio

from fusefs.atomicfile import atomic_output
from fusefs.errors import FsError, Interrupted, InvalidArgumentError
from fusefs.fuse.ops import NommuOperations
from fusefs.mounttab import FSNAME, find_mount, prepare_mount_point
from fusefs.vfs import Filesystem

log = logging.getLogger("nommufs.fuse")

# Mount options we always set; `-o` adds to them, and replaces those of the
# same name (fsname=, subtype=).
BASE_OPTIONS: Final = ("ro", "default_permissions", f"fsname={FSNAME}")
FORBIDDEN_OPTIONS: Final = ("rw",)
LOG_FORMAT: Final = "%(asctime)s nommufs[%(process)d]: %(levelname)s: %(message)s"
# Sequential reads: 1 MiB of readahead makes FUSE read requests of up to
# 1 MiB instead of 128 KiB (measured: about 1.5x on a trivial backend).
DEFAULT_READAHEAD = 1 << 20


def mount_options(fs: Filesystem, extra: Iterable[str]) -> list[str]:
    """The FUSE mount options for ``fs`` and the user's ``-o`` list, in a
    fixed order, each name once: an option of the user's replaces ours of the
    same name (``fsname=``, ``subtype=``) where it stands."""
    opts: dict[str, str] = {}
    for opt in (*BASE_OPTIONS, f"subtype={fs.format_name}", *extra):
        opt = opt.strip()
        if not opt:
            continue
        if opt in FORBIDDEN_OPTIONS:
            raise InvalidArgumentError(f"-o {opt}: nommufs mounts are read-only")
        opts[opt.partition("=")[0]] = opt
    return list(opts.values())


class StatsFile:
    """The memory counters of ``fs`` as one JSON object at ``path``, each
    write replacing the last atomically (a reader never sees half of one)."""

    def __init__(self, fs: Filesystem, path: str) -> None:
        self.fs = fs
        self.path = path
        self.serial = 0

    def write(self, *, mounted: bool = True) -> None:
        self.serial += 1
        stats = {
            "image": self.fs.image.path, "format": self.fs.format_name, "pid": os.getpid(),
            "mounted": mounted, "serial": self.serial, **self.fs.memory_stats(),
        }  # fmt: skip
        try:
            with atomic_output(self.path) as f:
                f.write(json.dumps(stats, indent=1, sort_keys=True).encode() + b"\n")
        except OSError as e:
            log.warning("cannot write stats to %s: %s", self.path, e)


async def _serve(
    ops: NommuOperations, max_tasks: int, on_ready: Callable[[], None], on_usr1: Callable[[], None]
) -> None:
    async with trio.open_nursery() as nursery:

        async def on_signals(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            ends = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
            with trio.open_signal_receiver(*ends, signal.SIGUSR1) as sigs:
                task_status.started()
                async for signum in sigs:
                    if signum == signal.SIGUSR1:
                        on_usr1()
                        continue
                    log.info("%s: unmounting", signal.Signals(signum).name)
                    nursery.cancel_scope.cancel()
                    return

        async def main() -> None:
            await pyfuse3.main(min_tasks=1, max_tasks=max_tasks)
            nursery.cancel_scope.cancel()  # unmounted from outside

        # ready only once a signal can no longer kill us half-way
        await nursery.start(on_signals)
        on_ready()
        nursery.start_soon(main)


def serve(
    open_fs: Callable[[], Filesystem],
    mountpoint: str,
    *,
    options: Iterable[str] = (),
    threads: int = 2,
    foreground: bool = False,
    on_ready: Callable[[], None] | None = None,
    readahead: int = DEFAULT_READAHEAD,
    stats_path: str | None = None,
    log_path: str | None = None,
) -> int:
    """Mount the filesystem ``open_fs()`` returns at ``mountpoint`` and serve it.

    In the foreground this returns when unmounted.  Otherwise it returns in
    the parent once the daemon reports the mount up (0) or raises its error.
    ``stats_path``: where the memory counters go (when ready, on SIGUSR1 and
    at unmount); ``log_path``: a file the daemon's log is appended to.
    """
    if threads < 1:
        raise InvalidArgumentError(f"--threads {threads}: at least 1")
    if stats_path is not None:
        stats_path = os.path.abspath(stats_path)  # the daemon chdirs to /
        where = os.path.dirname(stats_path)
        if not os.path.isdir(where) or not os.access(where, os.W_OK | os.X_OK):
            raise FsError(f"--stats {stats_path}: cannot write in {where}")
    log_handler = _open_log(log_path) if log_path is not None else None
    prepare_mount_point(mountpoint)
    if foreground:
        if log_handler is not None:
            logging.getLogger().addHandler(log_handler)
        return _run(open_fs, mountpoint, options, threads, on_ready, readahead, stats_path)
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(rfd)
        code = 1
        pipe_open = True
        try:
            os.setsid()

            def ready() -> None:
                nonlocal pipe_open
                os.write(wfd, b"OK\n")
                os.close(wfd)
                pipe_open = False
                _detach(log_handler)

            code = _run(open_fs, mountpoint, options, threads, ready, readahead, stats_path)
        except BaseException as e:  # the parent must always hear back
            if isinstance(e, FsError):
                msg = str(e)
            elif isinstance(e, Interrupted):
                msg = f"interrupted by {e.name} before the mount was ready"
            elif isinstance(e, OSError):
                where = os.fsdecode(e.filename) if e.filename is not None else mountpoint
                msg = f"{where}: {e.strerror or e}"
            else:
                msg = f"{type(e).__name__}: {e}"
                log.exception("daemon failed")
            if pipe_open:
                with contextlib.suppress(OSError):
                    os.write(wfd, msg.replace("\n", " ").encode() + b"\n")
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as pipe:
        answer = pipe.read().decode(errors="replace").strip()
    if answer == "OK":
        return 0
    os.waitpid(pid, 0)
    raise FsError(answer or "the daemon exited before the mount was ready")


def _open_log(path: str) -> logging.Handler:
    """A handler appending to ``path``, opened now so that a bad path is the
    caller's error, before any fork."""
    try:
        handler = logging.FileHandler(os.path.abspath(path), encoding="utf-8")
    except OSError as e:
        raise FsError(f"--log {path}: {e.strerror}") from None
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def _detach(log_handler: logging.Handler | None) -> None:
    """Daemon: stdio to /dev/null; logs to ``log_handler``, else to syslog
    when there is one."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.chdir("/")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if log_handler is not None:
        root.addHandler(log_handler)
    elif os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("nommufs[%(process)d]: %(levelname)s: %(message)s"))
        root.addHandler(handler)
    else:
        root.addHandler(logging.NullHandler())


def set_readahead(real_mountpoint: str, readahead: int) -> None:
    """Let the kernel read ahead ``readahead`` bytes on the mount at
    ``real_mountpoint`` (resolved *before* mounting): fewer, larger FUSE read
    requests.  Needs root; otherwise the kernel's default (128 KiB) stays.
    Only effective after the kernel processed the INIT reply, which caps
    readahead at what the kernel proposed in INIT."""
    try:
        entry = find_mount(real_mountpoint)
    except OSError:
        return
    if entry is None:
        return
    dev = entry.device
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(f"{readahead // 1024}\n")
    except OSError as e:
        log.debug("read_ahead_kb of %s left as is: %s", dev, e)


def _run(
    open_fs: Callable[[], Filesystem],
    mountpoint: str,
    options: Iterable[str],
    threads: int,
    on_ready: Callable[[], None] | None,
    readahead: int,
    stats_path: str | None = None,
) -> int:
    with open_fs() as fs:
        real_mountpoint = os.path.realpath(mountpoint)

        def raise_readahead() -> None:
            set_readahead(real_mountpoint, readahead)

        ops = NommuOperations(
            fs, threads=threads, on_first_open=raise_readahead if readahead else None
        )
        opts = mount_options(fs, options)
        stats = StatsFile(fs, stats_path) if stats_path is not None else None
        try:
            pyfuse3.init(ops, mountpoint, set(opts))  # one per name: any order means the same
        except RuntimeError as e:
            raise FsError(f"{mountpoint}: cannot mount ({e})") from None
        log.info("mounted %s at %s (%s)", fs.image.path, mountpoint, ",".join(opts))

        def ready() -> None:
            if stats is not None:
                stats.write()
            if on_ready is not None:
                on_ready()

        def on_usr1() -> None:
            if stats is not None:
                stats.write()

        try:
            # enough request tasks that `threads` reads can decompress at once
            # while metadata requests keep being answered
            trio.run(_serve, ops, max(8, threads * 4), ready, on_usr1)
        except BaseException:
            pyfuse3.close(unmount=True)
            raise
        pyfuse3.close(unmount=True)
        if stats is not None:
            stats.write(mounted=False)
        if ops.errors:
            log.warning("%d request(s) failed unexpectedly (EIO)", ops.errors)
    return 0
