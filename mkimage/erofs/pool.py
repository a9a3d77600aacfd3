"""Worker processes for ``mkimage erofs -j N``: files are prepared in forked
children and passed back to the writer, which lays them out in tree order.

Threads cannot do it: every file costs some Python work per pcluster and
per file, and under the GIL that work, the writer's and the compressor
calls' hand-offs run one at a time.

The contract (checked by tests/mkimage/test_pool.py): a worker runs the
same :func:`~mkimage.erofs.data.prepare_file` as the writer would, on its
fork-time copy of the file's :class:`~mkimage.erofs.inode.Inode`, and sends
back the :class:`~mkimage.erofs.data.FileResult` and the inode fields it set
(:data:`~mkimage.erofs.data.PLAN_FIELDS`); the writer applies them to its own
inode.  Nothing a worker computes depends on which worker ran a file or
when, so the image is the same for any ``-j``.

Files go out in batches (consecutive files in tree order, about
:data:`BATCH_BYTES` of input each), at most two per worker at a time and
:data:`WINDOW` per worker not yet taken by the writer (which bounds memory).
The writer's own thread takes in whatever any worker has sent (poll) while
it waits for the next batch in order, so a worker never waits for the
writer to get round to it; each message is read once, into one buffer, and
the payloads are written to the image from views of it.

Only sources every process can read on its own are forked for (files
under SRC, bytes in memory); a tar archive's members share one file position
and stay with threads.  Messages: a le64 length pair, the pickled
results (payloads left out) and the payloads back to back, with writev.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import os
import pickle
import select
import signal
import struct
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Final

from mkimage.erofs.data import Cutter, FileResult, apply_plan, plan_of, prepare_file
from mkimage.erofs.inode import Inode
from mkimage.erofs.options import ErofsOptions
from mkimage.errors import BuildError
from mkimage.tree import BytesData, FileData

BATCH_BYTES: Final = 1 << 20
BATCH_FILES: Final = 256
WINDOW: Final = 4
_HEADER: Final = struct.Struct("<QQ")
_TASK: Final = struct.Struct("<II")
_IOV_MAX: Final = 1024
_PIPE_BYTES: Final = 1 << 20

Prepared = tuple[tuple[object, ...], FileResult]


def forkable(files: Sequence[Inode]) -> bool:
    """Can each file be read by another process on its own?"""
    return all(i.node.data is None or isinstance(i.node.data, FileData | BytesData) for i in files)


def batches(files: Sequence[Inode]) -> list[tuple[int, int]]:
    """Consecutive ``files[a:b]`` of about BATCH_BYTES input (a larger file alone)."""
    out = []
    a = total = 0
    for i, ino in enumerate(files):
        total += ino.node.size
        if total >= BATCH_BYTES or i + 1 - a >= BATCH_FILES:
            out.append((a, i + 1))
            a, total = i + 1, 0
    if a < len(files):
        out.append((a, len(files)))
    return out


def prepare_batch(
    files: Sequence[Inode], opts: ErofsOptions, cutter: Cutter | None
) -> list[bytes | memoryview]:
    """One message, as buffers to write in order: every file of ``files``
    prepared, or the BuildError."""
    done: list[Prepared] = []
    payloads: list[bytes | memoryview] = []
    try:
        for ino in files:
            res = prepare_file(ino.node, ino, opts, cutter)
            if res.payload:
                payloads.append(res.payload)
            done.append((plan_of(ino), res))
        lengths = [len(r.payload) for _, r in done]
        for _, r in done:
            r.payload = b""
        body = pickle.dumps((None, done, lengths), pickle.HIGHEST_PROTOCOL)
    except BuildError as e:
        body, payloads = pickle.dumps((str(e), [], [])), []
    return [_HEADER.pack(len(body), sum(map(len, payloads))), body, *payloads]


def read_batch(body: memoryview, payload: memoryview) -> list[Prepared]:
    """The results of one message (BuildError when the worker met one); the
    payloads are views of ``payload``."""
    error, done, lengths = pickle.loads(body)
    if error is not None:
        raise BuildError(error)
    pos = 0
    for (_plan, res), n in zip(done, lengths, strict=True):
        res.payload = payload[pos : pos + n]
        pos += n
    return list(done)


def _read_exactly(fd: int, n: int) -> bytes | None:
    """``n`` bytes from ``fd``; None at end of file before them."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            return None
        got += k
    return bytes(buf)


def _write_all(fd: int, buffers: Sequence[bytes | memoryview]) -> None:
    """All of ``buffers``, in order (writev, IOV_MAX at a time)."""
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def _worker(tasks: int, results: int, files: Sequence[Inode], opts: ErofsOptions) -> None:
    """A child's whole life: batches in, messages out, until the task pipe closes."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    gc.disable()  # nothing a worker makes is cyclic; collections only touch shared pages
    cutter = Cutter(opts, None) if opts.codec is not None else None
    while True:
        task = _read_exactly(tasks, _TASK.size)
        if task is None:
            return
        a, b = _TASK.unpack(task)
        _write_all(results, prepare_batch(files[a:b], opts, cutter))


class _Inbox:
    """What has arrived from one worker: a message being filled."""

    __slots__ = ("buf", "fill", "head")

    def __init__(self) -> None:
        self.head = bytearray(_HEADER.size)
        self.buf: bytearray | None = None  # the message after its header, once known
        self.fill = 0


class ProcessPool:
    """``workers`` forked children preparing ``files``; :meth:`results`
    yields them in order.  Use as a context manager: leaving it ends the
    children (killed if the writer stopped early)."""

    def __init__(self, files: Sequence[Inode], opts: ErofsOptions, workers: int) -> None:
        self.files = files
        self.batches = batches(files)
        self.received: dict[int, tuple[memoryview, memoryview]] = {}
        self.owned: list[deque[int]] = [deque() for _ in range(workers)]  # batches out, in order
        self.next = 0  # first batch not yet handed out
        self.consumed = 0  # batches the writer has taken
        self.pids: list[int] = []
        self.tasks: list[int] = []
        self.results_fds: list[int] = []
        self.inbox = [_Inbox() for _ in range(workers)]
        pipes = [(os.pipe(), os.pipe()) for _ in range(workers)]
        parent_ends = [fd for (_tr, tw), (rr, _rw) in pipes for fd in (tw, rr)]
        for (tr, tw), (rr, rw) in pipes:
            with contextlib.suppress(OSError):  # a larger pipe: fewer stalls, fewer wake-ups
                fcntl.fcntl(rw, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            pid = os.fork()
            if pid == 0:  # pragma: no cover  (the child; coverage does not follow forks)
                code = 0
                try:
                    for fd in parent_ends:
                        os.close(fd)
                    _worker(tr, rw, files, opts)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            self.pids.append(pid)
            os.close(tr)
            os.close(rw)
            self.tasks.append(tw)
            self.results_fds.append(rr)
        self.poller = select.poll()
        for fd in self.results_fds:
            self.poller.register(fd, select.POLLIN)
        self.by_fd = {fd: w for w, fd in enumerate(self.results_fds)}
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand batches to free workers: each has at most two out, and at
        most WINDOW per worker are unconsumed."""
        limit = min(len(self.batches), self.consumed + WINDOW * len(self.tasks))
        while self.next < limit:
            w = min(range(len(self.owned)), key=lambda k: len(self.owned[k]))
            if len(self.owned[w]) >= 2:
                return
            _write_all(self.tasks[w], [_TASK.pack(*self.batches[self.next])])
            self.owned[w].append(self.next)
            self.next += 1

    def _pump(self) -> None:
        """Wait for any worker's data and take what has come."""
        for fd, _events in self.poller.poll():
            w = self.by_fd[fd]
            box = self.inbox[w]
            if box.buf is None:
                k = os.readv(fd, [memoryview(box.head)[box.fill :]])
                if k == 0:
                    raise BuildError(f"worker process {self.pids[w]} ended early")
                box.fill += k
                if box.fill == len(box.head):
                    n, m = _HEADER.unpack(box.head)
                    box.buf, box.fill = bytearray(n + m), 0
            else:
                k = os.readv(fd, [memoryview(box.buf)[box.fill :]])
                if k == 0:
                    raise BuildError(f"worker process {self.pids[w]} ended mid-message")
                box.fill += k
            if box.buf is not None and box.fill == len(box.buf):
                n, _m = _HEADER.unpack(box.head)
                view = memoryview(box.buf)
                self.received[self.owned[w].popleft()] = (view[:n], view[n:])
                box.buf, box.fill = None, 0
                self._dispatch()

    def results(self) -> Iterator[tuple[Inode, FileResult]]:
        for k, (a, _b) in enumerate(self.batches):
            while k not in self.received:
                self._pump()
            body, payload = self.received.pop(k)
            self.consumed += 1
            self._dispatch()
            for i, (plan, res) in enumerate(read_batch(body, payload)):
                ino = self.files[a + i]
                apply_plan(ino, plan)
                yield ino, res

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.tasks:
            os.close(fd)
        if exc[0] is not None:
            for pid in self.pids:
                os.kill(pid, signal.SIGKILL)
        failed = []
        for pid in self.pids:
            _, status = os.waitpid(pid, 0)
            if status:
                failed.append(pid)
        for fd in self.results_fds:
            os.close(fd)
        if failed and exc[0] is None:
            raise BuildError(f"worker process {failed[0]} failed")
