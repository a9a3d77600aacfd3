"""budget's model held against a real Linux without an MMU (riscv64 6.12 under qemu).

Each case boots once at 16M (tests/nommu/conftest.py); the model replays the
same workloads for the combination that stands for that kernel. The
tolerances are the differences that are understood (README, "A real nommu
kernel"); anything beyond them fails.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from fusefs.nommu.cases import CASES
from fusefs.nommu.oracle import Comparison, Workspace, boot_floor, with_min_ram
from tests.nommu.conftest import BUILD_TIMEOUT

pytestmark = pytest.mark.timeout(BUILD_TIMEOUT)

READS = ("erofs-plain", "cramfs", "cramfs-xip")


@pytest.mark.parametrize("name", ["erofs-plain-zip", "erofs-lz4-zip"])
def test_erofs_zip_mount_bugs_in_vmap_as_the_model_refuses(
    comparisons: dict[str, Comparison], name: str
) -> None:
    cmp = comparisons[name]
    run = cmp.kernel.run
    assert run.outcome == "bug" and "mount" not in run.steps  # the mount never returned
    [bug, *_] = run.bugs
    assert bug.where.startswith("mm/nommu.c:") and bug.function == "vmap"
    assert bug.callers[0] == "z_erofs_gbuf_growsize"
    assert "erofs_fc_fill_super" in bug.callers
    assert cmp.model is not None and cmp.model.read is not None
    failure = cmp.model.read.failure or ""
    assert failure.startswith("mount: ") and "z_erofs_gbuf_growsize" in failure
    assert cmp.model.read.files_done == 0


def test_erofs_without_zip_refuses_a_compressed_image(comparisons: dict[str, Comparison]) -> None:
    run = comparisons["erofs-lz4"].kernel.run
    assert run.outcome == "mount-failed" and run.mount_errno == errno.EOPNOTSUPP
    assert any("compression disabled" in m for m in run.fs_messages)


@pytest.mark.parametrize("name", READS)
def test_every_file_reads_back_as_the_tree_on_both(
    comparisons: dict[str, Comparison], workspace: Workspace, name: str
) -> None:
    cmp = comparisons[name]
    assert cmp.kernel.run.outcome == "ok", cmp.kernel.run.kernel_tail
    assert cmp.kernel.bad_files == []
    assert {f.path for f in cmp.kernel.run.files} == set(workspace.expected)
    assert cmp.model is not None and cmp.model.read is not None and cmp.model.read.ok
    assert cmp.model.read.files_done == len(workspace.expected)
    assert cmp.kernel.run.umount_errno == 0


def test_page_cache_after_reading(comparisons: dict[str, Comparison], workspace: Workspace) -> None:
    """Cached grew by the model's page-cache frames, up to what the model leaves out."""
    got = {}
    for name in READS:
        cmp = comparisons[name]
        assert cmp.kernel.cached_kib is not None and cmp.model is not None
        model = cmp.model.page_cache_frames
        assert model is not None
        got[name] = cmp.kernel.cached_kib // 4 - model
    # cramfs, on virtio-blk or flash: directories are read through the device
    # (Buffers, or straight from flash), files through the page cache: exactly
    # the model's page-cache frames
    assert got["cramfs"] == 0 and got["cramfs-xip"] == 0, got
    # EROFS: each directory's block sits in its inode's page cache, which the
    # model does not count (it reads directories from the image)
    dirs = sum(1 for p in workspace.tree.rglob("*") if p.is_dir()) + 1
    assert got["erofs-plain"] == dirs, got


def test_program_mappings_copy_what_the_model_copies(comparisons: dict[str, Comparison]) -> None:
    """MmapCopy while each program is mapped, summed, is the model's exec_frames."""
    for name in ("cramfs", "cramfs-xip"):
        cmp = comparisons[name]
        assert cmp.model is not None and cmp.model.exec is not None and cmp.model.exec.ok
        assert sum(cmp.kernel.mmap_copy_pages()) == cmp.model.exec.exec_frames, name
    xip, plain = comparisons["cramfs-xip"], comparisons["cramfs"]
    # XIP: every read-only segment is mapped in place, in the flash window
    # (below RAM); only the writable ones are copied: the model's exec_text_frames 0
    ro = [s for s in xip.kernel.run.segments if "w" not in s.prot]
    assert ro and xip.kernel.direct_segments() == len(ro)
    assert xip.model is not None and xip.model.exec is not None
    assert xip.model.exec.exec_text_frames == 0
    assert plain.kernel.direct_segments() == 0
    # EROFS maps too (always a copy without an MMU); the model has no loader for it
    assert sum(comparisons["erofs-plain"].kernel.mmap_copy_pages()) == sum(
        plain.kernel.mmap_copy_pages())


@pytest.mark.slow
def test_smallest_ram(workspace: Workspace, comparisons: dict[str, Comparison]) -> None:
    """Reading needs no more than the boot leaves free (the floor is the kernel's
    own); mapping libc without XIP needs a 2 MiB block, far above the floor."""
    # below the floor the kernel hangs rather than panics; a good run takes < 1 s
    floor = boot_floor(workspace, step_kib=256, probe_timeout=4)
    assert floor.min_kib is not None and 4096 < floor.min_kib < 16384
    xip = comparisons["cramfs-xip"]
    with_min_ram(workspace, xip, floor.min_kib, step_kib=256, probe_timeout=4)
    for workload in ("all", "exec"):
        pair = xip.min_ram[workload]
        assert pair.kernel.min_kib == floor.min_kib, (workload, pair.kernel.probes)
        assert pair.kernel.at_min is not None
        free = pair.kernel.at_min.meminfo("boot", "MemFree")
        assert pair.model_min_arena is not None and pair.model_min_arena <= free * 1024


def test_bounce_patch_mounts_and_reads_compressed_erofs(
    comparisons: dict[str, Comparison], workspace: Workspace
) -> None:
    """nommu/vmap-bounce.patch: the compressed image the stock kernel BUGs on mounts,
    reads back right, and bounces scattered pages; the model (nommu-bounce) agrees
    on the outcome and on no failures, but hands out page-cache frames more
    contiguously than the kernel does, so it bounces far less (README)."""
    cmp = comparisons["erofs-lz4-bounce"]
    run = cmp.kernel.run
    assert run.outcome == "ok" and not run.bugs, run.kernel_tail
    assert cmp.kernel.bad_files == []
    c = cmp.kernel.counters()
    assert c["vmap_calls"] == c["vmap_in_place"] + c["vmap_bounced"] + c["vmap_failures"]
    assert c["vmap_failures"] == 0 and c["vmap_bounced"] > 0
    # in and out: at least two pages each way per bounced mapping
    assert c["vmap_bounce_bytes"] >= c["vmap_bounced"] * 4 * 4096
    assert cmp.model is not None and cmp.model.read is not None and cmp.model.read.ok
    model = cmp.model.read
    assert model.vmap_failures == 0 and model.lost_writes == 0
    assert 0 < model.bounce_vmaps < c["vmap_bounced"]
    assert model.bounce_bytes < c["vmap_bounce_bytes"]


def test_the_script_boots_an_image(workspace: Workspace) -> None:
    """scripts/nommu-kernel run: JSON on stdout, exit 0 when the run went through,
    1 when the kernel did not (here: the BUG at mount), 1 with one line for a bad path."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "nommu-kernel"
    env = {**os.environ, "NOMMUFS_CACHE": str(workspace.builder.root)}
    ok = subprocess.run([str(script), "run", str(workspace.image(CASES["cramfs-xip"])), "--flash",
                         "--exec", "/bin/ls", "--json"], capture_output=True, env=env,
                        timeout=120, check=False)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["outcome"] == "ok" and doc["segments"][0][0] == "/bin/ls"
    bug = subprocess.run([str(script), "run", str(workspace.image(CASES["erofs-plain"])),
                          "--variant", "zip-y"], capture_output=True, env=env, timeout=120,
                         check=False)
    assert bug.returncode == 1 and b"kernel BUG at mm/nommu.c" in bug.stdout
    missing = subprocess.run([str(script), "run", "/nonexistent.img"], capture_output=True,
                             env=env, timeout=60, check=False)
    assert missing.returncode == 1
    assert missing.stderr.decode().strip() == "nommu-kernel: /nonexistent.img: no such file"
