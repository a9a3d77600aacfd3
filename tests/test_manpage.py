"""docs/nommufs.1 is generated from the command lines (scripts/manpage): it is
up to date, names every command and option, and renders without warnings."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from fusefs.cli import COMMANDS
from mkimage.cli import FORMATS

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "nommufs.1"


@pytest.fixture(scope="module")
def generated() -> str:
    r = subprocess.run([str(ROOT / "scripts" / "manpage")], capture_output=True, text=True,
                       check=True, timeout=60)  # fmt: skip
    return r.stdout


def test_the_committed_page_is_current(generated: str) -> None:
    assert PAGE.read_text() == generated, "stale: run scripts/manpage > docs/nommufs.1"


def test_every_command_and_option_is_there(generated: str) -> None:
    for cmd in COMMANDS:
        progs = [f"mkimage {f.NAME}" for f in FORMATS] if cmd.NAME == "mkimage" else [cmd.NAME]
        for prog in progs:
            assert f'.SS "nommufs {prog}"' in generated, prog
    for flag in ("\\-\\-log FILE", "\\-\\-force", "\\-z", "\\-\\-tar", "\\-S", "\\-d N"):
        assert flag in generated, flag


def test_it_renders_without_warnings() -> None:
    if shutil.which("groff") is None:
        pytest.skip("no groff (Debian package groff-base)")
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z", str(PAGE)], capture_output=True,
                       text=True, check=False, timeout=60)  # fmt: skip
    assert r.returncode == 0 and not r.stderr, r.stderr
