"""Build riscv64 no-MMU kernels from Debian's linux-source-6.12, once, into a cache.

A kernel is named by its `Variant` (config fragments and patches from the
repository's ``nommu/`` directory) and carries our init built in (an
initramfs inside the Image: no initrd for qemu to place, which at small
``-m`` would land on the kernel or the device tree). Its cache entry is
``<cache>/kernel/<source version>-<hash of fragments, patches and init>/``
holding ``Image``, ``config`` and ``System.map``. An entry appears only by
``rename`` of a finished temporary directory, so an interrupted build leaves
no half entry; builds take one lock (``<cache>/kernel/.lock``) so that
parallel runs wait for each other instead of building the same tree twice.
The source is unpacked once per version and all variants share one
out-of-tree build directory, so a second variant is an incremental build
(15-70 s, not ~5 min).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fusefs.nommu import initramfs
from fusefs.nommu.common import (
    CROSS_COMPILE,
    NOMMU_DIR,
    NommuKernelError,
    cache_root,
    locked,
    staging,
)
from fusefs.nommu.init import build_init

log = logging.getLogger(__name__)

SOURCE_PACKAGE: Final = "linux-source-6.12"
DEFCONFIG: Final = "arch/riscv/configs/nommu_virt_defconfig"

#: Debian packages a build and a run need (package -> what for).
PACKAGES: Final = {
    SOURCE_PACKAGE: "the kernel source",
    "gcc-riscv64-linux-gnu": "cross compiler for the kernel and init",
    "qemu-system-misc": "qemu-system-riscv64",
    "device-tree-compiler": "dtc: the one-bank flash device tree",
    "flex": "kconfig", "bison": "kconfig", "bc": "kernel build",
    "libssl-dev": "kernel build tools", "libelf-dev": "kernel build tools",
    "cpio": "kernel build (initramfs tools)", "make": "kernel build",
    "patch": "nommu/*.patch",
    "xz-utils": "unpacking the source",
}


@dataclass(frozen=True)
class Variant:
    """One kernel configuration: fragments merged in order over the defconfig."""

    name: str
    fragments: tuple[str, ...]
    patches: tuple[str, ...] = ()

    def inputs(self) -> list[Path]:
        return [NOMMU_DIR / f for f in (*self.fragments, *self.patches)]


#: EROFS without decompression, and with it (every EROFS mount then BUGs in vmap);
#: and with it on a kernel whose nommu vmap() uses contiguous pages in place and
#: bounces scattered ones (nommu/vmap-bounce.patch).
ZIP_N: Final = Variant("zip-n", ("config", "config-zip-n"))
ZIP_Y: Final = Variant("zip-y", ("config", "config-zip-y"))
ZIP_Y_BOUNCE: Final = Variant("zip-y-bounce", ("config", "config-zip-y"), ("vmap-bounce.patch",))
VARIANTS: Final = {v.name: v for v in (ZIP_N, ZIP_Y, ZIP_Y_BOUNCE)}


def _run(cmd: Sequence[str | os.PathLike[str]], what: str, **kw: object) -> str:
    try:
        done = subprocess.run(  # type: ignore[call-overload]
            [os.fspath(c) for c in cmd], capture_output=True, text=True, check=False, **kw)
    except FileNotFoundError as e:
        raise NommuKernelError(f"{what}: {e.filename}: not installed") from None
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise NommuKernelError(f"{what}: {cmd[0]} exited {done.returncode}\n{tail}")
    return str(done.stdout)


def missing_packages(packages: Sequence[str] = tuple(PACKAGES)) -> list[str]:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Status}\n", *packages],
        capture_output=True, text=True, check=False).stdout
    have = {line.split()[0] for line in out.splitlines() if line.endswith(" installed")
            and "ok installed" in line}
    return [p for p in packages if p not in have]


def ensure_packages(packages: Sequence[str] = tuple(PACKAGES)) -> None:
    """apt-get install what is missing (``apt-get update`` first when apt does not know it)."""
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise NommuKernelError(
            f"missing Debian packages: {' '.join(missing)} (as root: apt-get install "
            f"{' '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    known = subprocess.run(["apt-cache", "show", *missing], capture_output=True,
                           check=False).returncode == 0
    if not known:
        _run(["apt-get", "update", "-qq"], "apt-get update", env=env)
    log.info("installing %s", " ".join(missing))
    _run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
         "apt-get install", env=env)


def source_version() -> str:
    out = _run(["dpkg-query", "-W", "-f", "${Version}", SOURCE_PACKAGE],
               f"dpkg-query {SOURCE_PACKAGE}")
    return out.strip()


def source_tarball() -> Path:
    path = Path("/usr/src") / f"{SOURCE_PACKAGE}.tar.xz"
    if not path.is_file():
        raise NommuKernelError(f"{path}: missing (is {SOURCE_PACKAGE} installed?)")
    return path


def _sweep_stale(directory: Path) -> None:
    """Remove temporary directories an interrupted build left (we hold the lock)."""
    for p in directory.glob(".*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


@dataclass(frozen=True)
class Kernel:
    """A built kernel in the cache."""

    variant: Variant
    directory: Path

    @property
    def image(self) -> Path:
        return self.directory / "Image"

    @property
    def config(self) -> Path:
        return self.directory / "config"

    def symbol(self, name: str) -> int:
        """Address of `name` in System.map (e.g. ``_end``, to know where the kernel ends)."""
        for line in (self.directory / "System.map").read_text().splitlines():
            addr, _kind, sym = line.split(maxsplit=2)
            if sym == name:
                return int(addr, 16)
        raise NommuKernelError(f"{self.directory / 'System.map'}: no symbol {name}")


class Builder:
    """Builds and caches kernels under `root` (default `cache_root()`)."""

    def __init__(self, root: Path | None = None, jobs: int | None = None,
                 niceness: int = 5) -> None:
        self.root = root or cache_root()
        self.jobs = jobs or os.cpu_count() or 1
        self.niceness = niceness
        self._version: str | None = None
        self._lock_fd: int | None = None  # the build lock, passed on to make

    @property
    def version(self) -> str:
        if self._version is None:
            self._version = source_version()
        return self._version

    def key(self, variant: Variant) -> str:
        """``<source version>-<hash>`` of everything the kernel is built from."""
        h = hashlib.sha256()
        h.update(self.version.encode())
        for path in variant.inputs():
            try:
                h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
            except OSError as e:
                raise NommuKernelError(f"{path}: {e.strerror}") from None
        h.update(self._initramfs())
        return f"{self.version}-{h.hexdigest()[:12]}"

    def _initramfs(self) -> bytes:
        return initramfs.for_init(build_init(self.root).read_bytes())

    def cached(self, variant: Variant) -> Kernel | None:
        d = self.root / "kernel" / self.key(variant)
        return Kernel(variant, d) if (d / "Image").is_file() else None

    def get(self, variant: Variant) -> Kernel:
        """The cached kernel of `variant`, building it first if needed."""
        ensure_packages()
        hit = self.cached(variant)
        if hit is not None:
            return hit
        with locked(self.root / "kernel" / ".lock") as fd:
            hit = self.cached(variant)  # built while we waited
            if hit is not None:
                return hit
            _sweep_stale(self.root / "kernel")
            self._lock_fd = fd
            try:
                return self._build(variant)
            finally:
                self._lock_fd = None

    def _source(self) -> Path:
        """The unpacked source of this version (unpacked once, atomically)."""
        final = self.root / "src" / self.version
        if (final / "Makefile").is_file():
            return final
        _sweep_stale(final.parent)
        log.info("unpacking %s", source_tarball())
        start = time.monotonic()
        with staging(final) as tmp:
            _run(["tar", "-xf", source_tarball(), "-C", tmp, "--strip-components=1"],
                 f"unpacking {source_tarball()}")
        log.info("unpacked in %.0f s", time.monotonic() - start)
        return final

    def _make(self, src: Path, build: Path, *targets: str) -> None:
        cmd = ["nice", "-n", str(self.niceness), "make", "-C", str(src), f"O={build}",
               "ARCH=riscv", f"CROSS_COMPILE={CROSS_COMPILE}", f"-j{self.jobs}", *targets]
        logfile = build / "build.log"
        build.mkdir(parents=True, exist_ok=True)
        with logfile.open("a") as out:
            out.write(f"$ {' '.join(cmd)}\n")
            out.flush()
            # its own process group, so that an interrupt stops every sub-make
            # and compiler; and the lock, so that nobody builds here while any
            # of them still runs
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True,
                                    pass_fds=() if self._lock_fd is None else (self._lock_fd,))
            try:
                rc = proc.wait()
            except BaseException:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                raise
        if rc != 0:
            tail = "\n".join(logfile.read_text(errors="replace").splitlines()[-20:])
            raise NommuKernelError(f"make {' '.join(targets)} failed ({logfile}):\n{tail}")

    def _configure(self, src: Path, build: Path, variant: Variant) -> None:
        # the initramfs (our init) is built in: kbuild takes a .cpio file as it is
        cpio = build / "initramfs.cpio"
        data = self._initramfs()
        if not cpio.is_file() or cpio.read_bytes() != data:
            cpio.write_bytes(data)
        builtin = build / "config-initramfs"
        builtin.write_text(f'CONFIG_INITRAMFS_SOURCE="{cpio}"\n'
                           "CONFIG_INITRAMFS_COMPRESSION_NONE=y\n")
        fragments = [*(NOMMU_DIR / f for f in variant.fragments), builtin]
        shutil.copyfile(src / DEFCONFIG, build / ".config")
        _run([src / "scripts/kconfig/merge_config.sh", "-m", "-O", build, build / ".config",
              *fragments], "merge_config.sh", cwd=src)
        self._make(src, build, "olddefconfig")
        check_config(build / ".config", fragments)

    def _patch(self, src: Path, patches: Sequence[str]) -> None:
        """Bring the source to exactly `patches` applied (we hold the lock).

        Variants share one source and one build directory, so a patch is
        applied in place for its variant's build and taken out again for the
        next: an incremental build either way. What is applied is recorded
        (a copy of each patch under ``.nommufs-applied/``) before patch(1)
        runs, so a run interrupted in between is undone by the next.
        """
        applied_dir = src / ".nommufs-applied"
        applied_dir.mkdir(exist_ok=True)
        want = [(name, (NOMMU_DIR / name).read_bytes()) for name in patches]
        have = sorted(applied_dir.iterdir())
        if [(p.name.split("-", 1)[1], p.read_bytes()) for p in have] == want:
            return
        for p in reversed(have):
            self._apply_patch(src, p, reverse=True)
            p.unlink()
        for i, (name, data) in enumerate(want):
            record = applied_dir / f"{i:02d}-{name}"
            record.write_bytes(data)
            self._apply_patch(src, record, reverse=False)

    def _apply_patch(self, src: Path, patch: Path, *, reverse: bool) -> None:
        flags = ["-R"] if reverse else []
        dry = subprocess.run(["patch", "-p1", "-s", "-f", "--dry-run", *flags, "-i", str(patch)],
                             cwd=src, capture_output=True, text=True, check=False)
        if dry.returncode != 0:
            other = subprocess.run(["patch", "-p1", "-s", "-f", "--dry-run",
                                    *([] if reverse else ["-R"]), "-i", str(patch)],
                                   cwd=src, capture_output=True, check=False)
            if other.returncode == 0:  # already in the wanted state (interrupted before)
                return
            raise NommuKernelError(
                f"{patch}: does not apply to {src} ({dry.stdout.strip()}); remove {src} "
                "to unpack the source afresh")
        _run(["patch", "-p1", "-s", "-f", *flags, "-i", str(patch)], f"patch {patch.name}",
             cwd=src)

    def _build(self, variant: Variant) -> Kernel:
        src = self._source()
        self._patch(src, variant.patches)
        build = self.root / "build" / self.version
        final = self.root / "kernel" / self.key(variant)
        start = time.monotonic()
        log.info("building the %s kernel in %s (nice -n %d, -j%d)", variant.name, build,
                 self.niceness, self.jobs)
        build.mkdir(parents=True, exist_ok=True)
        self._configure(src, build, variant)
        self._make(src, build, "Image")
        with staging(final) as tmp:
            for name, dest in (("arch/riscv/boot/Image", "Image"), (".config", "config"),
                               ("System.map", "System.map")):
                shutil.copyfile(build / name, tmp / dest)
            (tmp / "build-seconds").write_text(f"{time.monotonic() - start:.0f}\n")
        log.info("the %s kernel built in %.0f s", variant.name, time.monotonic() - start)
        return Kernel(variant, final)


def check_config(config: Path, fragments: Sequence[Path]) -> None:
    """Every option a fragment sets has that value in the final `.config`.

    Kconfig drops an option silently when a dependency is missing; a kernel
    without, say, CRAMFS_MTD would then fail much later in a confusing way.
    """
    final = _options(config.read_text())
    wrong = []
    for frag in fragments:
        for name, want in _options(frag.read_text()).items():
            got = final.get(name, "n")
            if got != want:
                wrong.append(f"{name}={want} (got {got})")
    if wrong:
        raise NommuKernelError(f"{config}: kconfig did not take {', '.join(wrong)}")


def _options(text: str) -> dict[str, str]:
    opts: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            opts[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            opts[line[2:-len(" is not set")]] = "n"
    return opts
