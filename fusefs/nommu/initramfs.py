"""An initramfs in the kernel's "newc" cpio format: init, /dev/console, empty dirs.

Written here rather than with cpio(1) so that the device node /dev/console
(the kernel opens it for init's stdin, stdout and stderr before init runs) needs
no root and the archive is the same bytes every time.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import Final

_TRAILER: Final = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    name: str  # without a leading slash
    mode: int  # type and permissions
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def newc(entries: list[Entry]) -> bytes:
    """The archive of `entries` (parents before children), with its trailer."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry(_TRAILER, 0)], start=1):
        name = e.name.encode() + b"\0"
        fields = (ino if e.name != _TRAILER else 0, e.mode, 0, 0,
                  2 if stat.S_ISDIR(e.mode) else 1, 0, len(e.data), 0, 0,
                  e.rdev[0], e.rdev[1], len(name), 0)
        header = b"070701" + b"".join(b"%08x" % f for f in fields)
        out += header + name + _pad4(len(header) + len(name))
        out += e.data + _pad4(len(e.data))
    return bytes(out)


def for_init(init: bytes) -> bytes:
    """The initramfs our init runs from: /init, /dev/console, /proc, /mnt."""
    return newc([
        Entry("dev", stat.S_IFDIR | 0o755),
        Entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)),
        Entry("proc", stat.S_IFDIR | 0o555),
        Entry("mnt", stat.S_IFDIR | 0o755),
        Entry("init", stat.S_IFREG | 0o755, init),
    ])
