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
writer to get round to it.

The data itself does not come back when the image is a file (``out_fd``):
a batch's payloads are one contiguous run of the data area, so once the
writer has taken the batches before it, the pool knows where it starts and
tells the worker, which writes it there itself (pwrite on the inherited
descriptor) and keeps it until then; the writer only lays out metadata.
For a durable OUT the worker also starts that run's writeback
(:func:`~fusefs.atomicfile.start_writeback`), so the final fsync does not
wait for the whole data area at the end.
Otherwise (or with ``-E dedupe``, where the writer picks the pclusters)
the payloads follow the message, read once into one buffer and written
from views of it.

Only sources every process can read on its own are forked for (files
under SRC, bytes in memory); a tar archive's members share one file position
and stay with threads.  Messages: a le64 length pair, the pickled results
(payloads left out), then any payloads back to back, with writev; a worker
that fails to write sends its error with the top bit of the first length set.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import fcntl
import gc
import operator
import os
import pickle
import select
import signal
import struct
import traceback
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from fusefs.atomicfile import start_writeback
from fusefs.erofs.format import DataLayout, MapHeader
from mkimage.erofs.compress import segment_bytes
from mkimage.erofs.data import (
    PLAN_FIELDS,
    Cutter,
    FileResult,
    apply_plan,
    plan_of,
    prepare_file,
)
from mkimage.erofs.inode import Inode
from mkimage.erofs.options import ErofsOptions
from mkimage.errors import BuildError
from mkimage.tree import BytesData, FileData

BATCH_BYTES: Final = 1 << 20
BATCH_FILES: Final = 256
WINDOW: Final = 16
_HEADER: Final = struct.Struct("<QQ")
_TASK: Final = struct.Struct("<BIQQ")  # kind, batch, then a, b (PREPARE) or offset, length (PLACE)
_PREPARE, _PLACE, _PREPARE_SPLIT = 0, 1, 2  # _PREPARE_SPLIT: cut on the worker's threads
_ERROR: Final = 1 << 63
_IOV_MAX: Final = 1024
_PIPE_BYTES: Final = 1 << 20
_DONE: Final = object()

Prepared = tuple[tuple[object, ...] | None, FileResult]  # the inode's plan, if it has one
_RESULT_FIELDS: Final = [f.name for f in dataclasses.fields(FileResult)]


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


# PLAN_FIELDS[0] is the layout and [1] the map header: sent as an int and a tuple
assert PLAN_FIELDS[:2] == ("layout", "map_header")
_LAYOUTS: Final = {int(layout): layout for layout in DataLayout}
_FLAT: Final = (DataLayout.EROFS_INODE_FLAT_PLAIN, DataLayout.EROFS_INODE_FLAT_INLINE)
_result_fields: Final = operator.attrgetter(*_RESULT_FIELDS[2:])
_header_fields: Final = operator.attrgetter(*(f.name for f in dataclasses.fields(MapHeader)))


def _to_wire(ino: Inode, res: FileResult) -> tuple[object, ...]:
    """Plain values only: pickling slotted dataclasses and enums runs Python
    code per object, on both sides.  No plan for a flat file: prepare_file
    leaves the inode of one as it was (test_pool checks it)."""
    result = _result_fields(res)
    if res.layout in _FLAT:
        return None, int(res.layout), result
    layout, header, *rest = plan_of(ino)
    assert isinstance(layout, DataLayout)
    assert header is None or isinstance(header, MapHeader)
    head = None if header is None else _header_fields(header)
    return (int(layout), head, *rest), int(res.layout), result


def _from_wire(wire: tuple[Any, ...]) -> Prepared:
    plan, res_layout, result = wire
    res = FileResult(_LAYOUTS[res_layout], b"", *result)
    if plan is None:
        return None, res
    layout, head, *rest = plan
    header = None if head is None else MapHeader(*head)
    return (_LAYOUTS[layout], header, *rest), res


def prepare_batch(
    files: Sequence[Inode], opts: ErofsOptions, cutter: Cutter | None, *, send_payloads: bool
) -> tuple[list[bytes | memoryview], list[bytes | memoryview]]:
    """One message, as buffers to write in order (the payloads at its end
    when ``send_payloads``), and the payloads: every file of ``files``
    prepared, or the BuildError."""
    done = []
    payloads: list[bytes | memoryview] = []
    lengths = []
    try:
        for ino in files:
            res = prepare_file(ino.node, ino, opts, cutter)
            if res.payload:
                payloads.append(res.payload)
            lengths.append(len(res.payload))
            done.append(_to_wire(ino, res))
        body = pickle.dumps((None, done, lengths), pickle.HIGHEST_PROTOCOL)
    except BuildError as e:
        body, payloads = pickle.dumps((str(e), [], [])), []
    sent = payloads if send_payloads else []
    return [_HEADER.pack(len(body), sum(map(len, sent))), body, *sent], payloads


def read_batch(body: memoryview, payload: memoryview | None) -> list[Prepared]:
    """The results of one message (BuildError when the worker met one); the
    payloads are views of ``payload``, or empty with their sizes in
    ``FileResult.written`` when the worker writes them (None)."""
    error, done, lengths = pickle.loads(body)
    if error is not None:
        raise BuildError(error)
    out = []
    pos = 0
    for wire, n in zip(done, lengths, strict=True):
        plan, res = _from_wire(wire)
        if payload is None:
            res.written = n
        else:
            res.payload = payload[pos : pos + n]
            pos += n
        out.append((plan, res))
    return out


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


def _pwrite_all(fd: int, buffers: Sequence[bytes | memoryview], offset: int) -> None:
    views = [memoryview(b) for b in buffers if len(b)]
    while views:
        n = os.pwritev(fd, views[:_IOV_MAX], offset)
        offset += n
        while views and n >= len(views[0]):
            n -= len(views[0])
            views.pop(0)
        if n:
            views[0] = views[0][n:]


def _worker(
    tasks: int,
    results: int,
    files: Sequence[Inode],
    opts: ErofsOptions,
    out_fd: int | None,
    threads: int,
) -> None:
    """A child's whole life: batches in, messages out, payloads written
    where the writer says, until the task pipe closes.  A file the writer
    marks (:meth:`ProcessPool._split`) is cut segment by segment on
    ``threads`` threads (the compressors release the GIL), so that one
    large file does not leave the other CPUs idle; any other is cut on
    the worker's own thread, since the other workers keep the CPUs busy
    and threads would only contend with them (and for the GIL)."""
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_DFL)
    gc.disable()  # nothing a worker makes is cyclic; collections only touch shared pages
    _keep_freed_memory()
    segments = ThreadPoolExecutor(max_workers=threads)  # threads start on a first split file
    cutters = {
        _PREPARE: Cutter(opts, None) if opts.codec is not None else None,
        _PREPARE_SPLIT: Cutter(opts, segments) if opts.codec is not None else None,
    }
    held: dict[int, list[bytes | memoryview]] = {}  # batch -> payloads, until placed
    while True:
        task = _read_exactly(tasks, _TASK.size)
        if task is None:
            return
        kind, k, a, b = _TASK.unpack(task)
        if kind != _PLACE:
            message, payloads = prepare_batch(
                files[a:b], opts, cutters[kind], send_payloads=out_fd is None
            )
            if out_fd is not None:
                held[k] = payloads
            _write_all(results, message)
            continue
        assert out_fd is not None
        try:
            _pwrite_all(out_fd, held.pop(k), a)
            if opts.durable:
                start_writeback(out_fd, a, b)
        except OSError as e:
            body = f"writing the image: {e.strerror or e}".encode()
            _write_all(results, [_HEADER.pack(_ERROR | len(body), 0), body])
            return


# glibc's mallopt parameters (<malloc.h>)
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3
_MMAP_THRESHOLD: Final = 32 << 20  # glibc's largest
_TRIM_THRESHOLD: Final = 256 << 20


def _keep_freed_memory() -> None:
    """Let a worker's malloc reuse the memory it frees.  Each file is read
    into a buffer of its size and each batch's payloads are joined: with
    glibc's defaults a buffer over 128 KiB is a fresh mmap, so every large
    file's bytes cost page faults and zeroing again (a fifth of a build's
    faults), and freed heap is trimmed back to the kernel as soon as 128 KiB
    is free at its top.  Here buffers up to 32 MiB come from the heap, and
    up to 256 MiB of freed heap stays for the next ones: what a worker keeps
    is what it has just used, so its peak stays where it was (62-75 MB
    against 65-66 on the bench tree).  Without glibc's mallopt nothing
    changes."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)


class _Inbox:
    """What has arrived from one worker: a message being filled."""

    __slots__ = ("buf", "fill", "head")

    def __init__(self) -> None:
        self.head = bytearray(_HEADER.size)
        self.buf: bytearray | None = None  # the message after its header, once known
        self.fill = 0


class ProcessPool:
    """``workers`` forked children preparing ``files``; :meth:`results`
    yields them in order.  With ``out_fd`` the workers write the payloads
    into it themselves (except under -E dedupe).  Use as a context manager:
    leaving it waits for the children's writes (or kills them if the writer
    stopped early)."""

    def __init__(
        self, files: Sequence[Inode], opts: ErofsOptions, workers: int, out_fd: int | None = None
    ) -> None:
        self.files = files
        self.max_extent = opts.max_extent_bytes
        self.batches = batches(files)
        if "dedupe" in opts.extended:
            out_fd = None  # the writer chooses which pclusters to write
        self.out_fd = out_fd
        self.received: dict[int, tuple[memoryview, memoryview]] = {}
        self.owned: list[deque[int]] = [deque() for _ in range(workers)]  # batches out, in order
        self.holder: dict[int, int] = {}  # batch -> worker holding its payloads
        self.next = 0  # first batch not yet handed out
        self.consumed = 0  # batches the writer has taken
        self.pids: list[int] = []
        self.tasks: list[int] = []
        self.results_fds: list[int] = []
        self.inbox = [_Inbox() for _ in range(workers)]
        pipes = [(os.pipe(), os.pipe()) for _ in range(workers)]
        parent_ends = [fd for (_tr, tw), (rr, _rw) in pipes for fd in (tw, rr)]
        for w, ((tr, tw), (rr, rw)) in enumerate(pipes):
            with contextlib.suppress(OSError):  # a larger pipe: fewer stalls, fewer wake-ups
                fcntl.fcntl(rw, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            pid = os.fork()
            if pid == 0:  # pragma: no cover  (the child; coverage does not follow forks)
                code = 0
                try:
                    # only its own ends: another worker's must close when that one ends
                    later = [fd for (t, _), (_, r) in pipes[w + 1 :] for fd in (t, r)]
                    for fd in parent_ends + later:
                        os.close(fd)
                    _worker(tr, rw, files, opts, out_fd, workers)
                except BrokenPipeError:
                    code = 1  # the writer is gone: nothing to tell
                except BaseException:
                    traceback.print_exc()  # a bug: the writer only learns the exit code
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
            a, b = self.batches[self.next]
            kind = _PREPARE_SPLIT if self._split(a, b) else _PREPARE
            _write_all(self.tasks[w], [_TASK.pack(kind, self.next, a, b)])
            self.owned[w].append(self.next)
            self.holder[self.next] = w
            self.next += 1

    def _split(self, a: int, b: int) -> bool:
        """Is batch ``files[a:b]`` (the next to go out) one file to cut on
        several threads?  Only where the other workers would otherwise run
        out of work while it is cut: among the last batches, or larger than
        the window lets them run ahead by.  Segment boundaries do not depend
        on it, so neither does the image."""
        if b - a != 1 or self.files[a].node.size <= segment_bytes(self.max_extent):
            return False
        tail = self.next >= len(self.batches) - len(self.tasks)
        return tail or self.files[a].node.size > WINDOW * BATCH_BYTES

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
                    box.buf, box.fill = bytearray((n & ~_ERROR) + m), 0
            else:
                k = os.readv(fd, [memoryview(box.buf)[box.fill :]])
                if k == 0:
                    raise BuildError(f"worker process {self.pids[w]} ended mid-message")
                box.fill += k
            if box.buf is not None and box.fill == len(box.buf):
                n, _m = _HEADER.unpack(box.head)
                if n & _ERROR:
                    raise BuildError(box.buf.decode(errors="replace"))
                view = memoryview(box.buf)
                self.received[self.owned[w].popleft()] = (view[:n], view[n:])
                box.buf, box.fill = None, 0
                self._dispatch()

    def results(
        self, start: int = 0, idle: Iterator[None] | None = None
    ) -> Iterator[tuple[Inode, FileResult]]:
        """Every file in order; with ``out_fd`` the data area starts at byte
        ``start`` of it, and each file's payload lands right after the one
        before (the writer checks the end with :attr:`end`).  While no
        worker has sent anything, the next step of ``idle`` runs (work of
        the writer's own that does not wait for the files)."""
        self.end = start
        for k, (a, _b) in enumerate(self.batches):
            while k not in self.received:
                if idle is not None and not self.poller.poll(0):
                    if next(idle, _DONE) is None:
                        continue
                    idle = None
                self._pump()
            body, payload = self.received.pop(k)
            self.consumed += 1
            self._dispatch()
            done = read_batch(body, None if self.out_fd is not None else payload)
            if self.out_fd is not None:
                size = sum(res.written for _, res in done)
                if size:
                    place = _TASK.pack(_PLACE, k, self.end, size)
                    _write_all(self.tasks[self.holder[k]], [place])
                self.end += size
            del self.holder[k]
            if k + 1 == len(self.batches):
                self._release()
            for i, (plan, res) in enumerate(done):
                ino = self.files[a + i]
                if plan is not None:  # None: the inode as it was
                    apply_plan(ino, plan)
                yield ino, res

    def _release(self) -> None:
        """No more tasks: each worker writes what it was last told to and
        exits, tearing its memory down while the writer lays out the
        metadata (not after it, in :meth:`__exit__`)."""
        for fd in self.tasks:
            os.close(fd)
        self.tasks = []

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self._release()
        if exc[0] is not None:
            for pid in self.pids:
                os.kill(pid, signal.SIGKILL)
        errors = []
        try:
            if exc[0] is None:
                # the last payloads are being written: a worker that could not says why
                errors = [e for fd in self.results_fds if (e := _drain(fd)) is not None]
        finally:
            failed = []
            for pid in self.pids:
                _, status = os.waitpid(pid, 0)
                if status:
                    failed.append(pid)
            for fd in self.results_fds:
                os.close(fd)
        if exc[0] is None:
            if errors:
                raise BuildError(errors[0])
            if failed:
                raise BuildError(f"worker process {failed[0]} failed")


def _drain(fd: int) -> str | None:
    """Read a worker's pipe to its end, once every batch was taken: the
    error it sent, if any."""
    data = bytearray()
    while chunk := os.read(fd, 1 << 16):
        data += chunk
    while len(data) >= _HEADER.size:
        n, m = _HEADER.unpack_from(data)
        body = data[_HEADER.size : _HEADER.size + (n & ~_ERROR) + m]
        if n & _ERROR:
            return body.decode(errors="replace")
        del data[: _HEADER.size + n + m]
    return None
