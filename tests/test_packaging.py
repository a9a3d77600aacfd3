"""What the installed distribution declares: its licence text, one version,
runtime dependencies that runtime code uses, and matplotlib only for plots."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import fusefs
import nommufs

ROOT = Path(__file__).resolve().parents[1]


def test_licence_file_is_the_declared_licence() -> None:
    meta = importlib.metadata.metadata("nommufs")
    assert meta["License-Expression"] == "GPL-2.0-or-later"
    text = (ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 2, June 1991" in text
    assert "LICENSE" in (meta.get_all("License-File") or [])


def test_one_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert importlib.metadata.version("nommufs") == fusefs.__version__ == nommufs.__version__
    r = subprocess.run([sys.executable, "-m", "fusefs", "-V"], capture_output=True, text=True)
    assert r.stdout.strip() == f"nommufs {fusefs.__version__}"


def test_runtime_dependencies_are_used_at_runtime() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0] for d in project["dependencies"]}
    assert names == {"pyfuse3", "trio", "zstandard"}  # python-lz4 is a test oracle only
    assert any(d.startswith("matplotlib") for d in project["optional-dependencies"]["plot"])


def test_matplotlib_only_for_plots(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_bytes(b"data" * 5000)
    image = nommufs.build_image(tree, tmp_path / "t.erofs", z="lz4")
    code = (
        "import sys; from fusefs.cli import main; "
        f"rc = main(['budget', {str(image)!r}, '--mm', 'mmu', '--decompress', 'vmap']); "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; sys.exit(rc)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
