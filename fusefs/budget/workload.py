"""What a budget replays: every regular file, the files of a list, or every
ELF program mapped as a loader would.  The files are resolved once per
image (their Inos are stable for the life of the open image), in a roomy
arena that is not measured."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from fusefs.errors import FsError, InvalidArgumentError, NotFoundError, UnsupportedFeatureError
from fusefs.vfs import Filesystem, Ino, resolve, show_path, walk

WorkloadKind = Literal["all", "list", "exec"]


@dataclass(frozen=True, slots=True)
class WorkFile:
    """One file of a workload, resolved once per image (Inos are stable per image)."""

    path: str
    ino: Ino
    size: int


@dataclass(frozen=True, slots=True)
class Workload:
    """What to replay: ``kind`` and, for ``all``/``list``, the files in order."""

    kind: WorkloadKind
    files: tuple[WorkFile, ...] = ()
    source: str | None = None  # the list file, for ``list``

    @property
    def label(self) -> str:
        return f"list:{self.source}" if self.kind == "list" else self.kind

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def all_files(fs: Filesystem) -> tuple[WorkFile, ...]:
    """Every regular file once (hard links once), in walk order: parents
    before children, entries in on-disk order."""
    seen: set[int] = set()
    out: list[WorkFile] = []
    for item in walk(fs):
        if item.attr.is_reg and item.ino not in seen:
            seen.add(item.ino)
            out.append(WorkFile(show_path(item.path), item.ino, item.attr.size))
    return tuple(out)


def located(where: str, e: FsError) -> FsError:
    """``e`` with the place it happened in front of its message (same errno)."""
    err = FsError(f"{where}: {e}")
    err.errno = e.errno
    return err


def listed_files(fs: Filesystem, list_path: str) -> tuple[WorkFile, ...]:
    """The files named in ``list_path``, one path per line (blank lines and
    ``#`` comments skipped), symlinks followed."""
    try:
        with open(list_path, "rb") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise InvalidArgumentError(
            f"--workload list:{list_path}: cannot read: {e.strerror or e}"
        ) from None
    out: list[WorkFile] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        where = f"--workload list:{list_path} line {lineno}"
        try:
            ino = resolve(fs, line, follow_last=True)
        except NotFoundError:
            raise NotFoundError(
                f"{where}: {line.decode(errors='backslashreplace')}: no such file in the image"
            ) from None
        except FsError as e:
            raise located(where, e) from e
        attr = fs.getattr(ino)
        if not attr.is_reg:
            raise InvalidArgumentError(
                f"{where}: {line.decode(errors='backslashreplace')}: not a regular file"
            )
        out.append(WorkFile(show_path(line.lstrip(b"/")), ino, attr.size))
    if not out:
        raise InvalidArgumentError(f"--workload list:{list_path}: names no file")
    return tuple(out)


def parse_workload(text: str) -> tuple[WorkloadKind, str | None]:
    """``all``, ``exec`` or ``list:FILE``."""
    if text in ("all", "exec"):
        return ("all" if text == "all" else "exec"), None
    if text.startswith("list:") and len(text) > 5:
        return "list", text[5:]
    raise InvalidArgumentError(f"bad --workload {text!r} (all, exec or list:FILE)")


def load_workload(fs: Filesystem, kind: WorkloadKind, source: str | None = None) -> Workload:
    """Resolve the workload's files once (replays reuse them)."""
    if kind == "all":
        return Workload("all", all_files(fs))
    if kind == "list":
        if source is None:
            raise InvalidArgumentError("--workload list: needs a file")
        return Workload("list", listed_files(fs, source), source)
    if not fs.capabilities.mmap:
        raise UnsupportedFeatureError(
            f"--workload exec: {fs.format_name} images cannot be mmapped by nommufs yet "
            "(no program-loader simulation for this format)"
        )
    return Workload("exec")
