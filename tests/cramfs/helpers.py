"""Helpers shared by the cramfs tests: source trees, builders, the comparison rule."""

from __future__ import annotations

import argparse
import os
import shutil
import stat
import subprocess
from pathlib import Path

from fusefs.cmdline import parse
from fusefs.vfs import MemoryConfig, open_image
from mkimage.cli import parser as mkimage_parser
from mkimage.cramfs import cli
from tests.trees import DEFAULT_FIELDS, Entry, build_rich_tree, diff_trees, snapshot, snapshot_fs

IS_ROOT = os.geteuid() == 0
ELF = Path("/usr/bin/true")  # a real ELF64 executable: 35664 bytes here, not a page multiple

# What cramfs keeps of a tree.  Lost by the format (reference section 3):
# mtimes (always 0), hard-link identity (nlink is 1, links become copies),
# xattrs; uid is cut to 16 bits and gid to 8 bits (compared after the same cut).
CRAMFS_FIELDS = tuple(f for f in DEFAULT_FIELDS if f not in ("mtime_ns", "nlink", "xattrs"))

LONG_NAMES = ("x" * 255, "é" * 127)  # 255 and 254 bytes: beyond cramfs's 252


def build_tree(root: Path, *, long_names: bool = True) -> Path:
    """A rich tree for cramfs: every type, odd sizes, holes, links, a crowd of
    200 names, modes and owners, an ELF executable, a page-multiple ELF-named
    file, a script; device nodes with 8-bit numbers when root.  Without
    ``long_names`` the two names over 252 bytes are removed (util-linux
    mkfs.cramfs wraps 253-255 byte names into an image its own fsck rejects)."""
    build_rich_tree(root, many=200, xattrs=False, devices=False, big=False)
    if not long_names:
        for n in LONG_NAMES:
            os.unlink(root / "names" / n)
    bins = root / "bin"
    bins.mkdir()
    shutil.copyfile(ELF, bins / "true")
    os.chmod(bins / "true", 0o755)
    page_multiple = ELF.read_bytes()[: 8 * 4096]
    (bins / "pagemult").write_bytes(page_multiple)
    os.chmod(bins / "pagemult", 0o755)
    (bins / "script.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(bins / "script.sh", 0o755)
    if IS_ROOT:
        os.mknod(root / "special" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.mknod(root / "special" / "sda", 0o660 | stat.S_IFBLK, os.makedev(8, 0))
    return root


def expected(src: Path) -> dict[str, Entry]:
    """The source as cramfs stores it: uid/gid cut, names over 252 bytes cut."""
    snap = snapshot(src, xattrs=False)
    out: dict[str, Entry] = {}
    for path, e in snap.items():
        e.uid &= 0xFFFF
        e.gid &= 0xFF
        parts = [_cut(p) for p in path.split("/")]
        e.path = "/".join(parts)
        out[e.path] = e
    return out


def _cut(name: str) -> str:
    raw = os.fsencode(name)
    if len(raw) <= 252:
        return name
    cut = raw[:252]
    while True:
        try:
            return os.fsdecode(cut.decode().encode())
        except UnicodeDecodeError:
            cut = cut[:-1]


def mkimage(src: Path, out: Path, *options: str) -> Path:
    """``nommufs mkimage cramfs [options] SRC OUT``, in process (errors raise)."""
    assert cli.run(cramfs_args(*options, str(src), str(out))) == 0
    return out


def cramfs_args(*argv: str) -> argparse.Namespace:
    """``mkimage cramfs ARGV`` parsed by the real command line (UsageError on a bad one)."""
    return parse(mkimage_parser(), ["cramfs", *argv])


def mkfs_cramfs(src: Path, out: Path, *options: str) -> Path:
    subprocess.run(["mkfs.cramfs", *options, str(src), str(out)], check=True, capture_output=True)
    return out


def read_back(image: Path, memory: MemoryConfig | None = None) -> dict[str, Entry]:
    with open_image(image, memory) as fs:
        return snapshot_fs(fs, xattrs=False)


def compare(src: Path, image: Path) -> list[str]:
    return diff_trees(expected(src), read_back(image), fields=CRAMFS_FIELDS)


def fsck_cramfs(image: Path, extract_to: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = ["fsck.cramfs", "-b", "4096"]
    if extract_to is not None:
        args.append(f"--extract={extract_to}")
    return subprocess.run([*args, str(image)], capture_output=True, text=True, check=False)
