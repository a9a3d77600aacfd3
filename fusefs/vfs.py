"""The format-neutral filesystem core.

Every image format (EROFS, cramfs) implements :class:`Filesystem`; the FUSE
adapter, the offline commands (``ls``, ``cat``, ``extract``, ``inspect``,
``fsck``) and the tests all drive the same object, so there is one read path.

Identifier spaces.  Three kinds of number name a file, and they meet here:

* the *disk location* a format uses (an EROFS nid: the 32-byte slot of the
  inode relative to ``meta_blkaddr``; a cramfs inode's byte offset in the
  image);
* the :data:`Ino` a :class:`Filesystem` hands out: a format chooses it, it is
  stable for the life of the open image, unique per inode (hard links share
  one), and never 0.  ``Filesystem.root`` is the root directory's Ino;
* the FUSE inode number, which the kernel requires to be 1 for the root
  (``pyfuse3.ROOT_INODE``).  Only ``fusefs/fuse/`` knows about it and maps
  ``root`` <-> 1; every other Ino is passed through unchanged (a format never
  hands out 1 for a non-root inode).
"""

from __future__ import annotations

import abc
import collections
import logging
import mmap
import os
import re
import stat
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, NewType, TypeVar

from fusefs.errors import (
    CorruptImageError,
    FsError,
    InvalidArgumentError,
    UnsupportedFeatureError,
    interruption,
)
from fusefs.modes import HasMode
from fusefs.names import escape
from fusefs.names import show_path as show_path  # callers found it here first

if TYPE_CHECKING:
    from fusefs.memory import ReadMemory
    from mmshim import Arena
    from mmshim.mmap import MmapFile

log = logging.getLogger("nommufs")
Ino = NewType("Ino", int)
K = TypeVar("K")
V = TypeVar("V")

MmMode = Literal["mmu", "nommu-contig", "nommu-bounce"]
Strategy = Literal["vmap", "bounce", "contig-folio", "percpu-buffer"]
MM_MODES: Final[tuple[MmMode, ...]] = ("mmu", "nommu-contig", "nommu-bounce")
STRATEGIES: Final[tuple[Strategy, ...]] = ("vmap", "bounce", "contig-folio", "percpu-buffer")
PAGE_SIZE: Final = 4096
DEFAULT_ARENA_BYTES: Final = 64 << 20
_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?[bB])?\s*$")


def parse_size(text: str | int) -> int:
    """Bytes from ``4096``, ``"1536K"``, ``"64M"`` or ``"3.5M"`` (binary units);
    InvalidArgumentError naming the text otherwise."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(text)
    if not m:
        raise InvalidArgumentError(f"bad size {text!r} (examples: 4096, 1536K, 3.5M)")
    scaled = float(m.group(1)) * (1 << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()])
    if scaled != int(scaled):
        raise InvalidArgumentError(f"size {text!r} is not a whole number of bytes")
    return int(scaled)


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """How reading an image uses the simulated machine's memory (per mount)."""

    mm: MmMode = "mmu"
    decompress: Strategy = "vmap"
    arena_bytes: int = DEFAULT_ARENA_BYTES
    xip_read: Literal["pagecache", "direct"] = "pagecache"

    def __post_init__(self) -> None:
        if self.mm not in MM_MODES:
            raise InvalidArgumentError(
                f"unknown --mm mode {self.mm!r} (one of {', '.join(MM_MODES)})"
            )
        if self.decompress not in STRATEGIES:
            raise InvalidArgumentError(
                f"unknown --decompress strategy {self.decompress!r}"
                f" (one of {', '.join(STRATEGIES)})"
            )
        if self.arena_bytes <= 0 or self.arena_bytes % PAGE_SIZE:
            raise InvalidArgumentError(
                f"--arena {self.arena_bytes} is not a positive multiple of 4096"
            )


@dataclass(frozen=True, slots=True)
class Attr(HasMode):
    """What stat(2) shows for an inode."""

    ino: Ino
    mode: int  # full st_mode: type and permission bits
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int  # atime and ctime are reported equal to mtime
    rdev: int = 0  # os.makedev() encoding
    blocks: int = 0  # 512-byte units, as st_blocks


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory entry.  ``offset`` is a stable key: listing again from
    ``offset`` yields the entries after this one (pyfuse3's readdir contract)."""

    name: bytes
    ino: Ino
    type: int  # the S_IFMT bits of the target's mode
    offset: int


@dataclass(frozen=True, slots=True)
class FsStat:
    block_size: int
    blocks: int
    files: int
    name_max: int = 255


@dataclass(slots=True)
class CacheCounters:
    """Hit/miss counters of one bounded cache owned by an image."""

    hits: int = 0
    misses: int = 0


class BoundedCache(Generic[K, V]):
    """A bounded LRU cache owned by one open image, with hit/miss counters.

    Its lock is a leaf: held only around the dictionary, never while the value
    is computed, so callers may parse or read in between without blocking
    other threads (two threads may then compute the same value; the last one
    stored wins, which is harmless for immutable image data)."""

    __slots__ = ("_data", "_lock", "capacity", "counters")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.counters = CacheCounters()
        self._data: collections.OrderedDict[K, V] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            hit = self._data.get(key)
            if hit is None:
                self.counters.misses += 1
                return None
            self.counters.hits += 1
            self._data.move_to_end(key)
            return hit

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._data[key] = value
            if len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return value

    def __len__(self) -> int:
        return len(self._data)


class ImageBytes:
    """The image file opened read-only, with the one bounds check every
    ``(offset, length)`` taken from the image goes through.

    Every read is a read of the file: :meth:`slice` (metadata) with
    ``pread``, :meth:`read_into` (file data, into the reader's own memory)
    with ``preadv``, as the kernel's bio reads exactly a pcluster.  A fault
    on a cold mapping would read the device's whole read-around window
    (``read_ahead_kb``, 2.5 MiB on this machine's disk) before the reader
    could go on, and a fault past the end of a file truncated meanwhile
    kills the process with SIGBUS.  Only :attr:`view`, the mapping, is for
    cramfs, whose image is the board's flash (XIP maps it)."""

    def __init__(self, path: str | os.PathLike[str], offset: int = 0) -> None:
        self.path = os.fspath(path)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        self._fd = fd
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISBLK(st.st_mode):
                raise InvalidArgumentError(f"{self.path}: not a regular file or block device")
            total = st.st_size if stat.S_ISREG(st.st_mode) else os.lseek(fd, 0, os.SEEK_END)
            if offset < 0 or offset > total:
                raise InvalidArgumentError(
                    f"{self.path}: --offset {offset} is beyond the end ({total} bytes)"
                )
            self.size = total - offset
            self._mmap: mmap.mmap | None = (
                mmap.mmap(fd, total, prot=mmap.PROT_READ) if total else None
            )
        except BaseException:
            os.close(fd)
            raise
        self.base = offset
        whole = memoryview(self._mmap) if self._mmap is not None else memoryview(b"")
        self.view: memoryview = whole[offset:]
        self._whole = whole

    def check(self, offset: int, length: int, *, structure: str, nid: int | None = None) -> None:
        """Raise CorruptImageError unless ``[offset, offset+length)`` lies inside the image."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise CorruptImageError(
                f"{length} bytes at {offset:#x} lie outside the {self.size}-byte image",
                structure=structure,
                offset=offset,
                nid=nid,
            )

    def slice(
        self, offset: int, length: int, *, structure: str, nid: int | None = None
    ) -> memoryview:
        """The bytes ``[offset, offset + length)`` of the image, bounds-checked
        and read from the file (``pread``), not through the mapping: if the
        file is truncated under an open image, a read of what is gone is a
        short read, said as corruption, where touching the mapping there
        would kill the process with SIGBUS."""
        self.check(offset, length, structure=structure, nid=nid)
        data = os.pread(self._fd, length, self.base + offset)
        if len(data) != length:
            raise self._short(offset, len(data), length, structure, nid)
        return memoryview(data)

    def _short(
        self, offset: int, got: int, length: int, structure: str, nid: int | None
    ) -> CorruptImageError:
        return CorruptImageError(
            f"read {got} of {length} bytes at {offset:#x}: the image file is shorter"
            " than when it was opened",
            structure=structure,
            offset=offset,
            nid=nid,
        )

    def read_into(
        self, offset: int, buffers: list[memoryview], *, structure: str, nid: int | None = None
    ) -> None:
        """Fill ``buffers`` (writable, in order) from image byte ``offset`` on,
        with one ``preadv``; bounds-checked like :meth:`slice`."""
        length = sum(b.nbytes for b in buffers)
        self.check(offset, length, structure=structure, nid=nid)
        got = os.preadv(self._fd, buffers, self.base + offset)
        if got != length:  # the file shrank under us
            raise self._short(offset, got, length, structure, nid)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        if self._mmap is None:
            return
        mapping, self._mmap = self._mmap, None
        try:
            self.view.release()
            self._whole.release()
            mapping.close()
        except BufferError:
            # a slice is still alive (e.g. in the frames of a traceback being
            # raised): the mapping goes away with the last reference to it
            pass


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a format can do besides reading files, declared once per format
    so that callers (``budget``, the loader simulation) ask the type, not
    the format's name.

    ``strategies``: the decompression strategies a mount may choose between
    (:data:`MemoryConfig.decompress`); empty when the format decodes one way
    only (cramfs: zlib into each page-cache frame).  ``mmap``: regular files
    can be mapped (:meth:`Filesystem.mappable`), so programs can be loaded;
    ``xip``: file data can lie in flash ready to map in place
    (:meth:`Filesystem.xip_pages`).
    """

    strategies: tuple[Strategy, ...] = ()
    mmap: bool = False
    xip: bool = False


@dataclass(frozen=True, slots=True)
class DataExtent:
    """Bytes ``[offset, offset + length)`` of a regular file that are not a
    hole, and what they are decoded from (:meth:`Filesystem.data_extents`).

    ``source`` is hashable and names everything that decides the bytes
    besides their length (for EROFS: where the pcluster is, its length, the
    algorithm, ...), so that two extents of one open image with equal
    sources and lengths hold the same bytes, or fail to decode alike: the
    decoders are deterministic.  ``prefix``: the bytes are the first
    ``length`` of what the source decodes to (a partial reference, plain
    bytes), so a source read to some length is read to every shorter one;
    else the source must decode to exactly ``length`` bytes.  ``None``: a
    source shared with no other extent."""

    offset: int
    length: int
    source: Hashable | None = None
    prefix: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.length


def ranges_of(extents: Iterable[DataExtent]) -> Iterator[tuple[int, int]]:
    """``(offset, length)`` of the runs of adjacent extents (in order)."""
    start = end = -1
    for e in extents:
        if e.offset != end:
            if end > start:
                yield start, end - start
            start = e.offset
        end = e.end
    if end > start:
        yield start, end - start


class Filesystem(abc.ABC):
    """A read-only filesystem image, opened.

    Methods are safe to call from several threads at once (the FUSE adapter
    decompresses off its event loop); an implementation serialises what must
    be serialised with ``self.lock``.
    """

    format_name: str = "?"
    capabilities: Capabilities = Capabilities()
    # The simulated machine's memory this open image reads through (each open
    # image has its own): the arena, its page cache and the read path's
    # counters; a format sets both in its __init__ (``arena`` is ``mem.arena``).
    mem: ReadMemory
    arena: Arena

    def __init__(self, image: ImageBytes, memory: MemoryConfig) -> None:
        self.image = image
        self.memory = memory
        self.lock = threading.RLock()

    @property
    @abc.abstractmethod
    def root(self) -> Ino: ...

    @abc.abstractmethod
    def getattr(self, ino: Ino) -> Attr: ...

    @abc.abstractmethod
    def lookup(self, parent: Ino, name: bytes) -> Ino:
        """The Ino of ``name`` in directory ``parent``; NotFoundError if absent."""

    @abc.abstractmethod
    def readdir(self, ino: Ino, offset: int = 0) -> Iterator[DirEntry]:
        """Entries after the one whose ``offset`` is given (0: from the start),
        ``.`` and ``..`` included, in on-disk order."""

    @abc.abstractmethod
    def read(self, ino: Ino, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes of a regular file from ``offset`` (short at EOF)."""

    @abc.abstractmethod
    def readlink(self, ino: Ino) -> bytes: ...

    def meta_reads_data(self, ino: Ino) -> bool:
        """True when ``lookup`` in directory ``ino`` (or ``readlink`` of it)
        may read its bytes through the page cache, and so wait behind a
        decompression (an EROFS compressed directory or symlink); the FUSE
        adapter then answers from a worker thread, never on its event loop.
        False for formats whose metadata is parsed from the image alone."""
        return False

    def record_reads_data(self, ino: Ino) -> bool:
        """True when reading inode ``ino``'s own record (``getattr``, its
        xattrs) may go through the page cache, and so wait behind a
        decompression (an EROFS image whose metadata is in a metabox); the
        FUSE adapter then answers those from a worker thread too."""
        return False

    @abc.abstractmethod
    def listxattr(self, ino: Ino) -> list[bytes]: ...

    @abc.abstractmethod
    def getxattr(self, ino: Ino, name: bytes) -> bytes:
        """The value of xattr ``name`` (full name, e.g. ``b"user.foo"``);
        NoAttributeError if absent."""

    @abc.abstractmethod
    def statfs(self) -> FsStat: ...

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Superblock, features and counts, as plain JSON-able data (``inspect``):
        numbers as numbers (``inspect`` shows ``mode`` in octal and checksums
        and flags in hex, see :data:`fusefs.commands.inspect.SHOWN_AS`)."""

    def describe_inode(self, ino: Ino) -> dict[str, Any]:
        """An inode's layout and extents (``inspect --inode``)."""
        attr = self.getattr(ino)
        return {"ino": int(ino), "mode": attr.mode, "size": attr.size}

    def stored_bytes(self, ino: Ino) -> int:
        """How many bytes of the image hold the data of ``ino`` (``inspect -S``).

        The default, ``st_blocks * 512``, is right for formats whose
        st_blocks counts what is stored (EROFS: the compressed blocks); a
        format whose st_blocks follows the size (cramfs) overrides it."""
        return self.getattr(ino).blocks * 512

    def data_ranges(self, ino: Ino) -> Iterator[tuple[int, int]]:
        """``(offset, length)`` of the parts of the regular file ``ino`` that
        may hold bytes other than zeros, in order, not overlapping; every
        byte outside them is a hole the format's index says is zeros (as
        ``SEEK_DATA``/``SEEK_HOLE`` tell).  Readers of a whole file (``fsck``,
        ``extract``, ``cat``) read only these, so the work follows what the
        image stores, not the size it claims.  The default: all of the file.
        A format overrides it from its block index; the ranges it gives are
        bounded in number by the image's size."""
        size = self.getattr(ino).size
        if size:
            yield 0, size

    def data_extents(self, ino: Ino) -> Iterator[DataExtent]:
        """The parts of :meth:`data_ranges`, each with what its bytes are
        decoded from (:class:`DataExtent`), in order, not overlapping; their
        union is exactly the data ranges.  ``fsck`` checks each source once.
        The default: the data ranges, each of a source nobody shares."""
        for start, length in self.data_ranges(ino):
            yield DataExtent(start, length)

    def fsck_extra(self) -> Iterator[str]:
        """Format-specific structural problems a tree walk would not notice
        (dirent order, superblock counts, unreferenced areas), one line each.
        ``nommufs fsck`` walks every inode through the methods above and then
        reports these."""
        return iter(())

    def memory_stats(self) -> dict[str, int]:
        """Counters of the simulated machine's memory used by this image."""
        return {}

    def mappable(self, ino: Ino) -> MmapFile:
        """The regular file ``ino`` as an :class:`mmshim.mmap.MmapFile` over
        this image's arena; only where ``capabilities.mmap``."""
        raise UnsupportedFeatureError(f"{self.format_name}: files cannot be mmapped by nommufs")

    def xip_pages(self, ino: Ino, pgoff: int = 0, pages: int | None = None) -> tuple[int, int]:
        """(flash offset, count) of the pages of ``ino`` from ``pgoff`` stored
        ready to map in place (execute in place); count 0 where none are, and
        always for a format without ``capabilities.xip``."""
        return 0, 0

    def close(self) -> None:
        self.image.close()

    def __enter__(self) -> Filesystem:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        if interruption(exc) is None and not isinstance(exc, KeyboardInterrupt):
            self.close()
            return
        # A signal stopped a read between any two bytecodes: references it
        # held are not given back, and the arena's checks at close would
        # replace the interruption (the news) with a leak report.
        try:
            self.close()
        except FsError as e:
            log.debug("closing after %s: %s", type(exc).__name__, e)


# A probe looks at the first bytes of an image and, if the format is its own,
# returns an opener.  Formats register themselves in fusefs/formats.py.
Opener = Callable[[ImageBytes, MemoryConfig], Filesystem]


@dataclass(slots=True)
class _Registry:
    probes: list[tuple[str, Callable[[ImageBytes], bool], Opener]] = field(default_factory=list)


FORMATS: Final = _Registry()


def register_format(name: str, probe: Callable[[ImageBytes], bool], opener: Opener) -> None:
    FORMATS.probes.append((name, probe, opener))


def open_image(
    path: str | os.PathLike[str],
    memory: MemoryConfig | None = None,
    *,
    offset: int = 0,
) -> Filesystem:
    """Open an image, detecting its format (EROFS or cramfs) by its magic."""
    import fusefs.formats  # noqa: F401  (registers the formats)

    image = ImageBytes(path, offset)
    try:
        for _name, probe, opener in FORMATS.probes:
            if probe(image):
                return opener(image, memory or MemoryConfig())
        raise UnsupportedFeatureError(
            f"{image.path}: not an EROFS or cramfs image (no known magic)"
        )
    except BaseException:
        image.close()
        raise


def resolve(fs: Filesystem, path: str | bytes, *, follow_last: bool = False) -> Ino:
    """The Ino at ``path`` (relative to the root; ``/`` separated)."""
    from fusefs.errors import NotADirectoryFsError

    raw = os.fsencode(path)
    ino = fs.root
    seen = 0
    parts = [p for p in raw.split(b"/") if p not in (b"", b".")]
    stack: list[Ino] = []
    i = 0
    while i < len(parts):
        part = parts[i]
        if not fs.getattr(ino).is_dir:
            raise NotADirectoryFsError(f"{escape(raw)}: not a directory")
        if part == b"..":
            ino = stack.pop() if stack else fs.root
            i += 1
            continue
        child = fs.lookup(ino, part)
        attr = fs.getattr(child)
        last = i == len(parts) - 1
        if attr.is_lnk and (follow_last or not last):
            seen += 1
            if seen > 40:
                from fusefs.errors import FsError

                raise FsError(f"{escape(raw)}: too many levels of symbolic links")
            target = fs.readlink(child)
            rest = [p for p in target.split(b"/") if p not in (b"", b".")]
            if target.startswith(b"/"):
                ino, stack = fs.root, []
            parts = parts[:i] + rest + parts[i + 1 :]
            continue
        stack.append(ino)
        ino = child
        i += 1
    return ino


# -- a generic tree walk (extract, fsck, ls -R) ---------------------------------


@dataclass(frozen=True, slots=True)
class WalkItem:
    """One inode reached by :func:`walk`: its path relative to the start
    (``b""`` for the start itself), its attributes and its parent's Ino."""

    path: bytes
    ino: Ino
    attr: Attr
    parent: Ino
    entry_type: int  # the S_IFMT bits the parent's dirent claims (== attr's for the start)


def check_name(name: bytes) -> str | None:
    """Why ``name`` cannot be a directory entry, or None when it is fine."""
    if not name:
        return "empty name"
    if b"/" in name:
        return "name contains '/'"
    if b"\0" in name:
        return "name contains NUL"
    if name in (b".", b".."):
        return f"extra entry named {name.decode()!r}"
    if len(name) > 255:
        return f"name of {len(name)} bytes (more than 255)"
    return None


def walk(
    fs: Filesystem,
    start: Ino | None = None,
    *,
    on_error: Callable[[bytes, FsError], None] | None = None,
) -> Iterator[WalkItem]:
    """Every inode under ``start`` (default: the root), parents before
    children, entries in on-disk order; each directory's ``.`` and ``..`` are
    skipped (the first of each; any other entry so named is reported as bad).

    Errors are passed to ``on_error(path, error)`` and the walk goes on with
    the next entry; without ``on_error`` the first one is raised.  A directory
    reached twice (a loop, or a directory hard link) is reported as
    CorruptImageError and not entered again.
    """

    def fail(path: bytes, err: FsError) -> None:
        if on_error is None:
            raise err
        on_error(path, err)

    top = fs.root if start is None else start
    try:
        top_attr = fs.getattr(top)
    except FsError as e:
        fail(b"", e)
        return
    yield WalkItem(b"", top, top_attr, top, stat.S_IFMT(top_attr.mode))
    if not top_attr.is_dir:
        return
    entered: set[int] = {top}
    stack: list[tuple[bytes, Ino]] = [(b"", top)]
    while stack:
        dpath, dino = stack.pop()
        children: list[tuple[bytes, Ino]] = []
        seen_dot = seen_dotdot = False
        try:
            for ent in fs.readdir(dino):
                if ent.name == b"." and not seen_dot:
                    seen_dot = True
                    continue
                if ent.name == b".." and not seen_dotdot:
                    seen_dotdot = True
                    continue
                path = dpath + b"/" + ent.name if dpath else ent.name
                why = check_name(ent.name)
                if why is not None:
                    fail(path, CorruptImageError(f"{show_path(path)}: {why}", structure="dirent"))
                    continue
                try:
                    attr = fs.getattr(ent.ino)
                except FsError as e:
                    fail(path, e)
                    continue
                yield WalkItem(path, ent.ino, attr, dino, ent.type)
                if attr.is_dir:
                    if ent.ino in entered:
                        fail(
                            path,
                            CorruptImageError(
                                f"{show_path(path)}: directory reached twice"
                                " (loop or directory hard link)",
                                structure="dirent",
                            ),
                        )
                        continue
                    entered.add(ent.ino)
                    children.append((path, ent.ino))
        except FsError as e:
            fail(dpath, e)
        # depth first, entries in order: push in reverse
        stack.extend(reversed(children))
