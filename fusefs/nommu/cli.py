"""scripts/nommu-kernel: build the kernels, boot an image, find its smallest RAM,
and compare the kernel with budget's model."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from fusefs.errors import InvalidArgumentError
from fusefs.nommu import qemu
from fusefs.nommu.cases import CASES
from fusefs.nommu.common import NommuKernelError
from fusefs.nommu.kernel import VARIANTS, Builder, Kernel
from fusefs.nommu.oracle import Workspace, boot_floor, compare, with_min_ram
from fusefs.nommu.report import table
from fusefs.nommu.sweep import find_min_ram
from fusefs.vfs import parse_size


def _kib(text: str) -> int:
    try:
        size = parse_size(text)
    except InvalidArgumentError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if size % 1024 or size <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: not a whole number of KiB")
    return size // 1024


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nommu-kernel", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="say what is being built")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build (or find in the cache) the kernels")
    b.add_argument("--variant", action="append", choices=sorted(VARIANTS),
                   help="default: all of them")
    for name, what in (("run", "boot IMAGE once and report what the kernel did"),
                       ("min-ram", "the smallest -m at which IMAGE boots, mounts and reads")):
        r = sub.add_parser(name, help=what)
        r.add_argument("image", type=Path)
        r.add_argument("--variant", choices=sorted(VARIANTS), default="zip-n",
                       help="zip-n (EROFS without decompression, the default), zip-y, or "
                       "zip-y-bounce (nommu/vmap-bounce.patch applied)")
        r.add_argument("-m", "--memory", type=_kib, default=16384,
                       help="RAM for qemu (default 16M; min-ram: where it starts)")
        r.add_argument("--flash", action="store_true",
                       help="cramfs on CFI flash (XIP; build it with mkimage cramfs -X -p)")
        r.add_argument("--exec", action="append", default=[], metavar="PATH",
                       help="an ELF program in the image to map as a loader would")
        r.add_argument("--no-read", action="store_true", help="do not read every file")
        r.add_argument("--show", action="append", default=[], metavar="GUEST_FILE",
                       help="print this guest file before unmounting (e.g. a sysfs counter)")
        r.add_argument("--timeout", type=float, default=60.0, help="seconds per boot")
        r.add_argument("--json", action="store_true", help="the whole run as JSON")
    c = sub.add_parser("compare", help="every case on the kernel and in budget's model")
    c.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    c.add_argument("--min-ram", action="store_true",
                   help="also bisect the smallest -m of each case that mounts (slower)")
    c.add_argument("--workdir", type=Path, help="keep the tree and images here")
    c.add_argument("--json", action="store_true", help="the comparison as JSON")
    return p


def _compare(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(
            tempfile.TemporaryDirectory(prefix="nommufs-oracle-")))
        workdir.mkdir(parents=True, exist_ok=True)
        ws = Workspace(workdir)
        floor = boot_floor(ws) if args.min_ram else None
        results = []
        for name in args.case or list(CASES):
            cmp = compare(ws, CASES[name])
            if floor is not None and floor.min_kib is not None and cmp.kernel.run.outcome == "ok":
                with_min_ram(ws, cmp, floor.min_kib)
            results.append(cmp.to_json())
        doc = {"boot_floor_kib": None if floor is None else floor.min_kib,
               "boot_floor_mem_free_kib": None if floor is None or floor.at_min is None
               else floor.at_min.meminfo("boot", "MemFree"),
               "cases": results}
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        print()
    else:
        for line in table(doc):
            print(line)
    return 0


def _boot(args: argparse.Namespace, kernel: Kernel) -> qemu.Boot:
    image: Path = args.image
    if not image.is_file():
        raise NommuKernelError(f"{image}: no such file")
    fstype = "erofs" if image.read_bytes()[1024:1028] == b"\xe2\xe1\xf5\xe0" else "cramfs"
    return qemu.Boot(kernel, args.memory, fstype, disk=None if args.flash else image,
                     flash=image if args.flash else None, read_all=not args.no_read,
                     exec=tuple(args.exec), show=tuple(args.show), timeout=args.timeout)


class _Interrupted(BaseException):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupted(signum: int, _frame: object) -> None:
    raise _Interrupted(signum)


def main(argv: Sequence[str]) -> int:
    # SIGTERM (what CI timeouts send) and SIGHUP unwind like SIGINT: the make
    # process group is stopped and the unfinished cache entry removed
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="nommu-kernel: %(message)s")
    try:
        builder = Builder()
        if args.command == "build":
            for name in args.variant or sorted(VARIANTS):
                print(f"{name}: {builder.get(VARIANTS[name]).image}")
            return 0
        if args.command == "compare":
            return _compare(args)
        boot = _boot(args, builder.get(VARIANTS[args.variant]))
        if args.command == "run":
            run = qemu.run(boot)
            out = run.to_json()
            if args.json:
                json.dump(out, sys.stdout, indent=1)
                print()
            else:
                print(f"{args.image}: {run.outcome} in {run.seconds:.2f} s at {boot.memory_kib}K")
                for step, info in run.steps.items():
                    print(f"  {step:8} " + " ".join(
                        f"{k} {info.get(k, 0)}K" for k in ("MemFree", "Cached", "Buffers",
                                                           "MmapCopy")))
                for bug in run.bugs:
                    print(f"  kernel BUG at {bug.where} in {bug.function} from "
                          + " <- ".join(bug.callers[:3]))
            return 0 if run.outcome == "ok" else 1
        res = find_min_ram(boot)
        probes = ", ".join(f"{k}K {o}" for k, o in res.probes)
        if res.min_kib is None:
            print(f"{args.image}: fails even at {boot.memory_kib}K ({res.reference.outcome})")
            return 1
        free = res.at_min.meminfo("boot", "MemFree") if res.at_min else None
        print(f"{args.image}: smallest RAM {res.min_kib}K"
              f"{' (the lowest tried)' if res.floor_reached else ''}, "
              f"MemFree after boot there {free}K; probes: {probes}")
        return 0
    except NommuKernelError as e:
        print(f"nommu-kernel: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nommu-kernel: interrupted by SIGINT; nothing half-built is left in the cache",
              file=sys.stderr)
        return 128 + signal.SIGINT
    except _Interrupted as e:
        print(f"nommu-kernel: interrupted by {signal.Signals(e.signum).name}; nothing "
              "half-built is left in the cache", file=sys.stderr)
        return 128 + e.signum
