"""What a run printed on the console, parsed into a `Run` (JSON with `Run.to_json`).

Two voices share the console: init's lines all start with ``@nommufs `` (see
nommu/init.c for their grammar), and everything else is the kernel's. Of the
kernel's we keep what decides an outcome: ``kernel BUG at FILE:LINE!`` with the
function it happened in (``epc :``) and the call trace, a ``Kernel panic`` line,
and the messages of the filesystems (``erofs:``, ``cramfs:``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Final, Literal

MARK: Final = "@nommufs "
TAIL: Final = 12  # kernel lines kept from the end of the console
Outcome = Literal["ok", "mount-failed", "bug", "panic", "timeout", "no-init"]

_BUG = re.compile(r"kernel BUG at ([^!]+)!")
_EPC = re.compile(r"epc\s*:\s*([A-Za-z0-9_.]+)\+0x")
_FRAME = re.compile(r"\[<[0-9a-f]+>\]\s+([A-Za-z0-9_.]+)\+0x")
_PANIC = re.compile(r"Kernel panic - not syncing: (.*)")
_FS_MSG = re.compile(r"\b(erofs|cramfs|EROFS|CRAMFS)[: (].*")


@dataclass
class Bug:
    """A ``kernel BUG``: where (``mm/nommu.c:300``), in which function, called from where."""

    where: str
    function: str | None = None
    callers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"where": self.where, "function": self.function, "callers": self.callers}


@dataclass
class FileRead:
    path: str
    size: int
    fnv64: int
    errno: int  # 0, or the errno open/read failed with


@dataclass
class Segment:
    """A PT_LOAD segment init mapped (address 0 and an errno when mmap failed)."""

    path: str
    offset: int
    length: int
    prot: str  # "r-x", "rw-"
    address: int
    errno: int


@dataclass
class Run:
    """One boot: init's steps with their /proc/meminfo, and what went wrong."""

    memory_kib: int
    seconds: float  # wall time of qemu
    timed_out: bool
    steps: dict[str, dict[str, int]] = field(default_factory=dict)  # step -> meminfo kB
    step_ns: dict[str, int] = field(default_factory=dict)  # step -> CLOCK_MONOTONIC
    # step -> free blocks per order, summed over zones (/proc/buddyinfo)
    buddy: dict[str, list[int]] = field(default_factory=dict)
    mount_errno: int | None = None
    umount_errno: int | None = None
    files: list[FileRead] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    maps: list[str] = field(default_factory=list)
    shown: dict[str, str] = field(default_factory=dict)  # NOMMUFS_SHOW: path -> text
    bugs: list[Bug] = field(default_factory=list)
    panic: str | None = None
    fs_messages: list[str] = field(default_factory=list)
    kernel_tail: list[str] = field(default_factory=list)  # the kernel's last lines
    done: bool = False

    @property
    def outcome(self) -> Outcome:
        if self.bugs:
            return "bug"
        if self.panic is not None:
            return "panic"
        if self.timed_out:
            return "timeout"
        if "boot" not in self.steps:
            return "no-init"
        if self.mount_errno is not None and self.mount_errno != 0:
            return "mount-failed"
        return "ok" if self.done else "panic"

    def largest_free_order(self, step: str) -> int:
        """The highest order with a free block at `step` (-1: none, or no buddyinfo)."""
        counts = self.buddy.get(step, [])
        return max((o for o, n in enumerate(counts) if n), default=-1)

    def meminfo(self, step: str, key: str) -> int:
        """A /proc/meminfo value in kB at `step` (KeyError when the step did not happen)."""
        return self.steps[step][key]

    def to_json(self) -> dict[str, Any]:
        return {
            "memory_kib": self.memory_kib,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 3),
            "mount_errno": self.mount_errno,
            "umount_errno": self.umount_errno,
            "bugs": [b.to_json() for b in self.bugs],
            "panic": self.panic,
            "fs_messages": self.fs_messages,
            "kernel_tail": self.kernel_tail if self.outcome != "ok" else [],
            "steps": self.steps,
            "step_ms": {k: round(v / 1e6, 1) for k, v in self.step_ns.items()},
            "buddy": self.buddy,
            "files": [[f.path, f.size, f"{f.fnv64:016x}", f.errno] for f in self.files],
            "segments": [[g.path, g.offset, g.length, g.prot, f"{g.address:#x}", g.errno]
                         for g in self.segments],
            "maps": self.maps,
            "shown": self.shown,
        }


def parse(text: str, *, memory_kib: int, seconds: float, timed_out: bool) -> Run:
    run = Run(memory_kib, seconds, timed_out)
    bug: Bug | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r")
        at = line.find(MARK)
        if at >= 0:
            _init_line(run, line[at + len(MARK):])
            continue
        if line.strip():
            run.kernel_tail = [*run.kernel_tail[-(TAIL - 1):], line]
        if m := _BUG.search(line):
            bug = Bug(m.group(1))
            run.bugs.append(bug)
        elif bug is not None and (m := _EPC.search(line)) and bug.function is None:
            bug.function = m.group(1)
        elif bug is not None and (m := _FRAME.search(line)):
            if m.group(1) != bug.function or bug.callers:
                bug.callers.append(m.group(1))
        elif m := _PANIC.search(line):
            run.panic = m.group(1).strip()
        elif m := _FS_MSG.search(line):
            run.fs_messages.append(m.group(0).strip())
    return run


def _init_line(run: Run, rest: str) -> None:
    kind, _, args = rest.partition(" ")
    words = args.split()
    if kind == "step" and len(words) == 2:
        run.step_ns[words[0]] = int(words[1])
        run.steps.setdefault(words[0], {})
    elif kind == "meminfo" and len(words) >= 3:
        key = words[1].rstrip(":")
        run.steps.setdefault(words[0], {})[key] = int(words[2])
    elif kind == "buddyinfo" and len(words) > 4 and words[1] == "Node":
        # "Node 0, zone   DMA32  3 1 0 ..."
        counts = [int(w) for w in words[5:]]
        have = run.buddy.setdefault(words[0], [0] * len(counts))
        run.buddy[words[0]] = [a + b for a, b in zip(have, counts, strict=False)]
    elif kind == "mount" and words:
        run.mount_errno = -int(words[0])
    elif kind == "umount" and words:
        run.umount_errno = -int(words[0])
    elif kind == "file" and len(words) >= 4:
        # the path may hold spaces: the last three words are the numbers
        path = args.rsplit(" ", 3)[0]
        run.files.append(FileRead(path, int(words[-3]), int(words[-2], 16), -int(words[-1])))
    elif kind == "seg" and len(words) >= 6:
        path = args.rsplit(" ", 5)[0]
        off, length, prot, addr, err = words[-5:]
        run.segments.append(Segment(path, int(off), int(length), prot, int(addr, 16), -int(err)))
    elif kind == "show" and words:
        run.shown[words[0]] = args.partition(" ")[2]
    elif kind == "maps":
        run.maps.append(args)
    elif kind == "done":
        run.done = True
