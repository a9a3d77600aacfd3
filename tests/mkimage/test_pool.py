"""The worker processes' contract (mkimage.erofs.pool): what a forked worker
sends back is what the writer would have computed itself."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mkimage.erofs.compress import MAX_EXTENT_BYTES, parse_codecs, segment_bytes
from mkimage.erofs.data import Cutter, FileResult, plan_of, prepare_file
from mkimage.erofs.inode import Inode
from mkimage.erofs.options import ErofsOptions
from mkimage.erofs.pool import BATCH_BYTES, WINDOW, ProcessPool, batches, forkable
from mkimage.erofs.writer import ErofsWriter
from mkimage.errors import BuildError
from mkimage.tree import scan

CASES = {
    "lz4": ("lz4", 4096, frozenset()),
    "lz4hc-64k-ztail": ("lz4hc", 65536, frozenset({"ztailpacking"})),
    "zstd-fragments-dedupe": ("zstd", 16384, frozenset({"fragments", "dedupe"})),
    "none": ("none", 4096, frozenset()),
}


def _files(src: Path, opts: ErofsOptions) -> list[Inode]:
    writer = ErofsWriter(scan(str(src)), opts)
    writer._collect()
    return [i for i in writer.inodes if i.node.is_reg]


def _options(case: str) -> ErofsOptions:
    alg, pcluster, extended = CASES[case]
    codecs = parse_codecs(alg)
    return ErofsOptions(
        codec=codecs[0] if codecs else None, pcluster_size=pcluster, extended=extended,
        build_time=1700000000, fixed_time=True, all_mtimes=1700000000,
    )  # fmt: skip


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("writes", [False, True], ids=["payloads-sent", "workers-write"])
def test_worker_results_equal_in_process(
    rich_tree: Path, tmp_path: Path, case: str, workers: int, writes: bool
) -> None:
    opts = _options(case)
    here = _files(rich_tree, opts)
    cutter = Cutter(opts, None) if opts.codec is not None else None
    expected: list[tuple[tuple[object, ...], FileResult]] = []
    for ino in here:
        res = prepare_file(ino.node, ino, opts, cutter)
        expected.append((plan_of(ino), res))
    there = _files(rich_tree, opts)
    assert forkable(there)
    start = 3 * 4096
    with open(tmp_path / "data", "w+b") as out:
        fd = out.fileno() if writes else None
        with ProcessPool(there, opts, workers, fd) as pool:
            got = list(pool.results(start))
        written = out.read()
    assert [ino.node.path for ino, _ in got] == [ino.node.path for ino in here]
    # the writer's own inodes carry the worker's decisions, field by field
    assert [plan_of(ino) for ino, _ in got] == [plan for plan, _ in expected]
    if writes and pool.out_fd is not None:
        # the data area, each file right after the one before, at ``start``
        assert all(not res.payload for _, res in got)
        assert [res.written for _, res in got] == [len(res.payload) for _, res in expected]
        assert written[:start] == bytes(start)
        assert written[start:] == b"".join(res.payload for _, res in expected)
        assert pool.end == len(written)
        for (_, res), (_, want) in zip(got, expected, strict=True):
            res.payload, res.written = want.payload, 0
    assert [res for _, res in got] == [res for _, res in expected]
    assert any(res.payload for _, res in expected)


def test_batches_cover_every_file_once_in_order(rich_tree: Path) -> None:
    files = _files(rich_tree, _options("lz4"))
    cut = batches(files)
    assert [i for a, b in cut for i in range(a, b)] == list(range(len(files)))
    assert all(b > a for a, b in cut)


def _five_files(tmp_path: Path) -> tuple[Path, ErofsOptions, list[Inode]]:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(20000))
    opts = _options("lz4")
    return src, opts, _files(src, opts)


def test_a_worker_error_reaches_the_writer(tmp_path: Path) -> None:
    src, opts, files = _five_files(tmp_path)
    (src / "f3").write_bytes(b"changed")  # after the scan
    with pytest.raises(BuildError, match="f3"), ProcessPool(files, opts, 2) as pool:
        for _ in pool.results():
            pass


def test_a_worker_that_cannot_write_says_why(tmp_path: Path) -> None:
    _src, opts, files = _five_files(tmp_path)
    (tmp_path / "ro").write_bytes(b"")
    # read-only: pwrite fails with EBADF, in the worker, after every batch was taken
    with (
        open(tmp_path / "ro", "rb") as ro,
        pytest.raises(BuildError, match="writing the image: Bad file descriptor"),
        ProcessPool(files, opts, 2, ro.fileno()) as pool,
    ):
        for _ in pool.results():
            pass


def test_a_build_whose_workers_cannot_write_fails_whole(tmp_path: Path) -> None:
    """Writes past 2 MiB fail (the file-size limit: EFBIG), the workers'
    data as well as the writer's metadata, and the workers are waited for
    only when the image is done: the build says so in one line and leaves
    nothing, under OUT's name or any other."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(1 << 20))  # incompressible: 8 MiB of data
    out = tmp_path / "out"
    out.mkdir()

    def limited() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of the signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    r = subprocess.run(
        [sys.executable, "-m", "mkimage", "erofs", "-j", "2", "-z", "lz4",
         str(out / "img"), str(src)],
        capture_output=True, check=False, timeout=120, preexec_fn=limited,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode() == "mkimage erofs: writing the image: File too large\n"
    assert os.listdir(out) == []


def test_only_files_the_others_would_wait_for_are_cut_on_threads(tmp_path: Path) -> None:
    """A file larger than a segment is cut on a worker's threads only among
    the last batches or when larger than the window of batches the other
    workers may run ahead by; whatever is cut where, the results are the
    in-process ones."""
    src = tmp_path / "src"
    src.mkdir()
    words = [os.urandom(6).hex().encode() for _ in range(512)]
    text = b" ".join(words[i * 7 % 512] for i in range(400_000))  # compressible, 5.6 MB
    (src / "a-big").write_bytes(text[: segment_bytes(MAX_EXTENT_BYTES) + 1])
    (src / "b-huge").write_bytes((text * 4)[: WINDOW * BATCH_BYTES + 1])
    for i in range(8):
        (src / f"c-{i}").write_bytes(text[i : i + 700_000])
    (src / "d-last").write_bytes(text)
    opts = _options("lz4")
    files = _files(src, opts)
    with ProcessPool(files, opts, 2) as pool:
        split = {}
        handed_out = pool.next
        for k, (a, b) in enumerate(pool.batches):
            pool.next = k  # as when batch k is the next to go out
            split[b"+".join(i.node.path for i in files[a:b])] = pool._split(a, b)
        pool.next = handed_out
        got = list(pool.results())
    assert split[b"a-big"] is False  # larger than a segment, but the others have work
    assert split[b"b-huge"] is True  # the others would run out of batches meanwhile
    assert split[b"d-last"] is True  # the last: nothing else to do
    assert not any(v for name, v in split.items() if name.startswith(b"c-"))
    cutter = Cutter(opts, None)
    fresh = _files(src, opts)
    assert [res for _, res in got] == [prepare_file(i.node, i, opts, cutter) for i in fresh]
