"""``nommufs fsck``: read everything in an image and report every problem.

Walks every inode through the format-neutral :class:`~fusefs.vfs.Filesystem`
interface — attributes, directory entries (each looked up again by name),
all file data, symlink targets, xattrs — then asks the format for its own
structural checks (:meth:`~fusefs.vfs.Filesystem.fsck_extra`).

Each problem is reported once, root cause first, as fsck.erofs does: the
format's checks see the image as a whole (a superblock that claims more
blocks than the image has explains every extent "outside the image"), so
theirs come first, except those that say again what the walk already said
about a path (the format names the nid, the walk the path: the path stays).
Problems go to stderr, one line each; the summary line to stdout.
"""

from __future__ import annotations

import argparse
import stat
import sys
from dataclasses import dataclass, field

from fusefs.commands._common import add_image_arguments, open_from_args, read_data
from fusefs.errors import FsError
from fusefs.names import escape, one_line, show_path
from fusefs.vfs import Filesystem, WalkItem, walk

NAME = "fsck"
HELP = "check an image: read every inode, all data, links and xattrs"


@dataclass(slots=True)
class FsckReport:
    """What :func:`check` found."""

    inodes: int = 0
    files: int = 0
    directories: int = 0
    bytes_read: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def _check_item(fs: Filesystem, item: WalkItem, report: FsckReport) -> None:
    attr = item.attr
    where = show_path(item.path)
    if item.path and stat.S_IFMT(attr.mode) != item.entry_type:
        report.problems.append(
            f"{where}: directory entry says type {item.entry_type:#o},"
            f" inode says {stat.S_IFMT(attr.mode):#o}"
        )
    if item.path:
        name = item.path.rsplit(b"/", 1)[-1]
        found = fs.lookup(item.parent, name)
        if found != item.ino:
            report.problems.append(
                f"{where}: lookup by name finds ino {found}, readdir says {item.ino}"
            )
    if attr.is_reg:
        report.files += 1
        # holes the index declares cost nothing: the time follows the image
        for _pos, data in read_data(fs, item.ino, attr.size):
            report.bytes_read += len(data)
    elif attr.is_lnk:
        target = fs.readlink(item.ino)
        if len(target) != attr.size:
            report.problems.append(
                f"{where}: symlink target is {len(target)} bytes, size is {attr.size}"
            )
    elif attr.is_dir:
        report.directories += 1
    for name in fs.listxattr(item.ino):
        try:
            fs.getxattr(item.ino, name)
        except FsError as e:
            report.problems.append(f"{where}: xattr {escape(name)}: {e}")


def check(fs: Filesystem) -> FsckReport:
    """Read everything in ``fs``; every problem found is one line of the
    report, once, in the order the module docstring gives."""
    report = FsckReport()
    errors: list[str] = []  # what the walk's errors said, without their paths

    def on_error(path: bytes, err: FsError) -> None:
        report.problems.append(f"{show_path(path)}: {err}")
        errors.append(str(err))

    seen: set[int] = set()
    for item in walk(fs, on_error=on_error):
        report.inodes += item.ino not in seen
        if item.ino in seen and not item.attr.is_dir:
            continue  # a hard link: its inode was checked under its first name
        seen.add(item.ino)
        try:
            _check_item(fs, item, report)
        except FsError as e:
            report.problems.append(f"{show_path(item.path)}: {e}")
            errors.append(str(e))
    try:
        extra = list(fs.fsck_extra())
    except FsError as e:
        extra = [f"(format checks): {e}"]
    # a format check that only repeats a walk error (under a nid) goes
    extra = [line for line in extra if not any(line.endswith(f": {e}") for e in errors)]
    report.problems = list(dict.fromkeys(extra + report.problems))
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_arguments(parser)


def run(args: argparse.Namespace) -> int:
    with open_from_args(args) as fs:
        report = check(fs)
    for line in report.problems:
        print(one_line(line), file=sys.stderr)
    verdict = "clean" if report.clean else f"{len(report.problems)} problem(s)"
    print(one_line(
        f"{args.image}: {verdict}; {report.inodes} inodes, {report.directories} directories,"
        f" {report.files} files, {report.bytes_read} bytes of data read"
    ))
    return 0 if report.clean else 1
