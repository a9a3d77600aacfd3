"""The oracle's cases: one tree, the images built from it, and how each boots.

The tree is small (about 2.2 MB, 8 files): two host programs (``ls`` and
``cat``) and the host's libc (dereferenced, as in scripts/demo), our own riscv
init as a third program, and text and random files generated from a fixed seed. Programs
come from the host because a real loader's layout (four PT_LOAD segments,
read-only data, page-aligned offsets) is what the comparison is about; the
generated files make the rest the same on every machine.

Each `Case` is an image, a kernel variant, a medium (virtio-blk or CFI flash)
and the combination of `nommufs budget` that stands for that kernel.
"""

from __future__ import annotations

import os
import random
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import nommufs
from fusefs.elf import is_elf_program
from fusefs.nommu.common import NommuKernelError
from fusefs.nommu.kernel import ZIP_N, ZIP_Y, ZIP_Y_BOUNCE, Variant
from fusefs.vfs import MmMode, Strategy

HOST_PROGRAMS: Final = ("ls", "cat")


def fnv64(data: bytes) -> int:
    """FNV-1a 64, as nommu/init.c hashes what it reads."""
    h = 14695981039346656037
    for b in data:
        h = ((h ^ b) * 1099511628211) & 0xFFFF_FFFF_FFFF_FFFF
    return h


def build_tree(root: Path, init: Path, *, seed: int = 14) -> Path:
    """The oracle's source tree under `root` (which must not exist)."""
    rng = random.Random(seed)
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "share" / "doc").mkdir(parents=True)
    for prog in HOST_PROGRAMS:
        found = shutil.which(prog, path="/usr/bin:/bin")
        if found is None:
            raise NommuKernelError(f"{prog}: not found on this machine (coreutils)")
        shutil.copyfile(os.path.realpath(found), root / "bin" / prog)
        os.chmod(root / "bin" / prog, 0o755)
    # a large shared object: without XIP its text is one ~1.4 MB private copy
    # (a high-order allocation), which is what sets the smallest RAM
    libc = Path("/lib") / f"{os.uname().machine}-linux-gnu" / "libc.so.6"
    if not libc.is_file():
        raise NommuKernelError(f"{libc}: not found on this machine (libc6)")
    (root / "lib").mkdir()
    shutil.copyfile(os.path.realpath(libc), root / "lib" / "libc.so.6")
    os.chmod(root / "lib" / "libc.so.6", 0o755)
    shutil.copyfile(init, root / "bin" / "probe")
    os.chmod(root / "bin" / "probe", 0o755)
    words = [b"erofs", b"cramfs", b"nommu", b"vmap", b"folio", b"pcluster", b"xip", b"\n"]

    def text(n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            out += rng.choice(words) + b" "
        return bytes(out[:n])

    (root / "etc" / "hostname").write_bytes(b"nommu\n")
    (root / "etc" / "services").write_bytes(text(12_345))
    (root / "share" / "doc" / "notes.txt").write_bytes(text(40_000))
    # exactly two pages: the size where the kernel's cramfs XIP read quirk bites
    (root / "share" / "doc" / "random.bin").write_bytes(rng.randbytes(8192))
    return root


def tree_files(root: Path) -> dict[str, tuple[int, int]]:
    """Every regular file of the tree: ``/path -> (size, fnv64)``."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            data = p.read_bytes()
            out["/" + str(p.relative_to(root))] = (len(data), fnv64(data))
    return out


def programs(root: Path) -> tuple[str, ...]:
    """The ELF programs of the tree, as budget's exec workload chooses them."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in sorted(files):
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111 and st.st_size >= 64:
                with p.open("rb") as f:
                    if is_elf_program(f.read(4096)):
                        found.append("/" + str(p.relative_to(root)))
    return tuple(sorted(found))


Medium = Literal["disk", "flash"]


@dataclass(frozen=True)
class Case:
    """An image, the kernel that boots it, and budget's combination for that kernel."""

    name: str
    fmt: Literal["erofs", "cramfs"]
    flags: tuple[str, ...]  # nommufs mkimage FORMAT flags
    variant: Variant
    medium: Medium
    mm: MmMode
    decompress: Strategy | None  # None: cramfs (one way to decode)
    about: str
    modelled: bool = True  # False: budget has no combination for this kernel
    counters: tuple[str, ...] = ()  # the kernel's sysfs counters to read after the workload

    def build(self, tree: Path, out_dir: Path) -> Path:
        out = out_dir / f"{self.name}.img"
        if not out.exists():
            nommufs.build_image(tree, out, *self.flags, format=self.fmt)
        return out


_REPRO: Final = ("-T", "0", "--all-root")
#: what nommu/vmap-bounce.patch counts (module parameters of mm/nommu.c)
VMAP_COUNTERS: Final = tuple(
    f"/sys/module/nommu/parameters/vmap_{c}"
    for c in ("calls", "in_place", "bounced", "bounce_bytes", "failures"))
CASES: Final = {
    c.name: c
    for c in (
        Case("erofs-plain", "erofs", _REPRO, ZIP_N, "disk", "nommu-contig", "contig-folio",
             "EROFS uncompressed, kernel without EROFS_FS_ZIP; in the model no strategy "
             "reserves or decodes anything for an uncompressed image"),
        Case("erofs-plain-zip", "erofs", _REPRO, ZIP_Y, "disk", "nommu-contig", "vmap",
             "the same image, kernel with EROFS_FS_ZIP: the stock kernel's vmap path"),
        Case("erofs-lz4", "erofs", ("-z", "lz4hc", "-C", "16384", *_REPRO), ZIP_N, "disk",
             "nommu-contig", None,
             "EROFS lz4hc 16K pclusters, kernel without EROFS_FS_ZIP (the model has no "
             "kernel without decompression: not compared)", modelled=False),
        Case("erofs-lz4-zip", "erofs", ("-z", "lz4hc", "-C", "16384", *_REPRO), ZIP_Y, "disk",
             "nommu-contig", "vmap", "EROFS lz4hc 16K pclusters, kernel with EROFS_FS_ZIP"),
        Case("erofs-lz4-bounce", "erofs", ("-z", "lz4hc", "-C", "16384", *_REPRO), ZIP_Y_BOUNCE,
             "disk", "nommu-bounce", "vmap",
             "EROFS lz4hc 16K pclusters, kernel with EROFS_FS_ZIP and nommu/vmap-bounce.patch "
             "(contiguous pages in place, scattered ones bounced): the model's nommu-bounce",
             counters=VMAP_COUNTERS),
        Case("cramfs", "cramfs", ("-q",), ZIP_N, "disk", "nommu-contig", None,
             "cramfs (zlib blocks) over virtio-blk"),
        Case("cramfs-xip", "cramfs", ("-q", "-p", "-X", "--xip", "bin/*", "--xip", "lib/*",
                                       "--xip", "*.bin"),
             ZIP_N, "flash",
             "nommu-contig", None,
             "cramfs with the ELF programs and random.bin XIP, on CFI flash"),
    )
}
