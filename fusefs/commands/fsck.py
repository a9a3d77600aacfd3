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

Work follows the image, not what it claims (a hostile image may claim
terabytes).  Holes the index declares are not read.  Extents that share a
source (:class:`~fusefs.vfs.DataExtent`: for EROFS the same pcluster, its
length, algorithm and placement, as dedupe writes them; for cramfs the same
stored block) are decoded by the same deterministic decoder to the same
bytes: each source is read once, to the longest length any extent of a
file wants of it, and every other extent it covers (the same length, or a
shorter prefix of a partial reference) is checked by that identity and not
read again.  What remains is bounded: distinct pclusters of a sound image
lie apart, and no codec decodes more than :data:`MAX_RATIO` bytes per
stored byte, so fsck reads at most ``MAX_RATIO`` times the image's size.
An image that makes it read more (pclusters that overlap, or the same one
wanted at ever longer lengths) has that reported as a problem and the rest
of its data is not read; every inode is still walked.
"""

from __future__ import annotations

import argparse
import stat
import sys
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Final

from fusefs.commands._common import add_image_arguments, open_from_args, read_ranges
from fusefs.errors import FsError
from fusefs.names import escape, one_line, show_path
from fusefs.vfs import DataExtent, Filesystem, Ino, WalkItem, ranges_of, walk

NAME = "fsck"
HELP = "check an image: read every inode, all data, links and xattrs"

# The most bytes any codec nommufs reads decodes from one stored byte: zstd's
# RLE block (4 bytes for 128 KiB); lzma reaches about 7000, deflate 1032,
# lz4 255, a cramfs block 4096 per 4-byte pointer.
MAX_RATIO: Final = 32768


@dataclass(slots=True)
class FsckReport:
    """What :func:`check` found."""

    inodes: int = 0
    files: int = 0
    directories: int = 0
    bytes_read: int = 0
    bytes_shared: int = 0  # checked as extents with a source already read
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


class _DataBudget(Exception):
    """Reading a file's data would take fsck past its limit (the bytes it wants)."""


class _Sources:
    """What fsck has read without error, by :attr:`DataExtent.source`: the
    longest length of each (every shorter prefix reads the same), and each
    exact length (a source that must decode to exactly that)."""

    def __init__(self, limit: int) -> None:
        self.longest: dict[Hashable, int] = {}
        self.exact: set[tuple[Hashable, int]] = set()
        self.limit = limit
        self.over = False  # the limit was reached: no more data is read

    def known(self, e: DataExtent) -> bool:
        if e.prefix:
            return self.longest.get(e.source, -1) >= e.length
        return (e.source, e.length) in self.exact

    def plan(self, extents: list[DataExtent]) -> list[DataExtent]:
        """The extents of one file to read: for each source not known, the
        first that wants it longest (and each exact length); the others are
        the same bytes again."""
        longest: dict[Hashable, DataExtent] = {}
        exact: dict[tuple[Hashable, int], DataExtent] = {}
        chosen: list[DataExtent] = []
        for e in extents:
            if e.source is None:
                chosen.append(e)
            elif self.known(e):
                continue
            elif not e.prefix:
                exact.setdefault((e.source, e.length), e)
            elif e.source not in longest or longest[e.source].length < e.length:
                longest[e.source] = e
        # an exact read of a source reads every prefix up to its length too
        covers: dict[Hashable, int] = {}
        for src, n in exact:
            covers[src] = max(covers.get(src, -1), n)
        picked = {id(e) for e in exact.values()}
        picked |= {id(e) for src, e in longest.items() if covers.get(src, -1) < e.length}
        return [e for e in extents if e.source is None or id(e) in picked]

    def learn(self, read: list[DataExtent]) -> None:
        for e in read:
            if e.source is None:
                continue
            self.longest[e.source] = max(self.longest.get(e.source, -1), e.length)
            if not e.prefix:
                self.exact.add((e.source, e.length))


def _check_data(fs: Filesystem, ino: Ino, size: int, report: FsckReport, sources: _Sources) -> None:
    extents = list(fs.data_extents(ino))
    read = sources.plan(extents)
    want = sum(e.length for e in read)
    if report.bytes_read + want > sources.limit:
        raise _DataBudget(want)  # before any of it is read: the limit holds
    for _pos, data in read_ranges(fs, ino, ranges_of(read), size):
        report.bytes_read += len(data)
    report.bytes_shared += sum(e.length for e in extents) - want
    sources.learn(read)


def _check_item(fs: Filesystem, item: WalkItem, report: FsckReport, sources: _Sources) -> None:
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
        if not sources.over:
            _check_data(fs, item.ino, attr.size, report, sources)
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
    sources = _Sources(MAX_RATIO * fs.image.size)
    for item in walk(fs, on_error=on_error):
        report.inodes += item.ino not in seen
        if item.ino in seen and not item.attr.is_dir:
            continue  # a hard link: its inode was checked under its first name
        seen.add(item.ino)
        try:
            _check_item(fs, item, report, sources)
        except _DataBudget as e:
            sources.over = True
            report.problems.append(
                f"{show_path(item.path)}: its {e.args[0]} bytes of data would take fsck past"
                f" {sources.limit} bytes read, {MAX_RATIO} times this {fs.image.size}-byte"
                " image: its extents overlap or want a pcluster again and again; the data"
                " of this and later files is not read"
            )
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
    shared = report.bytes_shared
    print(
        one_line(
            f"{args.image}: {verdict}; {report.inodes} inodes, {report.directories} directories,"
            f" {report.files} files, {report.bytes_read} bytes of data read"
            + (f" ({shared} more are extents of the same sources)" if shared else "")
        )
    )
    return 0 if report.clean else 1
