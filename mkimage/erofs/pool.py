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
:data:`BATCH_BYTES` of input each); one reader thread per worker receives
whole batches, so that a worker never waits for the writer to get round to
it, and hands the next batch to whichever worker has become free.  At most
:data:`WINDOW` batches per worker are out at once, which bounds memory.

Only sources every process can read on its own are forked for (files
under SRC, bytes in memory); a tar archive's members share one file position
and stay with threads.  Messages: a le64 length pair, the pickled
results (payloads left out), then the payloads back to back.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import struct
import threading
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


def prepare_batch(files: Sequence[Inode], opts: ErofsOptions, cutter: Cutter | None) -> bytes:
    """One message: every file of ``files`` prepared, or the BuildError."""
    done: list[Prepared] = []
    payloads: list[bytes] = []
    try:
        for ino in files:
            res = prepare_file(ino.node, ino, opts, cutter)
            payloads.append(res.payload)
            res.payload = b""
            done.append((plan_of(ino), res))
        body = pickle.dumps((None, done, [len(p) for p in payloads]), pickle.HIGHEST_PROTOCOL)
    except BuildError as e:
        body, payloads = pickle.dumps((str(e), [], [])), []
    return b"".join([_HEADER.pack(len(body), sum(map(len, payloads))), body, *payloads])


def read_batch(data: bytes, payload: bytes) -> list[Prepared]:
    """The results of one message (BuildError when the worker met one)."""
    error, done, lengths = pickle.loads(data)
    if error is not None:
        raise BuildError(error)
    pos = 0
    view = memoryview(payload)
    for (_plan, res), n in zip(done, lengths, strict=True):
        res.payload = bytes(view[pos : pos + n])
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


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


class ProcessPool:
    """``workers`` forked children preparing ``files``; :meth:`results`
    yields them in order.  Use as a context manager: leaving it ends the
    children (killed if the writer stopped early)."""

    def __init__(self, files: Sequence[Inode], opts: ErofsOptions, workers: int) -> None:
        self.files = files
        self.batches = batches(files)
        self.lock = threading.Condition()
        self.received: dict[int, list[Prepared] | BaseException] = {}
        self.owner: dict[int, int] = {}  # batch -> worker, while out
        self.busy = [0] * workers  # batches out per worker
        self.next = 0  # first batch not yet handed out
        self.consumed = 0  # batches the writer has taken
        self.pids: list[int] = []
        self.tasks: list[int] = []
        self.readers: list[threading.Thread] = []
        self.closed = False
        pipes = [(os.pipe(), os.pipe()) for _ in range(workers)]
        parent_ends = [fd for (_tr, tw), (rr, _rw) in pipes for fd in (tw, rr)]
        for (tr, tw), (_rr, rw) in pipes:
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
        for w, ((_tr, _tw), (rr, _rw)) in enumerate(pipes):
            t = threading.Thread(target=self._receive, args=(w, rr), daemon=True)
            self.readers.append(t)
        with self.lock:
            self._dispatch()
        for t in self.readers:
            t.start()

    def _dispatch(self) -> None:
        """Hand batches to free workers (lock held): each has at most two
        out, and at most WINDOW per worker are unconsumed."""
        if self.closed:
            return
        limit = self.consumed + WINDOW * len(self.tasks)
        while self.next < min(len(self.batches), limit):
            w = min(range(len(self.busy)), key=lambda k: self.busy[k])
            if self.busy[w] >= 2:
                return
            a, b = self.batches[self.next]
            _write_all(self.tasks[w], _TASK.pack(a, b))
            self.owner[self.next] = w
            self.busy[w] += 1
            self.next += 1

    def _receive(self, w: int, fd: int) -> None:
        """Reader thread of worker ``w``: its messages, in the order it got batches."""
        try:
            while True:
                head = _read_exactly(fd, _HEADER.size)
                if head is None:
                    return
                n, m = _HEADER.unpack(head)
                body = _read_exactly(fd, n)
                payload = _read_exactly(fd, m) if m else b""
                if body is None or payload is None:
                    raise BuildError(f"worker process {self.pids[w]} ended mid-message")
                try:
                    item: list[Prepared] | BaseException = read_batch(body, payload)
                except BuildError as e:
                    item = e
                with self.lock:
                    k = min(b for b, o in self.owner.items() if o == w)
                    del self.owner[k]
                    self.busy[w] -= 1
                    self.received[k] = item
                    self._dispatch()
                    self.lock.notify_all()
        except BaseException as e:  # handed to the writer
            with self.lock:
                for k, o in list(self.owner.items()):
                    if o == w:
                        self.received[k] = e
                self.lock.notify_all()
        finally:
            os.close(fd)

    def results(self) -> Iterator[tuple[Inode, FileResult]]:
        for k, (a, _b) in enumerate(self.batches):
            with self.lock:
                while k not in self.received:
                    if k not in self.owner and k >= self.next:
                        raise BuildError("internal: a batch was never handed out")
                    self.lock.wait()
                item = self.received.pop(k)
                self.consumed += 1
                self._dispatch()
            if isinstance(item, BaseException):
                raise item
            for i, (plan, res) in enumerate(item):
                ino = self.files[a + i]
                apply_plan(ino, plan)
                yield ino, res

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.closed = True
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
        for t in self.readers:
            t.join()
        if failed and exc[0] is None:
            raise BuildError(f"worker process {failed[0]} failed")
