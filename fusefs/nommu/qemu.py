"""Boot a nommu kernel under qemu-system-riscv64 with our init, and a disk or a flash.

* Disk: the image read-only on virtio-blk (``/dev/vda`` in the guest).
* Flash: a cramfs image on qemu virt's CFI flash, for XIP. Two quirks of qemu
  7.2's virt machine: with a pflash drive present the CPU starts in flash, so
  the first bytes of the flash jump to the kernel at 0x80000000 (the image
  must start with cramfs's 512-byte pad, which the kernel skips); and virt
  declares two flash banks that the kernel concatenates into one MTD device,
  which cannot be mapped directly -- so the device tree is dumped, cut to one
  bank with dtc, and passed back with ``-dtb``.

Every run is bounded by a timeout; ``panic=-1`` with ``-no-reboot`` makes a
panic end qemu at once.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from fusefs.nommu import console
from fusefs.nommu.common import NommuKernelError
from fusefs.nommu.kernel import Kernel

QEMU: Final = "qemu-system-riscv64"
DRAM_BASE: Final = 0x8000_0000
FLASH_BANK_BYTES: Final = 32 << 20  # qemu virt: each of its two pflash banks
CRAMFS_PAD: Final = 512
# addi t0, zero, 1; slli t0, t0, 31; jr t0  -- to DRAM_BASE (lui would sign-extend)
_JUMP_TO_DRAM: Final = struct.pack("<3I", 0x00100293, 0x01F29293, 0x00028067)


@dataclass(frozen=True)
class Boot:
    """One qemu run: kernel, init, RAM and what to mount."""

    kernel: Kernel  # with our init built in
    memory_kib: int
    fstype: str  # erofs | cramfs; "" to boot and power off (the kernel's own floor)
    disk: Path | None = None  # virtio-blk
    flash: Path | None = None  # CFI flash (cramfs with its 512-byte pad)
    read_all: bool = True
    exec: tuple[str, ...] = ()  # ELF programs inside the image to map as a loader would
    timeout: float = 60.0
    show: tuple[str, ...] = ()  # guest files (sysfs counters) to print before unmounting
    extra_append: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.fstype and (self.disk is None) == (self.flash is None):
            raise ValueError("a boot mounts either a disk or a flash")

    @property
    def device(self) -> str:
        return "/dev/vda" if self.disk is not None else "mtd0"

    def append(self) -> str:
        words = ["console=ttyS0", "rdinit=/init", "panic=-1", "loglevel=5", *self.extra_append]
        if self.fstype:
            words += [f"NOMMUFS_FS={self.fstype}", f"NOMMUFS_DEV={self.device}",
                      f"NOMMUFS_READ={int(self.read_all)}"]
        if self.exec:
            words.append("NOMMUFS_EXEC=" + ":".join(self.exec))
        if self.show:
            words.append("NOMMUFS_SHOW=" + ":".join(self.show))
        return " ".join(words)


def _qemu() -> str:
    exe = shutil.which(QEMU)
    if exe is None:
        raise NommuKernelError(f"{QEMU}: not installed (qemu-system-misc)")
    return exe


def flash_image(cramfs: Path, out: Path) -> None:
    """`cramfs` as one flash bank: jump to DRAM over its pad, padded to the bank's size."""
    data = cramfs.read_bytes()
    if len(data) > FLASH_BANK_BYTES:
        raise NommuKernelError(f"{cramfs}: {len(data)} bytes do not fit a 32 MiB flash bank")
    if data[:CRAMFS_PAD].strip(b"\0"):
        raise NommuKernelError(
            f"{cramfs}: no 512-byte pad before the superblock (build it with mkimage cramfs -p)")
    flash = bytearray(FLASH_BANK_BYTES)
    flash[: len(data)] = data
    flash[: len(_JUMP_TO_DRAM)] = _JUMP_TO_DRAM
    out.write_bytes(flash)


def _one_bank_dtb(base_cmd: list[str], workdir: Path) -> Path:
    """qemu's own device tree for this machine, with the second flash bank cut off."""
    dumped, dts, dtb = workdir / "virt.dtb", workdir / "virt.dts", workdir / "one-bank.dtb"
    _check([*base_cmd, "-machine", f"dumpdtb={dumped}"], "qemu dumpdtb")
    _check(["dtc", "-q", "-I", "dtb", "-O", "dts", "-o", str(dts), str(dumped)], "dtc")
    text = dts.read_text()
    bank = f"0x{FLASH_BANK_BYTES:x}"
    two = re.compile(r"(flash@20000000 \{[^}]*reg = <0x00 0x20000000 0x00 " + bank +
                     r") 0x00 0x22000000 0x00 " + bank + ">")
    text, n = two.subn(r"\1>", text)
    if n != 1:
        raise NommuKernelError(f"{dts}: no two-bank flash@20000000 node to cut")
    dts.write_text(text)
    _check(["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(dtb), str(dts)], "dtc")
    return dtb


def _check(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NommuKernelError(f"{what}: exited {done.returncode}: {done.stderr.strip()}")


def run(boot: Boot) -> console.Run:
    """Boot, let init do its steps, and parse the console."""
    with tempfile.TemporaryDirectory(prefix="nommufs-qemu-") as tmpdir:
        work = Path(tmpdir)
        cmd = [_qemu(), "-M", "virt", "-bios", "none", "-nographic", "-no-reboot",
               "-m", f"{boot.memory_kib}K", "-kernel", str(boot.kernel.image),
               "-append", boot.append()]
        if boot.disk is not None:
            cmd += ["-drive", f"file={boot.disk},format=raw,if=none,id=d,readonly=on",
                    "-device", "virtio-blk-device,drive=d"]
        elif boot.flash is not None:
            flash = work / "flash.bin"
            flash_image(boot.flash, flash)
            cmd += ["-drive", f"file={flash},format=raw,if=pflash,unit=0,readonly=on"]
            cmd += ["-dtb", str(_one_bank_dtb(cmd, work))]
        start = time.monotonic()
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=boot.timeout, check=False)
            out, timed_out = done.stdout, False
        except subprocess.TimeoutExpired as e:
            out, timed_out = e.stdout or b"", True
        seconds = time.monotonic() - start
    return console.parse(out.decode(errors="replace"), memory_kib=boot.memory_kib,
                         seconds=seconds, timed_out=timed_out)
