"""fsck reports each problem once, root cause first, on stderr, with a summary
line on stdout; inspect gives numbers as numbers in JSON and a dump.erofs -S
like summary (-S)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import mkfs_erofs, nommufs
from tests.trees import build_small_tree

CORPUS = Path(__file__).parent / "corpus"


def _fsck(image: Path) -> tuple[int, list[str], list[str]]:
    r = nommufs("fsck", str(image))
    return r.returncode, r.stdout.decode().splitlines(), r.stderr.decode().splitlines()


def test_root_cause_first_and_once() -> None:
    code, out, err = _fsck(CORPUS / "erofs-truncated.img")
    assert code == 1
    assert err[0].startswith("superblock: 2 blocks of 4096 claimed"), err  # the cause
    assert err[1].startswith("/a: erofs pcluster nid 41 "), err  # what it broke, by path
    assert len(err) == 2, err  # not again as "nid 41 (b'a'): ..."
    assert out == [f"{CORPUS / 'erofs-truncated.img'}: 2 problem(s); 6 inodes, 2 directories,"
                   " 3 files, 1201 bytes of data read"]  # fmt: skip


@pytest.mark.parametrize("name", ["erofs-bad-layout", "erofs-bad-mode", "erofs-inline-cross",
                                  "erofs-pcluster-oob", "erofs-size-huge"])  # fmt: skip
def test_a_problem_the_walk_names_is_not_repeated_by_nid(name: str) -> None:
    code, out, err = _fsck(CORPUS / f"{name}.img")
    assert code == 1 and len(err) == 1 and err[0].startswith("/"), err
    assert "1 problem(s)" in out[-1]


def test_clean_image_says_so_on_stdout_only(tmp_path: Path) -> None:
    image = mkfs_erofs(tmp_path / "ok.erofs", build_small_tree(tmp_path / "t"), "-zlz4")
    code, out, err = _fsck(image)
    assert (code, err) == (0, [])
    assert len(out) == 1 and ": clean;" in out[0]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("inspect")
    tree = build_small_tree(base / "tree")
    (tree / "big.txt").write_bytes(b"inspect me " * 30_000)
    return mkfs_erofs(base / "i.erofs", tree, "-zlz4hc", "-C16384")


def test_json_numbers_are_numbers(image: Path) -> None:
    doc = json.loads(nommufs("inspect", "--json", str(image)).stdout)
    assert isinstance(doc["checksum"], int)
    ino = json.loads(nommufs("inspect", "--json", "--inode", "file1.txt", str(image)).stdout)
    assert ino["mode"] == 0o100644
    text = nommufs("inspect", "--inode", "file1.txt", str(image)).stdout.decode()
    assert "mode: 0o100644" in text.splitlines()
    assert re.search(r"^checksum: 0x[0-9a-f]{8}$", nommufs("inspect", str(image)).stdout.decode(),
                     re.M)  # fmt: skip


def test_summary_agrees_with_dump_erofs(image: Path) -> None:
    doc = json.loads(nommufs("inspect", "-S", "--json", str(image)).stdout)
    if shutil.which("dump.erofs"):
        dump = subprocess.run(["dump.erofs", "-S", str(image)], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip

        def field(name: str) -> int:
            m = re.search(rf"Filesystem {name}:\s+(\d+)", dump)
            assert m, dump
            return int(m.group(1))

        assert doc["inodes"] == field("total file count")
        assert doc["by_type"]["regular"] == field("regular file count")
        assert doc["by_type"]["directory"] == field("directory count")
        assert doc["by_type"]["symlink"] == field("symlink file count")
        assert doc["files_original_bytes"] == field("total original file size")
    assert 0 < doc["compress_rate"] < 0.5  # "inspect me " repeats: lz4hc squeezes it
    hist = doc["original_size_histogram"]
    assert sum(r["count"] for r in hist) == doc["by_type"]["regular"]
    assert [r["from_kib"] for r in hist[:3]] == [0, 1, 2] and hist[-1]["to_kib"] is None
    text = nommufs("inspect", "-S", str(image)).stdout.decode()
    assert "compress rate" in text and "original file size distribution:" in text
