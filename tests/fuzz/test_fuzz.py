"""The fuzz targets: a short smoke run of each through scripts/fuzz (real
libFuzzer, real instrumentation), and every committed reproducer replayed
through the same invariants in-process."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from tests.fuzz.harness import check_image, fix_checksums

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "tests" / "corpus"
SMOKE_SECONDS = 15

needs_atheris = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris is not installed (fuzz extra)"
)


@needs_atheris
@pytest.mark.slow
@pytest.mark.parametrize("target", ["erofs", "cramfs", "mkimage"])
def test_smoke(target: str, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(REPO / "scripts" / "fuzz"), target, "--seconds", str(SMOKE_SECONDS),
         "--work", str(tmp_path)],
        capture_output=True, text=True, timeout=240, cwd=REPO, check=False,
    )  # fmt: skip
    log = proc.stderr[-4000:]
    assert proc.returncode == 0, log
    assert not list((tmp_path / target).glob("crash-*")), log
    runs = re.search(r"stat::number_of_executed_units: (\d+)", proc.stderr)
    cov = re.findall(r" cov: (\d+) ", proc.stderr)
    assert runs and int(runs.group(1)) > 10, log
    assert cov and int(cov[-1]) > 100, log  # instrumented: edges of the reader were seen


@pytest.mark.parametrize(
    "image",
    sorted(p for p in CORPUS.rglob("*.img")),
    ids=lambda p: str(p.relative_to(CORPUS)),
)
def test_reproducers_keep_the_invariants(image: Path, tmp_path: Path) -> None:
    """Only FsError, nothing held after close, time bounded by the image."""
    path = tmp_path / "input.img"
    path.write_bytes(fix_checksums(image.read_bytes()))
    check_image(path)
