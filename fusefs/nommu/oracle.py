"""Hold `nommufs budget`'s model against the real nommu kernel, case by case.

For each `cases.Case` the kernel boots the image at `MEMORY_KIB`, reads every
file, maps every ELF program as a loader would; budget replays the same
workloads (``all``, and ``exec`` where the model has a loader) for the
combination that stands for that kernel, in an arena as large as the memory
the kernel had free after mounting. What is compared:

* the outcome: where it fails (mount or read) and why (the kernel's BUG
  function and callers against the model's failure text);
* the page cache after reading everything: the kernel's ``Cached`` delta
  (after reading minus after mounting) against the model's page-cache frames;
* program mappings: the kernel's ``MmapCopy`` delta while each program is
  mapped, summed, against the model's ``exec_frames``;
* with `min_ram`: the smallest ``-m`` of the kernel against budget's min arena.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from fusefs.budget import OWNER_KINDS, BudgetResult, budget
from fusefs.nommu import qemu
from fusefs.nommu.cases import Case, build_tree, programs, tree_files
from fusefs.nommu.console import Run
from fusefs.nommu.init import build_init
from fusefs.nommu.kernel import VARIANTS, Builder, Kernel
from fusefs.nommu.sweep import MinRam, find_min_ram
from fusefs.vfs import PAGE_SIZE

MEMORY_KIB: Final = 16384
PAGE_KIB: Final = PAGE_SIZE // 1024


@dataclass
class Workspace:
    """The kernels, the tree and its images, built once for a set of comparisons."""

    directory: Path
    builder: Builder = field(default_factory=Builder)
    kernels: dict[str, Kernel] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.tree = self.directory / "tree"
        if not self.tree.exists():
            build_tree(self.tree, build_init(self.builder.root))
        self.expected = tree_files(self.tree)
        self.programs = programs(self.tree)

    def kernel(self, case: Case) -> Kernel:
        name = case.variant.name
        if name not in self.kernels:
            self.kernels[name] = self.builder.get(VARIANTS[name])
        return self.kernels[name]

    def image(self, case: Case) -> Path:
        return case.build(self.tree, self.directory)

    def boot(self, case: Case, memory_kib: int = MEMORY_KIB, *, exec_: bool = True) -> qemu.Boot:
        image = self.image(case)
        disk, flash = (image, None) if case.medium == "disk" else (None, image)
        return qemu.Boot(self.kernel(case), memory_kib, case.fmt, disk=disk, flash=flash,
                         exec=self.programs if exec_ else (), show=case.counters)

    def boot_only(self, memory_kib: int = MEMORY_KIB) -> qemu.Boot:
        """Boot and power off: the kernel's own floor."""
        return qemu.Boot(self.builder.get(VARIANTS["zip-n"]), memory_kib, "")


@dataclass
class KernelSide:
    run: Run
    bad_files: list[str]  # read back different from the tree (or not at all)

    @property
    def cached_kib(self) -> int | None:
        """Cached after reading everything, above its level after mounting (exact:
        init folds the per-CPU vmstat deltas, /proc/sys/vm/stat_refresh, first)."""
        st = self.run.steps
        if "read" not in st or "mount" not in st:
            return None
        return st["read"]["Cached"] - st["mount"]["Cached"]

    @property
    def buffers_kib(self) -> int | None:
        st = self.run.steps
        if "read" not in st or "mount" not in st:
            return None
        return st["read"]["Buffers"] - st["mount"]["Buffers"]

    def mmap_copy_pages(self) -> list[int]:
        """MmapCopy while each program is mapped, above the level before the first."""
        st = self.run.steps
        if "read" not in st:
            return []
        base = st["read"]["MmapCopy"]
        execs = sorted((k for k in st if k.startswith("exec")), key=lambda k: int(k[4:]))
        return [(st[k]["MmapCopy"] - base) // PAGE_KIB for k in execs]

    def counters(self) -> dict[str, int]:
        """The sysfs counters the case asked for, by their file name."""
        return {path.rsplit("/", 1)[-1]: int(text) for path, text in self.run.shown.items()
                if text.strip().isdigit()}

    def direct_segments(self) -> int:
        """Segments the kernel mapped in place (an address outside RAM: in flash)."""
        return sum(1 for s in self.run.segments if s.errno == 0 and s.address < qemu.DRAM_BASE)


@dataclass
class ModelSide:
    read: BudgetResult | None  # workload all
    exec: BudgetResult | None  # workload exec (None: the model has no loader for it)
    arena_bytes: int

    @property
    def page_cache_frames(self) -> int | None:
        if self.read is None or not self.read.samples:
            return None
        return self.read.samples[-1].by_owner[OWNER_KINDS.index("page_cache")]


@dataclass
class Comparison:
    case: Case
    kernel: KernelSide
    model: ModelSide | None
    min_ram: dict[str, MinRamPair] = field(default_factory=dict)  # workload -> pair

    def to_json(self) -> dict[str, Any]:
        k, run = self.kernel, self.kernel.run
        bug = run.bugs[0] if run.bugs else None
        out: dict[str, Any] = {
            "case": self.case.name,
            "about": self.case.about,
            "kernel_variant": self.case.variant.name,
            "kernel": {
                "outcome": run.outcome,
                "seconds": round(run.seconds, 2),
                "boot_ms": round(run.step_ns.get("boot", 0) / 1e6),
                "mount_errno": run.mount_errno,
                "bug": None if bug is None else {"where": bug.where, "function": bug.function,
                                                  "called_from": bug.callers[:3]},
                "fs_messages": run.fs_messages,
                "mem_free_after_mount_kib": run.steps.get("mount", {}).get("MemFree"),
                "cached_delta_kib": k.cached_kib,
                "buffers_delta_kib": k.buffers_kib,
                "mmap_copy_pages": k.mmap_copy_pages(),
                "segments_in_flash": k.direct_segments(),
                "bad_files": k.bad_files,
                "counters": k.counters(),
            },
            "model": None,
        }
        if self.model is not None:
            m = self.model
            out["model"] = {
                "combination": f"{self.case.mm}+{self.case.decompress}" if self.case.decompress
                else self.case.mm,
                "arena_bytes": m.arena_bytes,
                "ok": None if m.read is None else m.read.ok,
                "failure": None if m.read is None else m.read.failure,
                "page_cache_frames": m.page_cache_frames,
                "exec_frames": None if m.exec is None else m.exec.exec_frames,
                "exec_text_frames": None if m.exec is None else m.exec.exec_text_frames,
                "exec_failure": None if m.exec is None else m.exec.failure,
                "vmap_calls": None if m.read is None else m.read.vmap_calls,
                "bounce_vmaps": None if m.read is None else m.read.bounce_vmaps,
                "bounce_bytes": None if m.read is None else m.read.bounce_bytes,
                "vmap_failures": None if m.read is None else m.read.vmap_failures,
                "lost_writes": None if m.read is None else m.read.lost_writes,
            }
        if self.min_ram:
            out["min_ram"] = {w: pair.to_json() for w, pair in self.min_ram.items()}
        return out


def kernel_side(ws: Workspace, case: Case, memory_kib: int = MEMORY_KIB) -> KernelSide:
    run = qemu.run(ws.boot(case, memory_kib))
    return KernelSide(run, bad_reads(run, ws.expected))


def bad_reads(run: Run, expected: dict[str, tuple[int, int]]) -> list[str]:
    """Files the run read back different from the tree: ``/path: why``."""
    if run.mount_errno != 0 or "read" not in run.steps:
        return []
    got = {f.path: f for f in run.files}
    bad = []
    for path, (size, h) in sorted(expected.items()):
        f = got.get(path)
        if f is None:
            bad.append(f"{path}: not read")
        elif f.errno:
            bad.append(f"{path}: errno {f.errno}")
        elif (f.size, f.fnv64) != (size, h):
            bad.append(f"{path}: {f.size} bytes, not the tree's {size}" if f.size != size
                       else f"{path}: the bytes differ from the tree's")
    return bad


def model_side(ws: Workspace, case: Case, arena_bytes: int) -> ModelSide | None:
    if not case.modelled:
        return None
    image = ws.image(case)
    strategies = [case.decompress] if case.decompress else None
    read = budget(image, arena_bytes=arena_bytes, workload="all", mms=[case.mm],
                  strategies=strategies, record=True).results[0]
    exec_ = None
    if case.fmt == "cramfs":  # the model's loader maps cramfs only
        exec_ = budget(image, arena_bytes=arena_bytes, workload="exec", mms=[case.mm],
                       strategies=strategies).results[0]
    return ModelSide(read, exec_, arena_bytes)


def compare(ws: Workspace, case: Case, memory_kib: int = MEMORY_KIB) -> Comparison:
    """The kernel's run and the model's replay of `case`, side by side."""
    k = kernel_side(ws, case, memory_kib)
    free = k.run.steps.get("mount", k.run.steps.get("boot", {})).get("MemFree")
    arena = (free or memory_kib) * 1024 // PAGE_SIZE * PAGE_SIZE
    return Comparison(case, k, model_side(ws, case, arena))


@dataclass
class MinRamPair:
    """One workload's smallest RAM on the kernel and smallest arena in the model."""

    kernel: MinRam
    model_min_arena: int | None  # None: the model has no such workload, or nothing fits
    model_largest_order: int = -1  # the largest block the model's replay asked for

    def to_json(self) -> dict[str, Any]:
        r = self.kernel
        return {
            "kernel_min_kib": r.min_kib,
            "mem_free_after_boot_at_min_kib": None if r.at_min is None
            else r.at_min.steps.get("boot", {}).get("MemFree"),
            "largest_free_order_after_boot_at_min": None if r.at_min is None
            else r.at_min.largest_free_order("boot"),
            "probes": r.probes,
            "model_min_arena_kib": None if self.model_min_arena is None
            else self.model_min_arena // 1024,
            "model_largest_alloc_order": self.model_largest_order,
        }


def with_min_ram(ws: Workspace, cmp: Comparison, floor_kib: int, step_kib: int = 64,
                 probe_timeout: float = 10.0) -> None:
    """Add, per workload (read every file; map every program), the kernel's smallest
    -m, searched up from the boot floor, and budget's min arena."""
    case = cmp.case
    for workload, read_all in (("all", True), ("exec", False)):
        boot = dataclasses.replace(ws.boot(case), read_all=read_all,
                                   exec=() if read_all else ws.programs)
        kernel = find_min_ram(boot, lo_kib=floor_kib - step_kib, step_kib=step_kib,
                              probe_timeout=probe_timeout)
        pair = MinRamPair(kernel, None)
        if case.modelled and (workload == "all" or case.fmt == "cramfs"):
            strategies = [case.decompress] if case.decompress else None
            res = budget(ws.image(case), arena_bytes=MEMORY_KIB * 1024, workload=workload,
                         mms=[case.mm], strategies=strategies, find_min=True).results[0]
            pair = MinRamPair(kernel, res.min_arena_bytes, res.largest_alloc_order)
        cmp.min_ram[workload] = pair


def boot_floor(ws: Workspace, step_kib: int = 64, probe_timeout: float = 10.0) -> MinRam:
    """The smallest -m at which the kernel boots to init at all (no image)."""
    return find_min_ram(ws.boot_only(), step_kib=step_kib, probe_timeout=probe_timeout)

