"""SIGTERM (what CI timeouts send), SIGHUP and SIGINT end mkimage and extract
as cleanly as an error does: the temporary beside DIR is removed, the
one-line message says which, and the exit status is 128 + the signal.
mkimage's image has no name until it is complete (O_TMPFILE), so even
SIGKILL leaves nothing."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import mkfs_erofs

DEADLINE = 60.0


@pytest.fixture(scope="module")
def big_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 MB in 16 files of compressible text: slow enough to interrupt."""
    root = tmp_path_factory.mktemp("sig") / "tree"
    root.mkdir()
    rnd = random.Random(12)
    words = [bytes(rnd.choices(b"abcdefghijklmnop", k=rnd.randint(2, 9))) for _ in range(4000)]
    for i in range(16):
        chunk = b" ".join(rnd.choices(words, k=60_000))
        (root / f"f{i:02}.txt").write_bytes((chunk * (2 << 20 // len(chunk) + 1))[: 2 << 20])
    return root


@pytest.fixture(scope="module")
def big_image(big_tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mkfs_erofs(tmp_path_factory.mktemp("sigimg") / "big.erofs", big_tree, "-zlz4")


def _interrupt(cmd: list[str], watch: Path, pattern: str, signum: int) -> tuple[int, str]:
    """Start ``cmd``; as soon as a name matching ``pattern`` appears in
    ``watch``, send ``signum``; return the exit status and stderr."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusefs", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while not any(re.fullmatch(pattern, n) for n in os.listdir(watch)):
            assert proc.poll() is None, f"finished before the signal: {proc.stderr!r}"
            assert time.monotonic() < deadline, "no temporary appeared"
            time.sleep(0.005)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err.decode(errors="replace").strip()


def _building_into(pid: int, out: Path) -> bool:
    """Whether process ``pid`` has an open file in ``out`` (an unnamed one,
    O_TMPFILE, reads as ``OUT/#INO (deleted)``, or a named temporary)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(f"{out}/"):
                return True
        except FileNotFoundError:
            continue
    return False


def _mkimage_until_building(out: Path, big_tree: Path) -> subprocess.Popen[bytes]:
    cmd = ["mkimage", "erofs", "-z", "lz4hc,12", "-j", "1", str(out / "root.img"), str(big_tree)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "fusefs", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + DEADLINE
    while not _building_into(proc.pid, out):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mkimage never wrote into {out}: {proc.communicate()[1]!r}")
        time.sleep(0.005)
    time.sleep(0.2)  # mid-build: some of the image is written
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL])
def test_mkimage_killed_mid_build_leaves_nothing(
    signum: signal.Signals, big_tree: Path, tmp_path: Path
) -> None:
    """The image is built in an unnamed file (O_TMPFILE) of OUT's directory,
    linked in only when complete: whatever ends mkimage, SIGKILL included,
    nothing is left beside OUT, and no run has anything to clean up."""
    out = tmp_path / "out"
    out.mkdir()
    proc = _mkimage_until_building(out, big_tree)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=DEADLINE)
    text = err.decode(errors="replace").strip()
    assert proc.returncode == (-signum if signum == signal.SIGKILL else 128 + signum), text
    if signum != signal.SIGKILL:
        assert text == f"nommufs mkimage: interrupted by {signum.name}", text
    assert os.listdir(out) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_extract_removes_its_partial_tree(
    signum: signal.Signals, big_image: Path, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    code, err = _interrupt(
        ["extract", str(big_image), str(work / "out")], work, r"\.out\.nommufs-.*", signum
    )
    assert code == 128 + signum, err
    assert re.fullmatch(
        rf"nommufs extract: interrupted by {signum.name}; removed "
        rf"{re.escape(str(work))}/\.out\.nommufs-\S+",
        err,
    ), err
    assert os.listdir(work) == []
