"""The FUSE mount: reads at any offset and size, read-only refusals, negative
lookups, statfs and mount options, the daemon mode and clean shutdown."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import Mounter, missing_fuse, mkfs_erofs, nommufs
from tests.trees import build_small_tree

pytestmark = pytest.mark.fuse


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_small_tree(tmp_path_factory.mktemp("src") / "tree")
    (root / "big.bin").write_bytes(os.urandom(300_000) + b"text " * 200_000)
    return root


@pytest.fixture(scope="module")
def image(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mkfs_erofs(tmp_path_factory.mktemp("img") / "small.erofs", src, "-zlz4hc", "-C65536")


def _files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file() and not p.is_symlink())


def test_reads_at_any_offset_and_size(src: Path, image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image)
    for path in _files(src):
        want = path.read_bytes()
        rel = path.relative_to(src)
        fd = os.open(m.path / rel, os.O_RDONLY)
        try:
            n = len(want)
            for off in sorted({0, 1, 4095, 4096, 4097, n // 2, max(n - 1, 0), n, n + 10}):
                for size in (1, 100, 4096, 65536 + 7, 131072, 1 << 20):
                    assert os.pread(fd, size, off) == want[off : off + size], (rel, off, size)
        finally:
            os.close(fd)
        assert (m.path / rel).read_bytes() == want
    assert m.alive


def test_writes_are_refused(image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image)
    attempts = [
        lambda: open(m.path / "file1.txt", "r+b"),  # noqa: SIM115
        lambda: open(m.path / "new", "wb"),  # noqa: SIM115
        lambda: os.mkdir(m.path / "newdir"),
        lambda: os.unlink(m.path / "file1.txt"),
        lambda: os.rename(m.path / "file1.txt", m.path / "file9"),
        lambda: os.symlink("x", m.path / "sym"),
        lambda: os.chmod(m.path / "file1.txt", 0o777),
        lambda: os.utime(m.path / "file1.txt", (0, 0)),
        lambda: os.setxattr(m.path / "file1.txt", "user.x", b"1"),
        lambda: os.truncate(m.path / "file1.txt", 0),
    ]
    for attempt in attempts:
        with pytest.raises(OSError) as info:
            attempt()
        assert info.value.errno == errno.EROFS, attempt
    assert not os.access(m.path / "file1.txt", os.W_OK)
    assert m.alive


def test_negative_lookups_and_errors(image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image)
    for _ in range(3):
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "no-such-file")
    with pytest.raises(NotADirectoryError):
        os.stat(m.path / "file1.txt" / "x")
    with pytest.raises(OSError) as info:
        os.getxattr(m.path / "file1.txt", "user.absent")
    assert info.value.errno == errno.ENODATA
    assert os.readlink(m.path / "link") == "sub/deeper/hello"
    assert (m.path / "link").read_bytes() == b"hello, world\n"


def test_statfs_and_mount_options(image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image)
    st = os.statvfs(m.path)
    assert st.f_bsize == 4096
    assert st.f_blocks * st.f_frsize <= image.stat().st_size + 4096
    assert st.f_files > 0
    lines = [ln.split() for ln in Path("/proc/mounts").read_text().splitlines()]
    (line,) = [ln for ln in lines if ln[1] == str(m.path)]
    assert line[0] == "nommufs"
    assert line[2] == "fuse.erofs"
    assert "ro" in line[3].split(",")
    assert "allow_other" not in line[3]


def test_readdir_matches_source(src: Path, image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image)
    for d in [src, *(p for p in src.rglob("*") if p.is_dir() and not p.is_symlink())]:
        rel = d.relative_to(src)
        assert sorted(os.listdir(m.path / rel)) == sorted(os.listdir(d))
        for ent in os.scandir(m.path / rel):
            assert ent.inode() != 0


def test_concurrent_reads_with_one_thread(src: Path, image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image, "--threads", "1")
    files = _files(src)
    failures: list[str] = []

    def reader(path: Path) -> None:
        for _ in range(3):
            if (m.path / path.relative_to(src)).read_bytes() != path.read_bytes():
                failures.append(str(path))

    threads = [threading.Thread(target=reader, args=(p,)) for p in files * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures
    assert m.alive


def test_sigterm_unmounts_cleanly(image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image)
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(timeout=15) == 0, m.stderr()
    assert not os.path.ismount(m.path)


def test_external_unmount_ends_the_daemon(image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image)
    r = nommufs("umount", str(m.path))
    assert r.returncode == 0, r.stderr
    assert m.proc.wait(timeout=15) == 0, m.stderr()


def _daemon_pids(mnt: Path) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(mnt).encode() in cmd and b"mount" in cmd:
                pids.append(int(d.name))
    return pids


def test_daemon_mode(image: Path, tmp_path: Path) -> None:
    reason = missing_fuse()
    if reason:
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    start = time.monotonic()
    r = nommufs("mount", str(image), str(mnt), timeout=30)
    try:
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - start < 15
        assert os.path.ismount(mnt)  # ready when the parent returns
        assert (mnt / "sub" / "deeper" / "hello").read_bytes() == b"hello, world\n"
        pids = _daemon_pids(mnt)
        assert pids
    finally:
        if os.path.ismount(mnt):
            r2 = nommufs("umount", str(mnt))
            if r2.returncode:
                subprocess.run(["fusermount3", "-uz", str(mnt)], check=False)
    assert r2.returncode == 0, r2.stderr
    deadline = time.monotonic() + 15
    while _daemon_pids(mnt) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _daemon_pids(mnt)


@pytest.mark.parametrize("mode", ["daemon", "foreground"])
def test_mount_errors_are_one_line(mode: str, tmp_path: Path) -> None:
    reason = missing_fuse()
    if reason:
        pytest.skip(reason)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x00" * 65536)
    flags = ["-f"] if mode == "foreground" else []
    for args in (
        [str(junk), str(mnt)],
        [str(tmp_path / "missing.img"), str(mnt)],
        [str(junk), str(tmp_path / "no-such-dir")],
        ["--arena", "1000", str(junk), str(mnt)],
        ["--threads", "0", str(junk), str(mnt)],
    ):
        r = nommufs("mount", *flags, *args, timeout=30)
        err = r.stderr.decode().strip()
        assert r.returncode != 0, args
        assert len(err.splitlines()) == 1, err
        assert not os.path.ismount(mnt)
