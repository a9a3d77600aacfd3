"""Reading an image by path, without mounting it: :func:`open_image` and :class:`Image`.

A thin layer over :class:`fusefs.vfs.Filesystem` (which names files by Ino):
paths are ``/``-separated, relative to the image's root (a leading ``/`` is
allowed), ``str`` or ``bytes``; names come back as ``str`` (undecodable bytes
as surrogate escapes, as :func:`os.fsdecode` does).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any, Literal

from fusefs.errors import InvalidArgumentError, IsADirectoryFsError, NotADirectoryFsError
from fusefs.vfs import (
    Attr,
    Filesystem,
    Ino,
    MemoryConfig,
    MmMode,
    Strategy,
    parse_size,
    resolve,
)
from fusefs.vfs import open_image as open_filesystem

Path = str | bytes | os.PathLike[str]
CHUNK = 1 << 20


def open_image(
    path: str | os.PathLike[str],
    *,
    mm: MmMode = "mmu",
    decompress: Strategy = "vmap",
    arena: int | str = "64M",
    xip_read: Literal["pagecache", "direct"] = "pagecache",
    offset: int = 0,
) -> Image:
    """Open an EROFS or cramfs image (the format is detected) for reading.

    The keyword arguments are the simulated machine of ``nommufs mount``:
    ``mm`` (``mmu``, ``nommu-contig``, ``nommu-bounce``), ``decompress``
    (``vmap``, ``bounce``, ``contig-folio``, ``percpu-buffer``), ``arena``
    (bytes, or ``"1536K"``, ``"3.5M"``) and ``xip_read``.  Raises
    :class:`~fusefs.errors.FsError` (``CorruptImageError``,
    ``UnsupportedFeatureError``, ...) or ``OSError``.  Use it as a context
    manager, or call :meth:`Image.close`.
    """
    memory = MemoryConfig(mm=mm, decompress=decompress, arena_bytes=parse_size(arena),
                          xip_read=xip_read)  # fmt: skip
    return Image(open_filesystem(path, memory, offset=offset))


class Image:
    """An opened image, read by path.  Thread-safe, like the filesystem under it."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs

    @property
    def format(self) -> str:
        """``"erofs"`` or ``"cramfs"``."""
        return self.fs.format_name

    def _ino(self, path: Path, *, follow: bool) -> Ino:
        return resolve(self.fs, os.fsencode(path), follow_last=follow)

    def stat(self, path: Path, *, follow_symlinks: bool = True) -> Attr:
        """The inode at ``path``: ``mode``, ``size``, ``uid``, ``gid``,
        ``mtime_ns``, ``nlink``, ``rdev``, ``is_dir`` / ``is_reg`` / ``is_lnk``."""
        return self.fs.getattr(self._ino(path, follow=follow_symlinks))

    def exists(self, path: Path) -> bool:
        """Whether ``path`` names anything (a dangling symlink counts)."""
        try:
            self._ino(path, follow=False)
        except FileNotFoundError:
            return False
        return True

    def read_file(self, path: Path) -> bytes:
        """The whole content of the regular file at ``path`` (symlinks followed)."""
        with self.open(path) as f:
            return f.read()

    def open(self, path: Path) -> io.BufferedReader:
        """A read-only, seekable binary file object for the regular file at
        ``path`` (symlinks followed), like ``open(path, "rb")``."""
        ino = self._ino(path, follow=True)
        attr = self.fs.getattr(ino)
        shown = os.fsdecode(path)
        if attr.is_dir:
            raise IsADirectoryFsError(f"{shown}: is a directory")
        if not attr.is_reg:
            raise InvalidArgumentError(f"{shown}: not a regular file")
        return io.BufferedReader(_ImageFile(self.fs, ino, attr, shown), buffer_size=CHUNK)

    def readlink(self, path: Path) -> str:
        """The target of the symlink at ``path``."""
        return os.fsdecode(self.fs.readlink(self._ino(path, follow=False)))

    def listdir(self, path: Path = "/") -> list[str]:
        """The names in the directory at ``path`` (without ``.`` and ``..``), in image order."""
        ino = self._ino(path, follow=True)
        if not self.fs.getattr(ino).is_dir:
            raise NotADirectoryFsError(f"{os.fsdecode(path)}: not a directory")
        return [os.fsdecode(e.name) for e in self.fs.readdir(ino) if e.name not in (b".", b"..")]

    def walk(self, top: Path = "/") -> Iterator[tuple[str, list[str], list[str]]]:
        """``(dirpath, dirnames, filenames)`` for every directory under
        ``top``, parents first, like :func:`os.walk`; ``dirpath`` starts with ``/``."""
        start = "/" + os.fsdecode(top).strip("/")
        stack = [start]
        while stack:
            dirpath = stack.pop()
            dirs: list[str] = []
            files: list[str] = []
            for name in self.listdir(dirpath):
                child = f"{dirpath.rstrip('/')}/{name}"
                (dirs if self.stat(child, follow_symlinks=False).is_dir else files).append(name)
            yield dirpath, dirs, files
            stack.extend(f"{dirpath.rstrip('/')}/{d}" for d in reversed(dirs))

    def memory_stats(self) -> dict[str, int]:
        """Counters of the simulated machine's memory so far (arena, page cache, copies)."""
        return self.fs.memory_stats()

    def describe(self) -> dict[str, Any]:
        """Superblock, features and counts (what ``nommufs inspect --json`` shows)."""
        return {"format": self.format, **self.fs.describe()}

    def close(self) -> None:
        self.fs.close()

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ImageFile(io.RawIOBase):
    """The raw, read-only file under :meth:`Image.open`."""

    def __init__(self, fs: Filesystem, ino: Ino, attr: Attr, name: str) -> None:
        super().__init__()
        self._fs, self._ino, self._size, self.name = fs, ino, attr.size, name
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = min(len(view), max(self._size - self._pos, 0))
        if want <= 0:
            return 0
        data = self._fs.read(self._ino, self._pos, want)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise InvalidArgumentError(f"{self.name}: negative seek position")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    @property
    def mode(self) -> str:
        return "rb"

    def fileno(self) -> int:
        raise io.UnsupportedOperation("an image file has no file descriptor")
