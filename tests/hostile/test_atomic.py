"""fusefs.atomicfile: an unnamed file linked in whole, or a named temporary
where the filesystem refuses O_TMPFILE."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from fusefs import atomicfile


def test_unnamed_output_appears_whole_and_replaces(tmp_path: Path) -> None:
    out = tmp_path / "img"
    for content in (b"first", b"second, longer"):
        with atomicfile.atomic_output(out) as f:
            f.write(content)
            assert os.listdir(tmp_path) == ([] if content == b"first" else ["img"])
            assert os.readlink(f"/proc/self/fd/{f.fileno()}").endswith("(deleted)")
        assert out.read_bytes() == content and os.listdir(tmp_path) == ["img"]
    assert out.stat().st_mode & 0o777 == 0o666 & ~_umask()


def test_a_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomicfile.atomic_output(tmp_path / "img") as f:
        f.write(b"half")
        raise RuntimeError("stop")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("refusal", [errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL])
def test_o_tmpfile_refused_falls_back_to_a_named_temporary(
    refusal: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def refusing(path: str, flags: int, *args: int, **kw: int) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(refusal, os.strerror(refusal), path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", refusing)
    with atomicfile.atomic_output(tmp_path / "img") as f:
        f.write(b"data")
        (name,) = os.listdir(tmp_path)
        assert name.startswith(".img.") and name.endswith(".tmp")
    assert os.listdir(tmp_path) == ["img"] and (tmp_path / "img").read_bytes() == b"data"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
