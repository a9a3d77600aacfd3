"""The kernel's mount table, and unmounting what nommufs mounted.

Why not ``os.path.ismount``: it stat()s the mount point, and the mount point
of a FUSE daemon that died (OOM, SIGKILL) answers with ENOTCONN ("Transport
endpoint is not connected") whatever the kernel has not cached, so a *stale*
mount looks like no mount at all, and a directory like no directory.
Everything here reads ``/proc/self/mountinfo`` instead, which lists stale
mounts like live ones; whether one is stale is asked with statfs (never
cached), and only of a FUSE mount the table lists.

Which mounts are nommufs's own: FUSE mounts (type ``fuse.SUBTYPE``) whose
source is ``nommufs`` (the default ``fsname``) or whose subtype is one of the
formats nommufs serves (``erofs``, ``cramfs``).  A mount made with both
``-o fsname=`` and ``-o subtype=`` changed is not recognised (``--force``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from typing import Final

from fusefs.errors import FsError, InvalidArgumentError, NotADirectoryFsError, NotFoundError

log = logging.getLogger("nommufs")

FSNAME: Final = "nommufs"
SUBTYPES: Final = frozenset({"erofs", "cramfs"})
MOUNTINFO: Final = "/proc/self/mountinfo"
UNMOUNT_TIMEOUT: Final = 30.0
_OCTAL: Final = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo (blanks and backslashes unescaped)."""

    point: str
    fstype: str
    source: str
    device: str  # "major:minor", as /sys/class/bdi/ names it
    options: str  # per-mount options (ro, nosuid, ...)

    @property
    def is_fuse(self) -> bool:
        return self.fstype == "fuse" or self.fstype.startswith("fuse.")

    @property
    def is_nommufs(self) -> bool:
        subtype = self.fstype.partition(".")[2]
        return self.is_fuse and (self.source == FSNAME or subtype in SUBTYPES)

    def describe(self) -> str:
        """``type fuse.squashfuse, source squashfuse``."""
        return f"type {self.fstype}, source {self.source}"


def _unescape(field: str) -> str:
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


def missing_fuse() -> str | None:
    """Why a FUSE mount cannot work on this machine for this user, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if shutil.which("fusermount3") is None:
        return "no fusermount3 (Debian package fuse3)"
    if os.geteuid() != 0 and not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not accessible to this user"
    return None


def read_mounts(path: str = MOUNTINFO) -> list[MountEntry]:
    """Every mount this process sees, in mount order (the last one at a
    point is the topmost)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        lines = f.read().splitlines()
    out = []
    for line in lines:
        fields = line.split()
        # id parent major:minor root point options [optional...] - type source super
        sep = fields.index("-")
        out.append(
            MountEntry(
                point=_unescape(fields[4]),
                fstype=fields[sep + 1],
                source=_unescape(fields[sep + 2]),
                device=fields[2],
                options=fields[5],
            )
        )
    return out


def mount_point_path(path: str | os.PathLike[str]) -> str:
    """``path`` made absolute and resolved as the mount table spells it.

    realpath() does not follow what it cannot lstat(), so a stale mount
    point resolves like a directory."""
    return os.path.realpath(os.fspath(path))


def find_mount(path: str | os.PathLike[str]) -> MountEntry | None:
    """The topmost mount at ``path``, stale or not; None when nothing is mounted there."""
    want = mount_point_path(path)
    found = None
    for entry in read_mounts():
        if entry.point == want:
            found = entry
    return found


def is_stale(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is the mount point of a FUSE daemon that is gone.

    Asked with statfs, which FUSE always sends to the daemon: a stat() may
    be answered from the kernel's attribute cache long after the daemon died
    (nommufs lets it cache for a day), so it proves nothing."""
    entry = find_mount(path)
    if entry is None or not entry.is_fuse:
        return False
    try:
        os.statvfs(path)
    except OSError as e:
        return e.errno == errno.ENOTCONN
    return False


def unmount(path: str | os.PathLike[str], *, lazy: bool = False, force: bool = False) -> MountEntry:
    """Unmount the topmost mount at ``path``, stale or live, and return it.

    Refuses (FsError naming the mount) a mount that is not nommufs's own
    unless ``force``; FUSE mounts go through fusermount3 (which a normal
    user may use), others through umount(8).  ``lazy``: detach now, clean up
    when the last user lets go (``fusermount3 -uz``, ``umount -l``)."""
    shown = os.fspath(path)
    entry = find_mount(path)
    if entry is None:
        raise InvalidArgumentError(f"{shown}: not a mount point")
    if not entry.is_nommufs and not force:
        raise FsError(
            f"{shown}: not a nommufs mount ({entry.describe()}); --force unmounts it anyway"
        )
    if entry.is_fuse:
        tool = shutil.which("fusermount3") or shutil.which("fusermount")
        if tool is None:
            raise FsError("fusermount3 not found (Debian package fuse3)")
        cmd = [tool, "-uz" if lazy else "-u", entry.point]
    else:
        cmd = ["umount", *(["-l"] if lazy else []), entry.point]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, check=False, timeout=UNMOUNT_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        raise FsError(f"{shown}: {cmd[0]} did not return in {UNMOUNT_TIMEOUT:.0f}s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        why = lines[-1] if lines else f"{os.path.basename(cmd[0])} failed"
        why = re.sub(r"^\S*(fusermount3?|umount): ", "", why)
        hint = " (-z unmounts lazily)" if "busy" in why and not lazy else ""
        raise FsError(f"{shown}: {why}{hint}")
    return entry


def prepare_mount_point(path: str | os.PathLike[str]) -> None:
    """Check that ``path`` can be mounted on: an existing directory.

    A stale nommufs mount there (its daemon died) is unmounted first, with a
    warning: nothing can use it any more, and leaving it would make every
    later mount fail.  A stale mount of anything else is an error."""
    shown = os.fspath(path)
    entry = find_mount(path)
    if entry is not None and is_stale(path):
        if not entry.is_nommufs:
            raise FsError(
                f"{shown}: a stale mount ({entry.describe()}), not nommufs's;"
                " nommufs umount --force clears it"
            )
        unmount(path)
        log.warning("%s: removed a stale nommufs mount (its daemon had died)", shown)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFoundError(f"{shown}: mount point does not exist") from None
    except OSError as e:
        raise FsError(f"{shown}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryFsError(f"{shown}: mount point is not a directory")
