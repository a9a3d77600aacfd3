"""Output into a closed pipe ends quietly: exit 141 (128 + SIGPIPE), nothing
on stderr, for every command that prints (issue 13, item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile import corpus

HOLE = str(corpus.CORPUS / "valid-erofs-chunk-hole-2e43.img")  # clean: stderr stays empty
COMMANDS = [
    ["inspect", HOLE], ["inspect", "--json", HOLE], ["inspect", "-S", HOLE],
    ["inspect", "--inode", "hole", HOLE], ["fsck", HOLE], ["ls", "-l", "-R", HOLE],
    ["cat", HOLE, "hole"],  # 8 TiB of zeros into a pipe: stops at the first write
]  # fmt: skip


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_a_pipe_closed_before_the_first_write(argv: list[str]) -> None:
    r, w = os.pipe()
    os.close(r)  # every write gets EPIPE, the flush at exit too
    try:
        proc = subprocess.run([sys.executable, "-m", "fusefs", *argv], stdout=w,
                              stderr=subprocess.PIPE, timeout=60, check=False)  # fmt: skip
    finally:
        os.close(w)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr


def test_head_closing_a_long_cat(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "big").write_bytes(b"nommufs\n" * 2_000_000)
    img = tmp_path / "big.img"
    corpus.mkimage(img, src, "-z", "lz4")
    shell = f"{sys.executable} -m fusefs cat {img} big | head -c 5; echo ${{PIPESTATUS[0]}} >&2"
    r = subprocess.run(shell, shell=True, executable="/bin/bash", capture_output=True,
                       timeout=60, check=False)  # fmt: skip
    assert r.stdout == b"nommu"
    assert r.stderr == b"141\n", r.stderr
