"""The mount lifecycle CI hits: a daemon killed under its mount (stale), umount
of mounts that are not ours, lazy unmount, mount errors that name the wrong
path, -o fsname=/subtype= that win only sometimes, and --log.

Each bad input: its one-line message, its exit status, and nothing left
behind (no mount, no file).  Mounts here are the daemon mode a user runs
(``nommufs mount`` returning once ready); every one is unmounted at teardown,
stale ones included.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs import mounttab
from tests.conftest import Mounter, missing_fuse, mkfs_erofs, nommufs, require
from tests.fuse.test_corruption import first_extent, patched
from tests.trees import build_small_tree

pytestmark = pytest.mark.fuse
DEADLINE = 15.0


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_small_tree(tmp_path_factory.mktemp("src") / "tree")
    (root / "victim.txt").write_bytes(b"compressible victim text " * 4000)
    return root


@pytest.fixture(scope="module")
def image(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mkfs_erofs(tmp_path_factory.mktemp("img") / "small.erofs", src, "-zlz4", "-C4096")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Path]]:
    """Mount points to clear at teardown, whatever state they are in."""
    require(missing_fuse())
    points: list[Path] = []
    yield points
    for p in points:
        for _ in range(3):
            try:
                if mounttab.find_mount(p) is None:
                    break
                mounttab.unmount(p, force=True, lazy=True)
            except Exception:
                time.sleep(0.2)


def _mount(image: Path, mnt: Path, mounts: list[Path], *args: str) -> dict[str, object]:
    """``nommufs mount --stats`` in daemon mode; returns the first stats (with the pid)."""
    mnt.mkdir(exist_ok=True)
    mounts.append(mnt)
    stats = mnt.parent / f"{mnt.name}.stats.json"
    r = nommufs("mount", "--stats", str(stats), *args, str(image), str(mnt), timeout=30)
    assert r.returncode == 0, r.stderr
    data: dict[str, object] = json.loads(stats.read_text())
    assert data["mounted"] is True and data["serial"] == 1
    return data


def _one_line(r: subprocess.CompletedProcess[bytes], code: int = 1) -> str:
    err = r.stderr.decode().strip()
    assert r.returncode == code, (r.returncode, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return
        except OSError:
            return
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), f"daemon {pid} still running"


def _kill(pid: int, mnt: Path) -> None:
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    with pytest.raises(OSError) as info:
        os.listdir(mnt)
    assert info.value.errno == errno.ENOTCONN  # stale: what CI teardown meets
    assert mounttab.is_stale(mnt)


def test_umount_clears_a_stale_mount(image: Path, tmp_path: Path, mounts: list[Path]) -> None:
    mnt = tmp_path / "mnt"
    pid = int(str(_mount(image, mnt, mounts)["pid"]))
    _kill(pid, mnt)
    r = nommufs("umount", str(mnt))
    assert r.returncode == 0, r.stderr
    assert mounttab.find_mount(mnt) is None
    assert os.listdir(mnt) == []
    err = _one_line(nommufs("umount", str(mnt)))
    assert err == f"nommufs umount: {mnt}: not a mount point", err


def test_mount_over_a_stale_mount(image: Path, tmp_path: Path, mounts: list[Path]) -> None:
    mnt = tmp_path / "mnt"
    pid = int(str(_mount(image, mnt, mounts)["pid"]))
    _kill(pid, mnt)
    stats = tmp_path / "again.json"
    r = nommufs("mount", "--stats", str(stats), str(image), str(mnt), timeout=30)
    assert r.returncode == 0, r.stderr
    assert f"{mnt}: removed a stale nommufs mount" in r.stderr.decode(), r.stderr
    assert (mnt / "sub" / "deeper" / "hello").read_bytes() == b"hello, world\n"
    assert nommufs("umount", str(mnt)).returncode == 0
    _wait_gone(int(json.loads(stats.read_text())["pid"]))


def test_umount_refuses_squashfuse_unless_forced(
    src: Path, tmp_path: Path, mounts: list[Path]
) -> None:
    for tool in ("mksquashfs", "squashfuse"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            pytest.skip(f"no {tool} (package squashfs-tools / squashfuse)")
    sqfs = tmp_path / "tree.sqfs"
    subprocess.run(["mksquashfs", str(src), str(sqfs), "-quiet", "-no-progress"], check=True,
                   capture_output=True)  # fmt: skip
    mnt = tmp_path / "sq"
    mnt.mkdir()
    mounts.append(mnt)
    subprocess.run(["squashfuse", str(sqfs), str(mnt)], check=True, timeout=30)
    err = _one_line(nommufs("umount", str(mnt)))
    assert err == (
        f"nommufs umount: {mnt}: not a nommufs mount (type fuse.squashfuse, source squashfuse);"
        " --force unmounts it anyway"
    ), err
    assert mounttab.find_mount(mnt) is not None
    assert nommufs("umount", "--force", str(mnt)).returncode == 0
    assert mounttab.find_mount(mnt) is None


def test_umount_refuses_the_kernels_erofs_unless_forced(
    image: Path, tmp_path: Path, mounts: list[Path]
) -> None:
    from tests.conftest import missing_kernel_erofs

    require(missing_kernel_erofs())
    mnt = tmp_path / "k"
    mnt.mkdir()
    mounts.append(mnt)
    r = subprocess.run(["mount", "-t", "erofs", "-o", "ro,loop", str(image), str(mnt)],
                       capture_output=True, text=True, check=False)  # fmt: skip
    if r.returncode:
        r = subprocess.run(["mount", "-t", "erofs", "-o", "ro", str(image), str(mnt)],
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    err = _one_line(nommufs("umount", str(mnt)))
    assert re.fullmatch(rf"nommufs umount: {mnt}: not a nommufs mount \(type erofs, source \S+\);"
                        r" --force unmounts it anyway", err), err  # fmt: skip
    assert mounttab.find_mount(mnt) is not None
    assert nommufs("umount", "--force", str(mnt)).returncode == 0
    assert mounttab.find_mount(mnt) is None


def test_lazy_umount_of_a_busy_mount(
    src: Path, image: Path, tmp_path: Path, mounts: list[Path]
) -> None:
    mnt = tmp_path / "mnt"
    pid = int(str(_mount(image, mnt, mounts)["pid"]))
    with open(mnt / "file5.txt", "rb") as busy:
        err = _one_line(nommufs("umount", str(mnt)))
        assert re.fullmatch(rf"nommufs umount: {mnt}: .*busy.* \(-z unmounts lazily\)", err), err
        assert mounttab.find_mount(mnt) is not None
        r = nommufs("umount", "-z", str(mnt))
        assert r.returncode == 0, r.stderr
        assert mounttab.find_mount(mnt) is None
        assert busy.read() == (src / "file5.txt").read_bytes()  # still open and served
    _wait_gone(pid)  # the daemon ends once its last user let go


@pytest.mark.parametrize("mode", ["daemon", "foreground"])
def test_mount_errors_name_the_right_path(
    mode: str, image: Path, tmp_path: Path, mounts: list[Path]
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounts.append(mnt)
    flags = ["-f"] if mode == "foreground" else []
    missing, nodir, afile = tmp_path / "missing.img", tmp_path / "no-such-dir", tmp_path / "f"
    afile.write_bytes(b"")
    cases = [
        ([str(missing), str(mnt)], f"{missing}: No such file or directory"),
        ([str(image), str(nodir)], f"{nodir}: mount point does not exist"),
        ([str(image), str(afile)], f"{afile}: mount point is not a directory"),
        (["--log", str(nodir / "log"), str(image), str(mnt)],
         f"--log {nodir / 'log'}: No such file or directory"),
        (["--stats", str(nodir / "s.json"), str(image), str(mnt)],
         f"--stats {nodir / 's.json'}: cannot write in {nodir}"),
    ]  # fmt: skip
    before = sorted(os.listdir(tmp_path))
    for args, want in cases:
        err = _one_line(nommufs("mount", *flags, *args, timeout=30))
        assert err == f"nommufs mount: {want}", err
        assert mounttab.find_mount(mnt) is None
        assert sorted(os.listdir(tmp_path)) == before


def test_user_fsname_and_subtype_always_win(
    image: Path, tmp_path: Path, mounts: list[Path]
) -> None:
    for i in range(4):  # each run hashes strings differently: a set's order would vary
        mnt = tmp_path / f"mnt{i}"
        _mount(image, mnt, mounts, "-o", "fsname=rootfs-under-test", "-o", "subtype=ci")
        entry = mounttab.find_mount(mnt)
        assert entry is not None
        assert (entry.source, entry.fstype) == ("rootfs-under-test", "fuse.ci"), entry
        # neither name says nommufs any more: umount needs --force (documented)
        assert "not a nommufs mount" in _one_line(nommufs("umount", str(mnt)))
        assert nommufs("umount", "--force", str(mnt)).returncode == 0
    mnt = tmp_path / "named"
    _mount(image, mnt, mounts, "-o", "fsname=only-the-name")
    entry = mounttab.find_mount(mnt)
    assert entry is not None and (entry.source, entry.fstype) == ("only-the-name", "fuse.erofs")
    assert nommufs("umount", str(mnt)).returncode == 0  # the subtype still says erofs


def test_log_file_names_corruption_with_path_and_nid(
    src: Path, image: Path, tmp_path: Path, mounts: list[Path]
) -> None:
    raw = image.read_bytes()
    bad = patched(image, tmp_path / "bad.erofs", first_extent(image, "/victim.txt"), b"\xff" * 4096)
    assert bad.read_bytes() != raw
    mnt, log = tmp_path / "mnt", tmp_path / "daemon.log"
    pid = int(str(_mount(bad, mnt, mounts, "--log", str(log))["pid"]))  # detached: no stderr
    with pytest.raises(OSError) as info:
        (mnt / "victim.txt").read_bytes()
    assert info.value.errno == errno.EUCLEAN
    assert (mnt / "file5.txt").read_bytes() == (src / "file5.txt").read_bytes()
    assert nommufs("umount", str(mnt)).returncode == 0
    _wait_gone(pid)
    lines = [ln for ln in log.read_text().splitlines() if "WARNING" in ln]
    assert lines, log.read_text()
    want = rf"nommufs\[{pid}\]: WARNING: corrupt image: /victim\.txt: .*nid \d+"
    assert re.search(want, lines[0]), lines
    assert len(lines) == len(set(lines))  # once per inode and message, not per page


def test_the_suites_own_teardown_clears_a_stale_mount(image: Path, mounter: Mounter) -> None:
    m = mounter.fuse(image)
    os.stat(m.path)  # the root's attributes are in the kernel's cache now
    m.proc.kill()
    m.proc.wait(timeout=DEADLINE)
    os.stat(m.path)  # ... so stat says nothing about the daemon
    assert mounttab.is_stale(m.path)  # statfs does
    m.unmount()  # what the mounter fixture's teardown runs
    assert mounttab.find_mount(m.path) is None
