"""The request handlers in-process (no mount): identifier mapping, negative
entries, lookup counts balanced by forget, readdir offsets, error mapping."""

from __future__ import annotations

import errno
import stat
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from fusefs.errors import CorruptImageError
from fusefs.fuse import NommuOperations
from fusefs.vfs import Filesystem, open_image
from tests.conftest import mkfs_erofs
from tests.trees import build_small_tree


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = build_small_tree(tmp_path_factory.mktemp("src") / "tree")
    crowd = src / "crowd"
    crowd.mkdir()
    for i in range(700):
        (crowd / f"n{i:04d}").write_bytes(b"")
    return mkfs_erofs(tmp_path_factory.mktemp("img") / "small.erofs", src, "-zlz4")


@pytest.fixture
def fs(image: Path) -> Iterator[Filesystem]:
    with open_image(image) as fs:
        yield fs


def run(fn: Any, *args: Any) -> Any:
    return trio.run(fn, *args)


def test_root_maps_to_fuse_root(fs: Filesystem) -> None:
    ops = NommuOperations(fs)
    attr = run(ops.getattr, pyfuse3.ROOT_INODE, None)
    assert attr.st_ino == pyfuse3.ROOT_INODE
    assert stat.S_ISDIR(attr.st_mode)
    sub = run(ops.lookup, pyfuse3.ROOT_INODE, b"sub", None)
    assert sub.st_ino not in (0, pyfuse3.ROOT_INODE)
    assert run(ops.getattr, sub.st_ino, None).st_ino == sub.st_ino


def test_negative_entries_and_lookup_counts(fs: Filesystem) -> None:
    ops = NommuOperations(fs)
    neg = run(ops.lookup, pyfuse3.ROOT_INODE, b"absent", None)
    assert neg.st_ino == 0 and neg.entry_timeout > 0
    assert ops.lookup_counts == {}
    a = run(ops.lookup, pyfuse3.ROOT_INODE, b"file1.txt", None).st_ino
    run(ops.lookup, pyfuse3.ROOT_INODE, b"file1.txt", None)
    assert ops.lookup_counts == {a: 2}
    run(ops.forget, [(a, 1)])
    assert ops.lookup_counts == {a: 1}
    run(ops.forget, [(a, 1), (12345, 3)])  # unknown inodes: never raises
    assert ops.lookup_counts == {}


def _list(ops: NommuOperations, fh: int, start: int, limit: int) -> list[tuple[bytes, int]]:
    out: list[tuple[bytes, int]] = []

    def reply(token: object, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        if len(out) >= limit:
            return False
        out.append((name, next_id))
        return True

    original = pyfuse3.readdir_reply
    pyfuse3.readdir_reply = reply
    try:
        run(ops.readdir, fh, start, None)
    finally:
        pyfuse3.readdir_reply = original
    return out


def test_readdir_resumes_at_stable_offsets(fs: Filesystem) -> None:
    ops = NommuOperations(fs)
    crowd = run(ops.lookup, pyfuse3.ROOT_INODE, b"crowd", None).st_ino
    fh = run(ops.opendir, crowd, None)
    whole = _list(ops, fh, 0, 10_000)
    names = [n for n, _ in whole]
    assert names[:2] == [b".", b".."] and len(names) == 702
    # resume from every 37th offset, in pieces smaller than a batch and larger
    pieces: list[bytes] = []
    pos = 0
    while True:
        got = _list(ops, fh, pos, 37 if len(pieces) % 2 else 300)
        if not got:
            break
        pieces += [n for n, _ in got]
        pos = got[-1][1]
    assert pieces == names
    # readdirplus: each entry but . and .. counts as a lookup
    assert sum(ops.lookup_counts.values()) == 2 * 700 + 1  # + the lookup of crowd


class Exploding(Filesystem):
    """Wraps a filesystem; getattr of one Ino raises a bug, read raises corruption."""

    def __init__(self, inner: Filesystem, bad: int) -> None:
        self.inner, self.bad = inner, bad
        super().__init__(inner.image, inner.memory)

    @property
    def root(self) -> Any:
        return self.inner.root

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def getattr(self, ino: Any) -> Any:
        if ino == self.bad:
            raise IndexError("a bug")
        return self.inner.getattr(ino)

    def read(self, ino: Any, offset: int, size: int) -> bytes:
        raise CorruptImageError("bad block", structure="test", offset=offset)

    lookup = property(lambda self: self.inner.lookup)  # type: ignore[assignment]
    readdir = property(lambda self: self.inner.readdir)  # type: ignore[assignment]
    readlink = property(lambda self: self.inner.readlink)  # type: ignore[assignment]
    listxattr = property(lambda self: self.inner.listxattr)  # type: ignore[assignment]
    getxattr = property(lambda self: self.inner.getxattr)  # type: ignore[assignment]
    statfs = property(lambda self: self.inner.statfs)  # type: ignore[assignment]
    describe = property(lambda self: self.inner.describe)  # type: ignore[assignment]


def test_errors_map_to_errno(fs: Filesystem) -> None:
    sub = fs.lookup(fs.root, b"sub")
    ops = NommuOperations(Exploding(fs, sub))
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(ops.getattr, sub, None)
    assert info.value.errno == errno.EIO
    assert ops.errors == 1
    f = run(ops.lookup, pyfuse3.ROOT_INODE, b"file1.txt", None).st_ino
    fh = run(ops.open, f, 0, None).fh
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(ops.read, fh, 0, 4096)
    assert info.value.errno == errno.EUCLEAN
    assert ops.errors == 1  # an FsError is not unexpected
    with pytest.raises(pyfuse3.FUSEError) as info:
        run(ops.open, f, 1, None)  # O_WRONLY
    assert info.value.errno == errno.EROFS


# (the Filesystem method that reads through the page cache, the predicate
# that says so, the request that calls it)
OFF_LOOP: dict[str, tuple[str, str, Callable[[NommuOperations], Awaitable[object]]]] = {
    "lookup": (
        "lookup", "meta_reads_data", lambda ops: ops.lookup(pyfuse3.ROOT_INODE, b"sub", None)
    ),
    "getattr": ("getattr", "record_reads_data", lambda ops: ops.getattr(pyfuse3.ROOT_INODE, None)),
    "listxattr": (
        "listxattr", "record_reads_data", lambda ops: ops.listxattr(pyfuse3.ROOT_INODE, None)
    ),
}


@pytest.mark.parametrize("request_name", list(OFF_LOOP))
def test_metadata_that_reads_data_leaves_the_event_loop(
    request_name: str, fs: Filesystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A directory whose bytes come through the page cache (an EROFS
    compressed directory), or an inode whose record does (an EROFS metabox),
    may wait behind a decompression holding the data lock: those requests
    must run in a worker thread, so the loop keeps serving."""
    method, predicate, call = OFF_LOOP[request_name]
    ops = NommuOperations(fs)
    root = fs.root
    inner = getattr(fs, method)
    monkeypatch.setattr(fs, predicate, lambda ino: ino == root)

    def locked(*args: Any) -> Any:
        with fs.lock:  # what reading through the page cache takes
            return inner(*args)

    monkeypatch.setattr(fs, method, locked)
    held, release = threading.Event(), threading.Event()

    def decompressing_worker() -> None:
        with fs.lock:
            held.set()
            release.wait(2.0)  # bounded: a stalled loop cannot release it

    worker = threading.Thread(target=decompressing_worker)
    worker.start()
    held.wait(2.0)
    ticks: list[float] = []

    async def main() -> object:
        got: list[object] = []

        async def ticker() -> None:
            while True:
                ticks.append(trio.current_time())
                await trio.sleep(0.005)

        async def ask() -> None:
            got.append(await call(ops))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            nursery.start_soon(ask)
            await trio.sleep(0.1)
            release.set()
            while not got:
                await trio.sleep(0.005)
            nursery.cancel_scope.cancel()
        return got[0]

    try:
        answer = run(main)
    finally:
        release.set()
        worker.join()
    if request_name == "lookup":
        assert answer.st_ino not in (0, pyfuse3.ROOT_INODE)  # type: ignore[attr-defined]
    assert len(ticks) >= 10, f"the event loop stalled behind the data lock ({len(ticks)} ticks)"


def test_metabox_records_and_plain_records() -> None:
    """Which images say their inode records read through the page cache."""
    corpus = Path(__file__).resolve().parent.parent / "corpus" / "upstream-1.9.3"
    with open_image(corpus / "erofs-metabox-lz4hc.img") as fs:
        assert fs.record_reads_data(fs.root) and fs.meta_reads_data(fs.root)
    with open_image(corpus / "erofs-48bit-lz4hc.img") as fs:
        assert not fs.record_reads_data(fs.root)
