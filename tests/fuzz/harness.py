"""What the fuzz targets do with one input, and the invariants they check.

A format target (``erofs``, ``cramfs``) takes the input as an image: opens
it, walks it, reads every file (its data ranges, checked, then bounded
reads: see :func:`read_file`), every
symlink and every xattr, looks names up, describes inodes, asks the format's
own fsck checks, closes it.  The invariants, any breach of which is a crash
the fuzzer keeps:

* only :class:`~fusefs.errors.FsError` escapes the reader (anything else --
  a mmshim error, IndexError, struct.error, RecursionError, MemoryError --
  propagates and is the finding);
* ``close()`` never raises: every page reference and mapping taken was given
  back, whatever the image said;
* the work is bounded by the image: :class:`Budget` fails an input that
  takes longer than ``BASE_SECONDS`` plus ``SECONDS_PER_MIB`` per MiB of
  image, and the arena is fixed (``ARENA``), so memory is bounded too (the
  interpreter's own is watched by libFuzzer's ``-rss_limit_mb``).

The ``mkimage`` target turns the input into a random source tree and a
random choice of ``mkimage`` options, builds an image, and reads it back
through nommufs's reader: every field equal to the source's.

Checksums are fixed up before an image is opened (the EROFS superblock's
crc32c, cramfs's crc32 of the whole image): otherwise almost every mutant
would stop at the checksum and the fuzzer would never see further.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from fusefs.cramfs import format as cf
from fusefs.erofs import format as ef
from fusefs.erofs.hash import superblock_checksum
from fusefs.errors import FsError
from fusefs.vfs import Filesystem, Ino, MemoryConfig, open_image, walk

ARENA: Final = 4 << 20
BASE_SECONDS: Final = 10.0  # generous: the machine is shared and the code instrumented
SECONDS_PER_MIB: Final = 20.0
READ_HEAD: Final = 256 << 10  # a file's first bytes read in full ...
READ_PROBE: Final = 5000  # ... then probes in its middle and at its end
TOTAL_READ: Final = 8 << 20  # per image


class InvariantError(AssertionError):
    """An invariant of the module docstring does not hold for this input."""


class Budget:
    """The time an input may take: ``BASE_SECONDS`` + ``SECONDS_PER_MIB`` per MiB."""

    def __init__(self, image_bytes: int) -> None:
        self.limit = BASE_SECONDS + SECONDS_PER_MIB * image_bytes / (1 << 20)
        self.start = time.monotonic()

    def check(self, what: str) -> None:
        spent = time.monotonic() - self.start
        if spent > self.limit:
            raise InvariantError(f"{what}: {spent:.1f} s, more than {self.limit:.1f} s")


def fix_checksums(data: bytes) -> bytes:
    """``data`` with its EROFS superblock checksum or cramfs crc made right
    (when it has one): the mutations then reach what lies behind them."""
    out = bytearray(data)
    if len(out) >= ef.EROFS_SUPER_OFFSET + 128 and out[1024:1028] == struct.pack(
        "<I", ef.EROFS_SUPER_MAGIC_V1
    ):
        sb = ef.SuperBlock.unpack_from(out, ef.EROFS_SUPER_OFFSET)
        if sb.feature_compat & ef.EROFS_FEATURE_COMPAT_SB_CHKSUM and 9 <= sb.blkszbits <= 16:
            length = ef.sb_checksum_length(sb.blkszbits)
            region = out[1024 : 1024 + length]
            if len(region) == length:
                out[1028:1032] = superblock_checksum(region).to_bytes(4, "little")
        return bytes(out)
    for start in (0, cf.CRAMFS_PAD_SIZE):
        head = out[start : start + cf.CRAMFS_SB_SIZE]
        if len(head) < cf.CRAMFS_SB_SIZE:
            break
        for order in ("<", ">"):
            (magic,) = struct.unpack_from(order + "I", head)
            if magic != cf.CRAMFS_MAGIC:
                continue
            size, flags = struct.unpack_from(order + "II", head, 4)
            if flags & cf.CRAMFS_FLAG_FSID_VERSION_2 and start + cf.CRAMFS_SB_SIZE <= size <= len(
                out
            ):
                crc = cf.image_crc(out, start, size)
                struct.pack_into(order + "I", out, start + cf.CRC_OFFSET, crc)
            return bytes(out)
    return bytes(out)


def data_ranges(fs: Filesystem, i: Ino, size: int) -> list[tuple[int, int]]:
    """The file's data ranges, checked: in order, not overlapping, not empty,
    inside the file."""
    ranges = list(fs.data_ranges(i))
    end = 0
    for start, length in ranges:
        if start < end or length <= 0 or start + length > size:
            raise InvariantError(f"ino {int(i)}: data ranges {ranges[:8]} for size {size}")
        end = start + length
    return ranges


def read_file(fs: Filesystem, i: Ino, size: int, budget: list[int]) -> None:
    """The first ``READ_HEAD`` bytes of each data range (holes cost nothing,
    as for fsck), then probes in the file's middle and at its end, within
    the image's ``budget`` (bytes left to read)."""
    ino = int(i)
    for start, length in data_ranges(fs, i, size):
        pos, end = start, start + min(length, READ_HEAD)
        while pos < end and budget[0] > 0:
            chunk = fs.read(i, pos, min(64 << 10, end - pos, budget[0]))
            if not chunk:
                break
            if len(chunk) > size - pos:
                raise InvariantError(f"ino {ino}: read {len(chunk)} bytes at {pos}, size {size}")
            pos += len(chunk)
            budget[0] -= len(chunk)
    for at in (size // 2, max(0, size - READ_PROBE), size, size + 1):
        got = fs.read(i, at, READ_PROBE)
        if len(got) > max(0, size - at):
            raise InvariantError(f"ino {ino}: read {len(got)} bytes at {at} past size {size}")
        budget[0] -= len(got)


def _xattrs(fs: Filesystem, ino: Ino) -> None:
    for name in fs.listxattr(ino):
        fs.getxattr(ino, name)


def exercise(fs: Filesystem, budget: Budget) -> int:
    """Every operation of the module docstring on every inode; the number of
    FsErrors seen (each one the image's fault, as it should be)."""
    errors = 0

    def on_error(path: bytes, err: FsError) -> None:
        nonlocal errors
        errors += 1

    def guarded(op: Callable[..., object], *args: object) -> None:
        nonlocal errors
        try:
            op(*args)
        except FsError:
            errors += 1

    read_left = [TOTAL_READ]
    guarded(fs.describe)
    guarded(fs.statfs)
    guarded(lambda: list(fs.fsck_extra()))
    for item in walk(fs, on_error=on_error):
        budget.check(f"walk at {item.path!r}")
        ino, attr = item.ino, item.attr
        guarded(_xattrs, fs, ino)
        guarded(fs.describe_inode, ino)
        guarded(fs.stored_bytes, ino)
        if attr.is_reg:
            guarded(read_file, fs, ino, attr.size, read_left)
            guarded(fs.xip_pages, ino)
        elif attr.is_lnk:
            guarded(fs.readlink, ino)
        elif attr.is_dir:
            guarded(fs.lookup, ino, b"no-such-name")
        if item.path:
            guarded(fs.lookup, item.parent, item.path.rsplit(b"/", 1)[-1])
    fs.memory_stats()
    return errors


def check_image(path: Path) -> int:
    """Open the image at ``path``, :func:`exercise` it, close it; the
    invariants hold or InvariantError (or the reader's own non-FsError)
    says which did not.  Returns the number of FsErrors met."""
    budget = Budget(path.stat().st_size)
    try:
        fs = open_image(path, MemoryConfig(arena_bytes=ARENA))
    except FsError:
        return 1
    try:
        errors = exercise(fs, budget)
    finally:
        try:
            fs.close()
        except FsError as e:
            raise InvariantError(f"close() after the walk: {e}") from None
    budget.check("the whole image")
    return errors


class ImageTarget:
    """A format target: the input is an image (checksums fixed up)."""

    def __init__(self, workdir: Path) -> None:
        self.path = workdir / "input.img"

    def __call__(self, data: bytes) -> None:
        self.path.write_bytes(fix_checksums(data))
        check_image(self.path)


# -- the mkimage round trip ------------------------------------------------------------

EROFS_COMPRESSORS: Final = ("none", "lz4", "lz4hc", "zstd", "deflate", "lzma")
EROFS_FEATURES: Final = ("ztailpacking", "fragments", "dedupe", "noinline_data", "legacy-compress")
CRAMFS_FLAGS: Final = (("-z",), ("-x",), ("-X",), ("-X", "-X"), ("-N", "big"))
CRAMFS_FIELDS: Final = ("mode", "uid", "gid", "size", "target", "data_sha")


class Source:
    """Bytes of the input consumed in order: the tree and options it describes."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def int(self, below: int) -> int:
        if below <= 1:
            return 0
        need = (below.bit_length() + 7) // 8
        raw = self.data[self.pos : self.pos + need]
        self.pos += need
        return int.from_bytes(raw.ljust(need, b"\0"), "little") % below

    def bytes(self, n: int) -> bytes:
        raw = self.data[self.pos : self.pos + n]
        self.pos += len(raw)
        return raw

    def name(self) -> bytes:
        raw = self.bytes(1 + self.int(24))
        name = bytes(b for b in raw if b not in (0, 0x2F)) or b"n"
        return b"_" + name if name in (b".", b"..") else name

    def content(self) -> bytes:
        kind = self.int(4)
        size = self.int(1 << 17) if kind else self.int(70000)
        if kind == 0:  # zeros: holes, dedupe, fragments
            return bytes(size)
        seed = self.bytes(1 + self.int(64)) or b"x"
        if kind == 1:  # the input's own bytes, as they come
            return (seed * (size // len(seed) + 1))[:size]
        if kind == 2:  # incompressible
            return random.Random(seed).randbytes(min(size, 20000))
        return seed[: self.int(len(seed) + 1)]


def build_tree(src: Source, root: Path, *, fmt: str) -> None:
    """A source tree of up to 24 entries under ``root`` from ``src``: files,
    directories, symlinks, hard links and (EROFS) fifos, with modes, owners,
    times and (EROFS) user xattrs the input chooses."""
    dirs = [root]
    files: list[Path] = []
    made: list[tuple[Path, int, int, int]] = []
    for _ in range(src.int(25)):
        parent = dirs[src.int(len(dirs))]
        path = parent / os.fsdecode(src.name())
        if os.path.lexists(path):
            continue
        kind = src.int(6)
        if kind == 0:
            path.mkdir()
            dirs.append(path)
        elif kind == 1:
            os.symlink(os.fsdecode(src.name() * (1 + src.int(8))), path)
        elif kind == 2 and files:
            os.link(files[src.int(len(files))], path)
        elif kind == 3 and fmt == "erofs":
            os.mkfifo(path)
        else:
            path.write_bytes(src.content())
            files.append(path)
        if fmt == "erofs":
            os.lchown(path, src.int(70000), src.int(70000))
            if (path.is_file() or path.is_dir()) and not path.is_symlink() and src.int(4) == 0:
                os.setxattr(path, "user." + os.fsdecode(src.name()), src.bytes(src.int(100)))
        else:  # cramfs holds 16-bit uids and 8-bit gids
            os.lchown(path, src.int(1 << 16), src.int(1 << 8))
        if not path.is_symlink():
            base = 0o755 if path.is_dir() else 0o644
            made.append(
                (path, base ^ (src.int(0o10000) & 0o7077), src.int(1 << 32), src.int(10**9))
            )
    # modes and times last, children first: creating an entry touches its parent
    for path, mode, sec, ns in reversed(made):
        os.chmod(path, mode)
        os.utime(path, ns=(sec * 10**9 + ns, sec * 10**9 + ns))
    os.utime(root, ns=(0, 0))


def erofs_options(src: Source) -> list[str]:
    """A valid ``mkimage erofs`` command line chosen by ``src``."""
    z = EROFS_COMPRESSORS[src.int(len(EROFS_COMPRESSORS))]
    features = [f for f in EROFS_FEATURES if src.int(3) == 0]
    options: list[str] = []  # no -T: it would set every inode's mtime
    if z == "none":
        features = [f for f in features if f in ("noinline_data",)]
    else:
        options += ["-z", z]
        if "legacy-compress" not in features:
            options += ["-C", str(4096 << src.int(4))]
    if features:
        options += ["-E", ",".join(features)]
    if z == "none" and src.int(4) == 0:
        options += ["--chunksize", str(4096 << src.int(3))]
    return options


class MkimageTarget:
    """The round trip: a tree from the input, an image of it, read back equal."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def __call__(self, data: bytes) -> None:
        import nommufs
        from mkimage.errors import BuildError
        from tests.trees import DEFAULT_FIELDS, diff_trees, snapshot, snapshot_fs

        src = Source(data)
        fmt = "erofs" if src.int(2) == 0 else "cramfs"
        root = self.workdir / "src"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        build_tree(src, root, fmt=fmt)
        out = self.workdir / f"out.{fmt}"
        if fmt == "erofs":
            flags = erofs_options(src)
        else:
            flags = list(CRAMFS_FLAGS[src.int(len(CRAMFS_FLAGS))]) if src.int(2) else []
        try:
            nommufs.build_image(root, out, *flags, format=fmt)  # type: ignore[arg-type]
        except BuildError as e:
            if "xattr" in str(e):  # what EROFS cannot hold, said by name
                return
            raise InvariantError(f"mkimage {fmt} {flags}: {e}") from None
        fields = DEFAULT_FIELDS if fmt == "erofs" else CRAMFS_FIELDS
        want = snapshot(root)
        with open_image(out, MemoryConfig(arena_bytes=16 << 20)) as fs:
            got = snapshot_fs(fs)
        problems = diff_trees(want, got, fields=fields)
        if problems:
            raise InvariantError(f"mkimage {fmt} {flags}: " + "; ".join(problems[:5]))
        check_image(out)


TARGETS: Final[dict[str, Callable[[Path], Callable[[bytes], None]]]] = {
    "erofs": ImageTarget,
    "cramfs": ImageTarget,
    "mkimage": MkimageTarget,
}
