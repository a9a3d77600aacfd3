"""The smallest RAM (qemu ``-m``) in which boot, mount and the workload succeed.

A run at `MinRam.max_kib` is the reference: a smaller RAM succeeds when its
run ends the same way and read the same files with the same bytes (sizes and
FNV-1a hashes) and mapped every segment. Bisection between a failing and a
succeeding size, to `MinRam.step_kib`, takes about log2((max - min) / step) boots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from fusefs.nommu import qemu
from fusefs.nommu.console import Run


def same_work(run: Run, ref: Run) -> bool:
    """`run` did all that `ref` did: booted, mounted, read the same bytes, mapped everything."""
    return (run.outcome == "ok" and run.outcome == ref.outcome
            and [(f.path, f.size, f.fnv64, f.errno) for f in run.files]
            == [(f.path, f.size, f.fnv64, f.errno) for f in ref.files]
            and len(run.segments) == len(ref.segments)
            and all(s.errno == 0 for s in run.segments))


@dataclass
class MinRam:
    """Result of a sweep: the smallest `-m` that works and every probe made."""

    min_kib: int | None  # None: even max_kib fails
    reference: Run
    at_min: Run | None
    probes: list[tuple[int, str]] = field(default_factory=list)  # (kib, outcome)
    max_kib: int = 16384
    step_kib: int = 64
    floor_reached: bool = False  # the lowest size tried worked


def find_min_ram(boot: qemu.Boot, *, lo_kib: int = 4096, step_kib: int = 64,
                 probe_timeout: float = 10.0) -> MinRam:
    """Bisect between `boot.memory_kib` (the reference) and `lo_kib`.

    `lo_kib` is probed too; when it works, the answer is `lo_kib` itself and
    `MinRam.floor_reached` says so (the true minimum may be lower).
    """
    ref = qemu.run(boot)
    # below its floor the kernel may hang rather than panic (kswapd or a
    # workqueue that cannot start): a probe gets a short timeout
    boot = dataclasses.replace(boot, timeout=min(boot.timeout, probe_timeout))
    res = MinRam(None, ref, None, [(boot.memory_kib, ref.outcome)], boot.memory_kib, step_kib)
    if ref.outcome != "ok":
        return res
    low = qemu.run(dataclasses.replace(boot, memory_kib=lo_kib))
    res.probes.append((lo_kib, low.outcome))
    if same_work(low, ref):
        res.min_kib, res.at_min, res.floor_reached = lo_kib, low, True
        return res
    lo, hi, at_hi = lo_kib, boot.memory_kib, ref  # lo fails, hi works
    while hi - lo > step_kib:
        mid = (lo + hi) // 2 // step_kib * step_kib
        if mid <= lo:
            break
        run = qemu.run(dataclasses.replace(boot, memory_kib=mid))
        ok = same_work(run, ref)
        res.probes.append((mid, run.outcome if ok or run.outcome != "ok" else "incomplete"))
        if ok:
            hi, at_hi = mid, run
        else:
            lo = mid
    res.min_kib, res.at_min = hi, at_hi
    return res
