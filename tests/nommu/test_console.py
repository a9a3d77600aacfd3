"""The runner's own parts, without qemu: the console parser, the initramfs, the flash."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fusefs.nommu import console, initramfs, qemu
from fusefs.nommu.common import NommuKernelError

# What the kernel printed in the feasibility run's EROFS_FS_ZIP=y mount, cut down,
# with init's lines around it.
BUG_CONSOLE = """\
[    0.180000] Run /init as init process
@nommufs step boot 207512345
@nommufs meminfo boot MemTotal: 13184 kB
@nommufs meminfo boot MemFree: 10720 kB
@nommufs meminfo boot HugePages_Total: 0
[    0.211875] ------------[ cut here ]------------
[    0.212050] kernel BUG at mm/nommu.c:300!
[    0.212205] Kernel BUG [#1]
[    0.213131] epc : vmap+0x2/0x4
[    0.213293]  ra : z_erofs_gbuf_growsize+0x11c/0x1d0
[    0.220010] [<80146f7a>] vmap+0x2/0x4
[    0.220200] [<802224b4>] z_erofs_gbuf_growsize+0x11c/0x1d0
[    0.220400] [<80222f40>] z_erofs_load_lz4_config+0x6a/0x8a
[    0.220600] [<80223120>] z_erofs_parse_cfgs+0x4c/0x1e0
[    0.221000] Kernel panic - not syncing: Fatal exception in interrupt
"""


def test_a_bug_is_found_with_its_function_and_callers() -> None:
    run = console.parse(BUG_CONSOLE, memory_kib=16384, seconds=0.4, timed_out=False)
    assert run.outcome == "bug"
    assert run.meminfo("boot", "MemFree") == 10720
    assert run.steps["boot"]["HugePages_Total"] == 0
    [bug] = run.bugs
    assert (bug.where, bug.function) == ("mm/nommu.c:300", "vmap")
    assert bug.callers[:3] == ["z_erofs_gbuf_growsize", "z_erofs_load_lz4_config",
                               "z_erofs_parse_cfgs"]
    assert run.panic == "Fatal exception in interrupt"
    assert run.to_json()["kernel_tail"][-1].endswith("Fatal exception in interrupt")


def test_init_lines_are_parsed_and_outcomes_told_apart() -> None:
    text = ("@nommufs step boot 1\n@nommufs mount 0\n@nommufs step mount 2\n"
            "@nommufs file /a b 12 00000000000000ff 0\n"
            "@nommufs seg /bin/x 4096 8192 r-x 20001000 0\n"
            "@nommufs seg /bin/x 0 0 --- 0 -12\n@nommufs done\n")
    run = console.parse(text, memory_kib=8192, seconds=0.1, timed_out=False)
    assert run.outcome == "ok"
    assert [(f.path, f.size, f.fnv64) for f in run.files] == [("/a b", 12, 0xFF)]
    assert run.segments[0].address == 0x20001000 and run.segments[0].prot == "r-x"
    assert run.segments[1].errno == 12
    failed = console.parse("@nommufs step boot 1\n@nommufs mount -95\n@nommufs done\n",
                           memory_kib=8192, seconds=0.1, timed_out=False)
    assert failed.outcome == "mount-failed" and failed.mount_errno == 95
    hung = console.parse("[ 0.19] workqueue: Failed to create a worker thread: -EAGAIN\n",
                         memory_kib=6016, seconds=10, timed_out=True)
    assert hung.outcome == "timeout" and "EAGAIN" in hung.kernel_tail[-1]


def test_initramfs_is_newc_with_a_console_node(tmp_path: Path) -> None:
    data = initramfs.for_init(b"\x7fELF-not-really")
    listing = subprocess.run(["cpio", "-itv"], input=data, capture_output=True,
                             check=True).stdout.decode()
    assert [line.split()[-1] for line in listing.splitlines()] == [
        "dev", "dev/console", "proc", "mnt", "init"]
    assert listing.splitlines()[1].startswith("crw") and "5,   1" in listing
    assert data == initramfs.for_init(b"\x7fELF-not-really")  # the same bytes every time


def test_flash_needs_the_cramfs_pad(tmp_path: Path) -> None:
    img, out = tmp_path / "c.img", tmp_path / "flash.bin"
    img.write_bytes(b"\x45\x3d\xcd\x28" + bytes(4092))  # a superblock at offset 0: no pad
    with pytest.raises(NommuKernelError, match="512-byte pad"):
        qemu.flash_image(img, out)
    img.write_bytes(bytes(512) + b"\x45\x3d\xcd\x28" + bytes(3580))
    qemu.flash_image(img, out)
    flash = out.read_bytes()
    assert len(flash) == qemu.FLASH_BANK_BYTES and flash[512:516] == b"\x45\x3d\xcd\x28"
    assert flash[:12] != bytes(12)  # the jump to DRAM
