"""``nommufs umount``: unmount a nommufs FUSE mount (fusermount3 -u)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess

from fusefs.errors import FsError, InvalidArgumentError

NAME = "umount"
HELP = "unmount a FUSE mount made by `nommufs mount`"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-z", dest="lazy", action="store_true", help="lazy unmount")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")


def run(args: argparse.Namespace) -> int:
    if not os.path.ismount(args.mountpoint):
        raise InvalidArgumentError(f"{args.mountpoint}: not a mount point")
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise FsError("fusermount3 not found (install fuse3)")
    cmd = [tool, "-uz" if args.lazy else "-u", args.mountpoint]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()
        raise FsError(f"{args.mountpoint}: {msg[-1] if msg else 'fusermount3 failed'}")
    return 0
