"""Mounting: open the image, mount through /dev/fuse, serve until unmounted.

Without ``foreground`` the process forks *before* anything else happens (no
trio, no threads yet): the child opens the image, mounts, reports ``OK`` (or
its one-line error) through a pipe, detaches and serves; the parent waits on
the pipe and returns the outcome, like squashfuse.  SIGINT and SIGTERM end
the serving loop and unmount cleanly; an external ``fusermount3 -u`` ends it
too.  With a stats file, the image's memory counters are written there as
JSON on SIGUSR1 and once more after unmounting.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import logging.handlers
import os
import re
import signal
from collections.abc import Callable, Iterable

import pyfuse3
import trio

from fusefs.errors import FsError, InvalidArgumentError
from fusefs.fuse.ops import NommuOperations
from fusefs.vfs import Filesystem

log = logging.getLogger("nommufs.fuse")

# Mount options we always set; `-o` adds to them.
BASE_OPTIONS = ("ro", "default_permissions", "fsname=nommufs")
FORBIDDEN_OPTIONS = ("rw",)
# Sequential reads: 1 MiB of readahead makes FUSE read requests of up to
# 1 MiB instead of 128 KiB (measured: about 1.5x on a trivial backend).
DEFAULT_READAHEAD = 1 << 20


def mount_options(fs: Filesystem, extra: Iterable[str]) -> set[str]:
    """The FUSE mount options for ``fs`` plus the user's ``-o`` list."""
    opts = set(BASE_OPTIONS)
    opts.add(f"subtype={fs.format_name}")
    for opt in extra:
        if not opt:
            continue
        if opt in FORBIDDEN_OPTIONS:
            raise InvalidArgumentError(f"-o {opt}: nommufs mounts are read-only")
        opts.add(opt)
    return opts


def write_stats(fs: Filesystem, path: str) -> None:
    """The memory counters of ``fs`` as one JSON object, replacing ``path`` atomically."""
    stats = {"image": fs.image.path, "format": fs.format_name, **fs.memory_stats()}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(stats, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write stats to %s: %s", path, e)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


async def _serve(ops: NommuOperations, max_tasks: int, on_usr1: Callable[[], None] | None) -> None:
    async with trio.open_nursery() as nursery:

        async def on_stats_signal() -> None:
            assert on_usr1 is not None
            with trio.open_signal_receiver(signal.SIGUSR1) as sigs:
                async for _ in sigs:
                    on_usr1()

        async def on_signal() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as sigs:
                async for signum in sigs:
                    log.info("signal %d: unmounting", signum)
                    nursery.cancel_scope.cancel()
                    return

        async def main() -> None:
            await pyfuse3.main(min_tasks=1, max_tasks=max_tasks)
            nursery.cancel_scope.cancel()  # unmounted from outside

        nursery.start_soon(on_signal)
        if on_usr1 is not None:
            nursery.start_soon(on_stats_signal)
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
) -> int:
    """Mount the filesystem ``open_fs()`` returns at ``mountpoint`` and serve it.

    In the foreground this returns when unmounted.  Otherwise it returns in
    the parent once the daemon reports the mount up (0) or raises its error.
    ``stats_path``: where the memory counters go (on SIGUSR1 and at unmount).
    """
    if stats_path is not None:
        stats_path = os.path.abspath(stats_path)  # the daemon chdirs to /
    if not os.path.isdir(mountpoint):
        raise InvalidArgumentError(f"{mountpoint}: not a directory")
    if threads < 1:
        raise InvalidArgumentError(f"--threads {threads}: at least 1")
    if foreground:
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
                _detach()

            code = _run(open_fs, mountpoint, options, threads, ready, readahead, stats_path)
        except BaseException as e:  # the parent must always hear back
            if isinstance(e, FsError):
                msg = str(e)
            elif isinstance(e, OSError):
                msg = f"{mountpoint}: {e.strerror or e}"
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


def _detach() -> None:
    """Daemon: stdio to /dev/null, logs to syslog when there is one."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.chdir("/")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    if os.path.exists("/dev/log"):
        handler = logging.handlers.SysLogHandler(address="/dev/log")
        handler.setFormatter(logging.Formatter("nommufs[%(process)d]: %(levelname)s: %(message)s"))
        root.addHandler(handler)
    else:
        root.addHandler(logging.NullHandler())


def _mount_device(want: str) -> str | None:
    """``major:minor`` of the mount at the resolved path ``want``, from
    /proc/self/mountinfo.  Nothing here may stat() the mount point: that
    would wait for our own, not yet running, request loop."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        fields = line.split()
        # mountinfo escapes blanks and backslashes in octal (\040)
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if point == want:
            found = fields[2]  # the last one is the topmost mount
    return found


def set_readahead(real_mountpoint: str, readahead: int) -> None:
    """Let the kernel read ahead ``readahead`` bytes on the mount at
    ``real_mountpoint`` (resolved *before* mounting): fewer, larger FUSE read
    requests.  Needs root; otherwise the kernel's default (128 KiB) stays.
    Only effective after the kernel processed the INIT reply, which caps
    readahead at what the kernel proposed in INIT."""
    dev = _mount_device(real_mountpoint)
    if dev is None:
        return
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
        try:
            pyfuse3.init(ops, mountpoint, opts)
        except RuntimeError as e:
            raise FsError(f"{mountpoint}: cannot mount ({e})") from None
        log.info("mounted %s at %s (%s)", fs.image.path, mountpoint, ",".join(sorted(opts)))
        try:
            if on_ready is not None:
                on_ready()
            # enough request tasks that `threads` reads can decompress at once
            # while metadata requests keep being answered
            on_usr1 = functools.partial(write_stats, fs, stats_path) if stats_path else None
            trio.run(_serve, ops, max(8, threads * 4), on_usr1)
        except BaseException:
            pyfuse3.close(unmount=True)
            raise
        pyfuse3.close(unmount=True)
        if stats_path is not None:
            write_stats(fs, stats_path)
        if ops.errors:
            log.warning("%d request(s) failed unexpectedly (EIO)", ops.errors)
    return 0
