"""``nommufs mkimage erofs [options] OUT SRC`` with mkfs.erofs spellings.

Choices where mkfs.erofs versions or kernels differ:

* ``-b`` above the page size (4096 here) is built with a warning: the image
  is valid and nommufs reads it, but this kernel cannot mount it.
* ``-T EPOCH`` sets the build time *and* every inode's mtime (mkfs.erofs
  ``-T``); with ``--mkfs-time`` only the build time.  SOURCE_DATE_EPOCH sets
  the build time only.  With either, the UUID (unless ``-U``) is derived from
  the tree and the options, so two builds are byte-identical; otherwise the
  build time is now and the UUID random, as mkfs.erofs does.
* Compact inodes are used only where the mtime equals the build time (all
  kernels then agree); ``-E force-inode-compact`` stores whole seconds
  relative to it, which kernels before 6.15 do not read.
* ``-E dedupe`` shares whole pclusters only, so it needs no feature bit;
  ``-E fragments`` keeps tails in a compressed packed inode (kernel 6.1+).
* Without ``-z``, files with all-zero blocks are stored chunk-based with
  holes (kernel 5.15+).
* ``--max-extent-bytes`` defaults to 1 MiB (mkfs.erofs: unbounded): one
  extent is decoded whole, so this bounds the memory one read needs.
* ``-x`` defaults to 1 (share an xattr found on two inodes; mkfs.erofs: 2).
* ``-z A:B`` writes the configuration of every algorithm and compresses with
  the first (mkfs.erofs picks another per file with ``--compress-hints``).
* ``-E 48bit`` (kernel 6.15+): 48-bit block addresses and nids, NLINK_1 and
  relative mtimes in compact inodes; compressed files keep lcluster indexes
  (mkfs.erofs 1.9 writes encoded extents there).  ``-E dot-omitted`` implies it.
* What mkfs.erofs 1.9.3 has and this does not is listed at the end of
  ``--help`` (:data:`NOT_IMPLEMENTED`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Final

from fusefs.erofs.format import Z_EROFS_PCLUSTER_MAX_SIZE
from mkimage.erofs.compress import (
    ALGORITHMS,
    MAX_EXTENT_BYTES,
    MAX_EXTENT_BYTES_LIMIT,
    parse_codecs,
)
from mkimage.erofs.options import XATTR_TOLERANCE_DEFAULT
from mkimage.erofs.writer import EXTENDED_OPTIONS, ErofsOptions, build_erofs
from mkimage.errors import BuildError
from mkimage.tree import ScanOptions, atomic_output, scan

NAME: Final = "erofs"
HELP: Final = "build an EROFS image the Linux kernel mounts"
KERNEL_MAX_BLOCK: Final = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
PROGRESS_MIN_FILES: Final = 2000


NOT_IMPLEMENTED: Final = (
    "-m (metadata compression)", "--zD", "--MZ", "--blobdev", "-E fragdedupe",
    "--incremental", "--tar=i", "--ovlfs-strip", "--aufs", "--file-contexts", "--sort",
    "--dsunit", "--uid-offset/--gid-offset", "--hard-dereference", "--compress-hints",
)  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = (
        "Not implemented (mkfs.erofs 1.9.3 has them): " + ", ".join(NOT_IMPLEMENTED) + ". "
        "-E 48bit keeps lcluster indexes where mkfs.erofs writes encoded extents."
    )
    parser.add_argument("out", metavar="OUT", help="image file to write (replaced atomically)")
    parser.add_argument("src", metavar="SRC", help="source directory (or tar file with --tar)")
    parser.add_argument(
        "-z",
        dest="compress",
        default="none",
        metavar="ALG[,level=N][,dictsize=N][:ALG...]",
        help=f"compressor: none, {', '.join(ALGORITHMS)} (default: none); ALG,N is ALG,level=N;"
        " dictsize= for lzma, deflate, zstd; alternatives after ':' get their configuration"
        " written, the first compresses",
    )
    parser.add_argument(
        "-C", dest="pcluster", type=int, metavar="BYTES",
        help="physical cluster size: power of two, block size..1 MiB (default: block size)",
    )  # fmt: skip
    parser.add_argument(
        "-b", dest="block_size", type=int, default=4096, metavar="BLOCKSIZE",
        help="block size: power of two, 512..65536 (default 4096; the kernel mounts "
        "block sizes up to its page size)",
    )  # fmt: skip
    parser.add_argument(
        "-E", dest="extended", action="append", default=[], metavar="OPT[,OPT...]",
        help=f"extended options: {', '.join(EXTENDED_OPTIONS)}",
    )  # fmt: skip
    parser.add_argument(
        "--max-extent-bytes", type=int, default=MAX_EXTENT_BYTES, metavar="BYTES",
        help=f"decoded size of one compressed extent at most (default {MAX_EXTENT_BYTES >> 20}"
        " MiB; mkfs.erofs: unbounded): reading any byte of an extent decodes all of it, so"
        " a reader needs this much memory at once, contiguous without an MMU",
    )  # fmt: skip
    parser.add_argument(
        "--chunksize", type=int, default=0, metavar="BYTES",
        help="store uncompressed files chunk-based with chunks of BYTES (a power of two"
        " >= the block size; all-zero chunks are holes)",
    )  # fmt: skip
    parser.add_argument(
        "-x", dest="xattr_tolerance", type=int, default=XATTR_TOLERANCE_DEFAULT, metavar="N",
        help=f"share an xattr found on more than N inodes (default {XATTR_TOLERANCE_DEFAULT});"
        " N < 0 stores no xattrs",
    )  # fmt: skip
    parser.add_argument(
        "--offset", type=int, default=0, metavar="BYTES",
        help="write the image BYTES into OUT (zeros before it)",
    )  # fmt: skip
    parser.add_argument(
        "-T", dest="epoch", type=int, metavar="EPOCH",
        help="build time and every file's mtime (seconds since 1970); "
        "default $SOURCE_DATE_EPOCH (build time only) or now",
    )  # fmt: skip
    parser.add_argument(
        "--mkfs-time", action="store_true",
        help="with -T: set only the build time, keep the files' own mtimes",
    )  # fmt: skip
    parser.add_argument("-U", dest="uuid", metavar="UUID", help="volume UUID")
    parser.add_argument("-L", dest="label", metavar="LABEL", help="volume label (<= 15 bytes)")
    parser.add_argument("--all-root", action="store_true", help="make every file owned by root")
    parser.add_argument("--force-uid", type=int, metavar="UID", help="set every file's uid")
    parser.add_argument("--force-gid", type=int, metavar="GID", help="set every file's gid")
    parser.add_argument(
        "--exclude-path", action="append", default=[], metavar="PATH",
        help="leave out PATH (relative to SRC; repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--exclude-regex", action="append", default=[], metavar="REGEX",
        help="leave out paths (relative to SRC) matching REGEX (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--device-table", metavar="FILE",
        help="mkcramfs/makedevs table: name type mode uid gid major minor start inc count",
    )  # fmt: skip
    # "--tar=f" is its own option string: argparse matches it whole before
    # splitting at "=", so both mkfs.erofs spellings work and --tar OUT SRC too
    parser.add_argument(
        "--tar", "--tar=f", dest="tar", action="store_true",
        help="SRC is a tar file (mkfs.erofs --tar=f); SRC - reads it from stdin",
    )  # fmt: skip
    parser.add_argument(
        "--tar=i", "--tar=headerball", dest="tar_index", action="store_true",
        help=argparse.SUPPRESS,
    )  # fmt: skip
    parser.add_argument(
        "-j", "--workers", type=int, default=0, metavar="N",
        help="compress in N worker processes (default: one per CPU)",
    )  # fmt: skip
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing on success")


def _power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def options_from_args(args: argparse.Namespace) -> tuple[ScanOptions, ErofsOptions]:
    """Validate the command line into scan and build options (BuildError on a bad one)."""
    if args.tar_index:
        raise BuildError("--tar=i/--tar=headerball: index-only tar images are not supported"
                         " (--tar=f stores the data)")  # fmt: skip
    if args.src == "-" and not args.tar:
        raise BuildError("SRC -: standard input is read as a tar file only (--tar)")
    codecs = parse_codecs(args.compress)
    codec = codecs[0] if codecs else None
    bs = args.block_size
    if not _power_of_two(bs) or not 512 <= bs <= 65536:
        raise BuildError(f"-b {bs}: block size must be a power of two in 512..65536")
    if bs > KERNEL_MAX_BLOCK:
        print(
            f"mkimage erofs: warning: -b {bs}: this kernel mounts block sizes up to "
            f"{KERNEL_MAX_BLOCK} (its page size) only",
            file=sys.stderr,
        )
    # mkfs.erofs: one block per pcluster unless -C says more
    pcluster = args.pcluster if args.pcluster is not None else bs
    if not _power_of_two(pcluster) or not bs <= pcluster <= Z_EROFS_PCLUSTER_MAX_SIZE:
        raise BuildError(
            f"-C {pcluster}: must be a power of two in {bs} (the block size)"
            f"..{Z_EROFS_PCLUSTER_MAX_SIZE}"
        )
    # kernel: an lz4 cfg record's max_pclusterblks may not exceed 1 MiB / PAGE_SIZE
    lz4_max = Z_EROFS_PCLUSTER_MAX_SIZE // KERNEL_MAX_BLOCK
    if codec is not None and codec.algorithm == 0 and pcluster // bs > lz4_max:
        raise BuildError(
            f"-C {pcluster}: an lz4 pcluster may span at most {lz4_max} blocks "
            f"({lz4_max * bs} bytes with -b {bs}); the kernel refuses more"
        )
    extended: set[str] = set()
    for group in args.extended:
        for opt in group.split(","):
            opt = opt.strip()
            if not opt:
                continue
            if opt not in EXTENDED_OPTIONS:
                raise BuildError(f"-E {opt}: unknown extended option")
            extended.add(opt)
    if {"force-inode-compact", "force-inode-extended"} <= extended:
        raise BuildError("-E force-inode-compact and force-inode-extended exclude each other")
    needs_z = {"fragments", "all-fragments", "ztailpacking", "dedupe", "legacy-compress"}
    if codec is None and extended & needs_z:
        raise BuildError(f"-E {', '.join(sorted(extended & needs_z))}: only with a compressor (-z)")
    if "legacy-compress" in extended and len(codecs) > 1:
        raise BuildError("-E legacy-compress: one algorithm only (no configuration records)")
    if not bs <= args.max_extent_bytes <= MAX_EXTENT_BYTES_LIMIT:
        raise BuildError(
            f"--max-extent-bytes {args.max_extent_bytes}: must be in {bs} (the block size)"
            f"..{MAX_EXTENT_BYTES_LIMIT} (the kernel decodes no longer extent)"
        )
    chunk = args.chunksize
    if chunk and (not _power_of_two(chunk) or not bs <= chunk <= bs << 31):
        raise BuildError(f"--chunksize {chunk}: must be a power of two, at least {bs}")
    if args.offset < 0:
        raise BuildError(f"--offset {args.offset}: negative")
    if "legacy-compress" in extended and codec is not None and pcluster > bs:
        raise BuildError("-E legacy-compress: no big pclusters (-C must be the block size)")
    fixed = True
    all_mtimes = None
    if args.epoch is not None:
        build_time = args.epoch
        if not args.mkfs_time:
            all_mtimes = args.epoch
    elif os.environ.get("SOURCE_DATE_EPOCH"):
        try:
            build_time = int(os.environ["SOURCE_DATE_EPOCH"])
        except ValueError:
            raise BuildError("SOURCE_DATE_EPOCH is not a number") from None
    else:
        build_time = int(time.time())
        fixed = False
    if not 0 <= build_time < 1 << 63:
        raise BuildError(f"-T {build_time}: out of range")
    uuid = None
    if args.uuid:
        import uuid as uuidlib  # only here: with platform, 6 ms of every build's start-up

        try:
            uuid = uuidlib.UUID(args.uuid).bytes
        except ValueError:
            raise BuildError(f"-U {args.uuid}: not a UUID") from None
    label = os.fsencode(args.label or "")
    if len(label) > 15:
        raise BuildError(f"-L {args.label}: longer than 15 bytes")
    for flag, value in (("--force-uid", args.force_uid), ("--force-gid", args.force_gid)):
        if value is not None and not 0 <= value <= 0xFFFFFFFF:
            raise BuildError(f"{flag} {value}: out of range")
    scan_opts = ScanOptions(
        exclude_paths=tuple(args.exclude_path),
        exclude_regex=tuple(args.exclude_regex),
        all_root=args.all_root,
        force_uid=args.force_uid,
        force_gid=args.force_gid,
        device_table=args.device_table,
        tar=args.tar,
        new_node_mtime_ns=build_time * 1_000_000_000,
    )
    opts = ErofsOptions(
        codec=codec,
        alt_codecs=codecs[1:],
        pcluster_size=pcluster,
        max_extent_bytes=args.max_extent_bytes,
        chunk_size=chunk,
        xattr_tolerance=args.xattr_tolerance,
        offset=args.offset,
        block_size=bs,
        extended=frozenset(extended),
        build_time=build_time,
        fixed_time=fixed,
        all_mtimes=all_mtimes,
        uuid=uuid,
        label=label,
        workers=max(args.workers, 0),
        durable=True,  # atomic_output fsyncs OUT
    )
    return scan_opts, opts


def _progress_bar() -> Callable[[int, int], None]:
    """A bar on stderr, redrawn only when it grows."""
    width = 40
    shown = [-1]

    def show(done: int, total: int) -> None:
        filled = width * done // max(total, 1)
        if filled == shown[0] and done != total:
            return
        shown[0] = filled
        end = "\n" if done == total else ""
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} files{end}")
        sys.stderr.flush()

    return show


@contextlib.contextmanager
def _without_cyclic_gc() -> Iterator[None]:
    """A build makes a few objects per source file that live until it ends:
    the cyclic collector would only walk them again and again."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def run(args: argparse.Namespace) -> int:
    scan_opts, opts = options_from_args(args)
    with _without_cyclic_gc(), scan(args.src, scan_opts) as tree:
        if not args.quiet and sys.stderr.isatty():
            nfiles = sum(1 for n in tree.walk() if n.is_reg)
            if nfiles >= PROGRESS_MIN_FILES:
                opts = dataclasses.replace(opts, progress=_progress_bar())
        with atomic_output(args.out) as f:
            report = build_erofs(tree, opts, f)
    if not args.quiet:
        size = report.blocks * report.block_size
        print(
            f"{args.out}: {size} bytes, {report.blocks} blocks of {report.block_size}, "
            f"{report.inodes} inodes, {report.compressed_files} compressed files"
        )
    return 0
