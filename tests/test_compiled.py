"""The compiled hot modules are used exactly while they match their sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmshim import _compiled

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import fusefs.erofs.zdata as z, mmshim._arena as a, mmshim._compiled as c;"
    "print(c.active(), z.__file__, a.__file__)"
)


def probe(**env: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**os.environ, **env}, capture_output=True,
        text=True, check=True, timeout=60,
    )  # fmt: skip
    return out.stdout.split()


def test_scripts_test_runs_the_compiled_read_path() -> None:
    """scripts/setup compiles the hot modules; when this fails, `scripts/compile`
    says why (a stale build: the sources changed since, run it again)."""
    active, zdata, arena = probe()
    assert active == "True", f"compiled modules not in use: run scripts/compile ({zdata})"
    where = str(_compiled.compiled_dir())
    assert zdata.startswith(where) and arena.startswith(where)


def test_interpreted_on_request() -> None:
    active, zdata, arena = probe(**{_compiled.DISABLE_ENV: "1"})
    assert active == "False" and zdata.endswith("zdata.py") and arena.endswith("_arena.py")


def test_a_stale_or_foreign_build_is_not_used(tmp_path: Path) -> None:
    where = _compiled.compiled_dir()
    stamp = json.loads((where / _compiled.STAMP).read_text())
    copy = tmp_path / "compiled"
    shutil.copytree(where, copy)
    assert _compiled._usable(copy) is not None

    def with_stamp(change: dict[str, object]) -> object:
        (copy / _compiled.STAMP).write_text(json.dumps({**stamp, **change}))
        return _compiled._usable(copy)

    modules = stamp["modules"]
    stale = {**modules, "fusefs.memory": {**modules["fusefs.memory"], "sha256": "0" * 64}}
    assert with_stamp({"modules": stale}) is None  # one changed source: none of them
    assert with_stamp({"ext_suffix": ".cpython-312-x86_64-linux-gnu.so"}) is None
    missing = {**modules, "mmshim._vmap": {**modules["mmshim._vmap"], "binary": "gone.so"}}
    assert with_stamp({"modules": missing}) is None
    (copy / _compiled.STAMP).write_text("{not json")
    assert _compiled._usable(copy) is None


def test_the_writer_builds_the_same_bytes_compiled_and_interpreted(
    small_tree: Path, tmp_path: Path
) -> None:
    """mypyc may make a value print differently (an IntEnum field of a
    compiled dataclass holds a plain int): nothing an image holds may
    depend on it (a -T build's UUID once did)."""
    assert _compiled.active(), "compiled modules not in use: run scripts/compile"
    for options in (
        ["-z", "lz4hc,12:lzma", "-E", "fragments,dedupe"],
        ["-z", "zstd", "-E", "48bit"],
    ):
        images: list[bytes] = []
        for env in ({}, {_compiled.DISABLE_ENV: "1"}):
            out = tmp_path / f"{len(images)}.img"
            subprocess.run(
                [sys.executable, "-m", "mkimage", "erofs", "-q", "-T", "1700000000", *options,
                 str(out), str(small_tree)],
                env={**os.environ, **env}, check=True, timeout=120,
            )  # fmt: skip
            images.append(out.read_bytes())
        assert images[0] == images[1], options
