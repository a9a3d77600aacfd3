"""``scripts/fuzz TARGET [--seconds N] [--work DIR] [FILE ...] [-- LIBFUZZER-ARGS]``

Coverage-guided fuzzing (atheris, libFuzzer) of one target of
:mod:`tests.fuzz.harness`: ``erofs``, ``cramfs`` (images) or ``mkimage``
(round trips).  The corpus grows in ``WORK/TARGET/corpus`` (seeded by
:mod:`tests.fuzz.seeds` on every run), crashes land as
``WORK/TARGET/crash-*`` with the traceback on stderr.  With FILEs, each is
run once (a reproducer) instead.  Exit 0 when nothing was found.
"""

from __future__ import annotations

import argparse
import pkgutil
import sys
from pathlib import Path

import atheris

# what the targets drive: the readers, the memory model, the writers; each
# package's modules all, so that a lazy import in a function finds its module instrumented
PACKAGES = ("fusefs.erofs", "fusefs.cramfs", "fusefs.codecs", "mmshim", "mkimage")
MODULES = ("fusefs.vfs", "fusefs.memory", "fusefs.errors", "fusefs.names", "fusefs.formats",
           "fusefs.atomicfile", "nommufs")  # fmt: skip


def _instrumented_imports() -> None:
    """Import the code under test with atheris's coverage instrumentation
    (it instruments what is imported inside the block)."""
    import importlib

    with atheris.instrument_imports(include=["fusefs", "mmshim", "mkimage", "nommufs"]):
        for name in MODULES:
            importlib.import_module(name)
        for name in PACKAGES:
            package = importlib.import_module(name)
            for info in pkgutil.walk_packages(package.__path__, prefix=name + "."):
                if not info.name.endswith("__main__"):
                    importlib.import_module(info.name)


def main(argv: list[str]) -> int:
    extra: list[str] = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    p = argparse.ArgumentParser(prog="scripts/fuzz", description=__doc__.split("\n\n")[1])
    p.add_argument("target", choices=("erofs", "cramfs", "mkimage"))
    p.add_argument("--seconds", type=int, default=60, help="how long (default 60)")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/nommufs-fuzz"),
        help="corpus and crashes go to WORK/TARGET (default /tmp/nommufs-fuzz)",
    )
    p.add_argument("--rss-limit-mb", type=int, default=1536)
    p.add_argument("files", nargs="*", type=Path, help="run these inputs once instead")
    args = p.parse_args(argv)  # fmt: skip

    _instrumented_imports()
    from tests.fuzz.harness import TARGETS
    from tests.fuzz.seeds import write_seeds

    work = args.work / args.target
    corpus, seeds, scratch = work / "corpus", work / "seeds", work / "scratch"
    for d in (corpus, scratch):
        d.mkdir(parents=True, exist_ok=True)
    one_input = TARGETS[args.target](scratch)
    libfuzzer = [
        sys.argv[0], f"-artifact_prefix={work}/", f"-rss_limit_mb={args.rss_limit_mb}",
        "-timeout=60", "-print_final_stats=1", "-len_control=0",
    ]  # fmt: skip
    if args.files:
        libfuzzer += [str(f) for f in args.files]
    else:
        n = write_seeds(args.target, seeds)
        print(f"scripts/fuzz: {args.target}: {n} seeds in {seeds}", file=sys.stderr, flush=True)
        libfuzzer += [f"-max_total_time={args.seconds}", "-max_len=131072", str(corpus), str(seeds)]
    atheris.Setup(libfuzzer + extra, one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
