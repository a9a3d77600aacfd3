"""``nommufs budget`` from the command line: the table, --json's schema,
--plot's PNG, exit codes, and bad input answered by one line."""

from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

import pytest

from tests.conftest import nommufs

RESULT_KEYS = {
    "mm",
    "decompress",
    "ok",
    "failure",
    "peak_frames",
    "bytes_decompressed",
    "bounce_bytes",
    "copy_bytes",
    "vmap_calls",
    "vmap_failures",
    "lost_writes",
    "evictions",
    "largest_alloc_order",
}


def _one_line_error(r: subprocess.CompletedProcess[bytes]) -> str:
    err = r.stderr.decode().strip()
    assert r.returncode == 1, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_table_names_the_failure(erofs16: Path) -> None:
    r = nommufs("budget", str(erofs16), "--arena", "1M", "--mm", "nommu-contig")
    assert r.returncode == 0, r.stderr  # a failing combination is data
    out = r.stdout.decode()
    rows = [line.split() for line in out.splitlines()[2:6]]
    assert [row[:3] for row in rows] == [
        ["nommu-contig", "vmap", "FAIL"],
        ["nommu-contig", "bounce", "ok"],
        ["nommu-contig", "contig-folio", "ok"],
        ["nommu-contig", "percpu-buffer", "ok"],
    ]
    assert "nommu-contig+vmap: at mount" in out  # the global buffer's vmap, as the kernel


def test_json_schema(erofs16: Path) -> None:
    r = nommufs(
        "budget",
        str(erofs16),
        "--arena",
        "1M",
        "--json",
        "--find-min",
        "--mm",
        "mmu",
        "--mm",
        "nommu-contig",
        "--decompress",
        "vmap",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["image"] == str(erofs16)
    assert doc["format"] == "erofs"
    assert doc["arena_bytes"] == 1 << 20
    assert doc["workload"] == "all"
    results = doc["results"]
    assert [(x["mm"], x["decompress"]) for x in results] == [
        ("mmu", "vmap"),
        ("nommu-contig", "vmap"),
    ]
    for x in results:
        assert RESULT_KEYS | {"min_arena_bytes", "fits_from_bytes", "fails_above_min"} <= set(x)
        assert isinstance(x["ok"], bool)
        assert (x["failure"] is None) == x["ok"]
        for key in RESULT_KEYS - {"mm", "decompress", "ok", "failure"}:
            assert isinstance(x[key], int), key
    mmu, contig = results
    assert mmu["ok"] and mmu["bounce_bytes"] == 0 and mmu["copy_bytes"] == 0
    assert 0 < mmu["min_arena_bytes"] <= 1 << 20 and mmu["min_arena_bytes"] % 4096 == 0
    assert mmu["fits_from_bytes"] >= mmu["min_arena_bytes"]
    assert all(f > mmu["min_arena_bytes"] for f in mmu["fails_above_min"])
    assert not contig["ok"] and "z_erofs_gbuf_growsize" in contig["failure"]
    assert contig["files_done"] == 0
    assert contig["min_arena_bytes"] is None


def test_json_without_find_min_has_no_min(cramfs_xip: Path) -> None:
    r = nommufs("budget", str(cramfs_xip), "--arena", "512K", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "cramfs"
    assert [x["mm"] for x in doc["results"]] == ["mmu", "nommu-contig", "nommu-bounce"]
    assert all(x["decompress"] is None for x in doc["results"])
    assert all("min_arena_bytes" not in x for x in doc["results"])


def test_plot_writes_a_png(erofs16: Path, tmp_path: Path) -> None:
    out = tmp_path / "occupancy.png"
    r = nommufs(
        "budget",
        str(erofs16),
        "--arena",
        "1M",
        "--mm",
        "nommu-bounce",
        "--decompress",
        "vmap",
        "--decompress",
        "percpu-buffer",
        "--plot",
        str(out),
    )
    assert r.returncode == 0, r.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 400 and height >= 200
    assert len(data) > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["occupancy.png"]  # no temp left


@pytest.mark.parametrize(("ext", "magic"), [("svg", b"<?xml"), ("pdf", b"%PDF-")])
def test_plot_format_follows_the_extension(
    ext: str, magic: bytes, erofs16: Path, tmp_path: Path
) -> None:
    out = tmp_path / f"occupancy.{ext.upper()}"
    args = ("budget", str(erofs16), "--mm", "mmu", "--decompress", "vmap", "--plot")
    r = nommufs(*args, str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes().startswith(magic)
    err = _one_line_error(nommufs(*args, str(tmp_path / "x.jpg")))
    assert err.endswith(f"--plot {tmp_path / 'x.jpg'}: unknown format 'jpg' (use .png, .svg, .pdf)")
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_single_combination_plot_reads_well(erofs16: Path, tmp_path: Path) -> None:
    """One combination that fails: x in bytes read, the right axis labelled,
    FAIL where it stopped, a figure of its own size (text kept as SVG text)."""
    out = tmp_path / "one.svg"
    r = nommufs("budget", str(erofs16), "--arena", "128K", "--mm", "nommu-bounce",
                "--decompress", "vmap", "--plot", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    svg = out.read_text()
    assert " FAIL " in r.stdout.decode()
    for text in ("bytes read", "decompress + bounce frames", "arena frames (4 KiB)", "FAIL "):
        assert f">{text}<" in svg, text  # the axis labels, and the marker where it failed
    width = float(svg.split('width="', 1)[1].split("pt", 1)[0])
    assert 600 <= width <= 700  # 9 inches at 72 pt, not a 4-panel row


def test_fail_if_none_fits(erofs16: Path) -> None:
    args = ("budget", str(erofs16), "--arena", "1M", "--mm", "nommu-contig", "--decompress", "vmap")
    assert nommufs(*args).returncode == 0
    assert nommufs(*args, "--fail-if-none-fits").returncode == 3


def test_workload_list(erofs16: Path, tmp_path: Path) -> None:
    lst = tmp_path / "files.txt"
    lst.write_text("# boot path\n/big03.txt\n\nsub/random.bin\nlink\n")
    r = nommufs(
        "budget",
        str(erofs16),
        "--workload",
        f"list:{lst}",
        "--json",
        "--mm",
        "mmu",
        "--decompress",
        "vmap",
    )
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["workload"] == f"list:{lst}"
    assert doc["workload_files"] == 3
    (res,) = doc["results"]
    assert res["ok"] and res["files_done"] == 3
    assert res["bytes_read"] == 115_000 + 20_000 + 13


def test_bad_input(erofs16: Path, cramfs_xip: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 8192)
    assert "not an EROFS or cramfs image" in _one_line_error(nommufs("budget", str(junk)))
    assert "No such file" in _one_line_error(nommufs("budget", str(tmp_path / "absent")))
    missing = tmp_path / "no-list.txt"
    err = _one_line_error(nommufs("budget", str(erofs16), "--workload", f"list:{missing}"))
    assert "cannot read" in err and str(missing) in err
    lst = tmp_path / "list.txt"
    lst.write_text("big01.txt\nno/such/file\n")
    err = _one_line_error(nommufs("budget", str(erofs16), "--workload", f"list:{lst}"))
    assert "line 2" in err and "no/such/file" in err
    lst.write_text("sub\n")
    assert "not a regular file" in _one_line_error(
        nommufs("budget", str(erofs16), "--workload", f"list:{lst}")
    )
    assert "--workload" in _one_line_error(nommufs("budget", str(erofs16), "--workload", "some"))
    assert "exec" in _one_line_error(nommufs("budget", str(erofs16), "--workload", "exec"))
    assert "cramfs" in _one_line_error(nommufs("budget", str(cramfs_xip), "--decompress", "vmap"))
    r = nommufs("budget", str(erofs16), "--arena", "1000")
    assert r.returncode == 1 and "multiple of 4096" in r.stderr.decode()
    r = nommufs(
        "budget",
        str(erofs16),
        "--plot",
        str(tmp_path / "no-dir" / "x.png"),
        "--mm",
        "mmu",
        "--decompress",
        "vmap",
    )
    _one_line_error(r)
    assert not (tmp_path / "no-dir").exists()


def test_corrupt_image(erofs16: Path, tmp_path: Path) -> None:
    """A truncated image and one with garbage over compressed data: one line
    naming the place (the file being read, the extent), exit 1."""
    data = erofs16.read_bytes()
    short = tmp_path / "short.erofs"
    short.write_bytes(data[: len(data) // 2])
    err = _one_line_error(nommufs("budget", str(short), "--mm", "mmu", "--decompress", "vmap"))
    assert "outside" in err
    bad = bytearray(data)
    mid = len(bad) // 2
    bad[mid : mid + (64 << 10)] = b"\xaa" * (64 << 10)
    garbled = tmp_path / "garbled.erofs"
    garbled.write_bytes(bad)
    err = _one_line_error(nommufs("budget", str(garbled), "--mm", "mmu", "--decompress", "vmap"))
    assert err.startswith("nommufs budget: /") and "extent" in err
