"""``nommufs budget``: does this image fit on the board, and how should it decompress?

With ``--suggest`` IMAGE may be a source tree: the build options are
searched for the image that fits the board (:mod:`fusefs.budget.suggest`).

Exit status: 0 when the report was produced (a combination that fails is
data, not an error), 1 on bad input (not an image, unreadable workload list,
a corrupt image), 2 on a usage error, 3 with ``--fail-if-none-fits`` when no
combination ran the whole workload (with ``--suggest``: no variant fits).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from fusefs.budget import BudgetReport, BudgetResult, budget, footnotes, iter_rows, kib
from fusefs.budget.advice import suggestion_table
from fusefs.budget.grid import (
    ALGORITHMS,
    DEFAULT_PCLUSTERS,
    DEFAULT_TAILS,
    TAILS,
    Grid,
    parse_list,
    parse_sizes,
)
from fusefs.budget.suggest import Board, Progress, iter_progress_line, suggest
from fusefs.cmdline import verbosity
from fusefs.commands._common import add_image_location, parse_size
from fusefs.errors import InvalidArgumentError
from fusefs.vfs import DEFAULT_ARENA_BYTES, MM_MODES, PAGE_SIZE, STRATEGIES

NAME: Final = "budget"
HELP: Final = "replay a workload per arena mode and decompression strategy: does the image fit?"
EXIT_NONE_FITS: Final = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_image_location(parser)
    parser.add_argument(
        "--arena",
        "--ram",
        type=parse_size,
        default=DEFAULT_ARENA_BYTES,
        metavar="SIZE",
        help="the board's memory for the filesystem, a multiple of 4 KiB (default: 64M)",
    )
    parser.add_argument(
        "--mm",
        choices=MM_MODES,
        action="append",
        metavar="MODE",
        help=f"arena mode, repeatable ({', '.join(MM_MODES)}; default: all)",
    )
    parser.add_argument(
        "--decompress",
        choices=STRATEGIES,
        action="append",
        metavar="STRATEGY",
        help=f"EROFS decompression strategy, repeatable ({', '.join(STRATEGIES)}; "
        "default: all; cramfs has none)",
    )
    parser.add_argument(
        "--xip-read",
        choices=("pagecache", "direct"),
        default="pagecache",
        help="cramfs XIP files: read() through the page cache (default) or from flash",
    )
    parser.add_argument(
        "--workload",
        default="all",
        metavar="all|list:FILE|exec",
        help="read every regular file in full (default), the files listed in FILE "
        "(one path per line), or map every ELF program as a loader would",
    )
    parser.add_argument(
        "--find-min",
        action="store_true",
        help="bisect, to the page, the smallest arena in which the workload succeeds",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    parser.add_argument(
        "--plot",
        metavar="OUT.png|svg|pdf",
        help="draw arena occupancy over the workload, one panel per combination, "
        "in the format the extension names",
    )
    parser.add_argument(
        "--fail-if-none-fits",
        action="store_true",
        help=f"exit {EXIT_NONE_FITS} when no combination runs the whole workload",
    )
    add_suggest_arguments(parser)


def _progress(res: BudgetResult) -> None:
    print(f"nommufs budget: {res.label}: {'ok' if res.ok else 'failed'}", file=sys.stderr)


def format_table(report: BudgetReport) -> str:
    """The report as an aligned text table, failures listed below it."""
    rows = list(iter_rows(report))
    if not rows:
        return "(no combination)\n"
    heads = list(rows[0])
    widths = {h: max(len(h), *(len(r[h]) for r in rows)) for h in heads}
    lines = [
        f"{report.image}: {report.format}, arena {report.arena_bytes // 1024}K "
        f"({report.arena_bytes // PAGE_SIZE} frames), workload {report.workload.label}"
        + (
            f" ({len(report.workload.files)} files, {report.workload.total_bytes} bytes)"
            if report.workload.kind != "exec"
            else ""
        ),
        "  ".join(h.ljust(widths[h]) for h in heads).rstrip(),
    ]
    lines += ["  ".join(r[h].ljust(widths[h]) for h in heads).rstrip() for r in rows]
    lines += footnotes(report)
    lines += _grouped(
        (r.label, r.explanation.text() if r.explanation else (r.failure or ""))
        for r in report.results
        if r.failure is not None
    )
    critical = [(r.label, r.critical, r.min_arena_bytes) for r in report.results]
    shown = [(f"{label} (minimum {kib(least)})", c.text())
             for label, c, least in critical if c is not None and least is not None]  # fmt: skip
    if shown:
        lines.append("what sets each minimum (the failure one page below it):")
        lines += _grouped(shown)
    return "\n".join(lines) + "\n"


def add_suggest_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(
        "--suggest", "search mkimage's options for the image that fits the board"
    )
    g.add_argument(
        "--suggest",
        action="store_true",
        help="IMAGE is a source tree (or an image, extracted first): build the grid of "
        "variants, find each one's minimum arena per strategy for the board's one --mm "
        "(default nommu-contig), and print them sorted by fit",
    )
    g.add_argument("--flash", type=parse_size, metavar="SIZE",
                   help="the most image bytes the board's flash holds")  # fmt: skip
    g.add_argument("--try-z", metavar="ALG,...", default=",".join(ALGORITHMS),
                   help=f"EROFS compressors to try (default: {','.join(ALGORITHMS)})")  # fmt: skip
    g.add_argument("--try-C", metavar="BYTES,...",
                   default=",".join(str(c) for c in DEFAULT_PCLUSTERS),
                   help="EROFS pcluster sizes to try (default: %(default)s)")  # fmt: skip
    g.add_argument("--try-max-extent", metavar="BYTES|unbounded,...", default="65536,unbounded",
                   help="EROFS --max-extent-bytes to try (default: %(default)s)")  # fmt: skip
    g.add_argument("--try-tail", metavar="TAIL,...", default=",".join(DEFAULT_TAILS),
                   help=f"EROFS tail packing to try ({', '.join(TAILS)}; "
                   "default: %(default)s)")  # fmt: skip
    g.add_argument("--try-format", metavar="FMT,...", default="erofs,cramfs",
                   help="image formats to try (default: %(default)s)")  # fmt: skip
    g.add_argument("-j", "--jobs", type=int, default=2, metavar="N",
                   help="worker processes for builds and replays (default: 2)")  # fmt: skip


def _grouped(items: Iterable[tuple[str, str]]) -> list[str]:
    """``label: text`` lines, one per distinct text, naming every label that has it."""
    groups: dict[str, list[str]] = {}
    for label, text in items:
        groups.setdefault(text, []).append(label)
    return [f"  {', '.join(labels)}: {text}" for text, labels in groups.items()]


def run(args: argparse.Namespace) -> int:
    if args.plot is not None:
        from fusefs.budget.plot import plot_format

        plot_format(args.plot)  # a bad extension fails before the replay
    if args.suggest:
        return run_suggest(args)
    report = budget(
        args.image,
        arena_bytes=args.arena,
        workload=args.workload,
        mms=tuple(dict.fromkeys(args.mm or MM_MODES)),
        strategies=tuple(dict.fromkeys(args.decompress)) if args.decompress else None,
        xip_read=args.xip_read,
        find_min=args.find_min,
        record=args.plot is not None,
        offset=args.offset,
        progress=_progress if verbosity(args) else None,
    )
    if args.plot is not None:
        from fusefs.budget.plot import write_plot

        write_plot(report, args.plot)
    _emit(args, report.to_json() if args.json else None, lambda: format_table(report))
    if args.fail_if_none_fits and not any(r.ok for r in report.results):
        return EXIT_NONE_FITS
    return 0


def _emit(args: argparse.Namespace, doc: dict[str, Any] | None, text: Callable[[], str]) -> None:
    """``doc`` as one JSON document (with ``--json``), else the table ``text()``
    gives; either way naming the plot written."""
    if doc is not None:
        doc["plot"] = args.plot
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    sys.stdout.write(text())
    if args.plot is not None:
        sys.stdout.write(f"plot: {args.plot}\n")


def _grid(args: argparse.Namespace) -> Grid:
    return Grid(
        algorithms=parse_list("--try-z", args.try_z, ALGORITHMS),
        pclusters=parse_sizes("--try-C", args.try_C),
        extents=parse_sizes("--try-max-extent", args.try_max_extent, unbounded=True),
        tails=parse_list("--try-tail", args.try_tail, TAILS),
        formats=tuple(
            "erofs" if f == "erofs" else "cramfs"
            for f in parse_list("--try-format", args.try_format, ("erofs", "cramfs"))
        ),
    )


def _bar(state: Progress) -> None:
    """One progress line on stderr, redrawn in place."""
    line = ", ".join(iter_progress_line(state, time.monotonic()))
    sys.stderr.write(f"\r\x1b[Knommufs budget --suggest: {line}")
    sys.stderr.flush()


def run_suggest(args: argparse.Namespace) -> int:
    """``--suggest``: the search, its table (or JSON) and plot."""
    mms = tuple(dict.fromkeys(args.mm or ("nommu-contig",)))
    if len(mms) > 1:
        raise InvalidArgumentError("--suggest: give one --mm, the board's (default nommu-contig)")
    if args.offset:
        raise InvalidArgumentError("--suggest: --offset does not apply (IMAGE is a source)")
    board = Board(args.arena, args.flash, mms[0])
    tty = sys.stderr.isatty()
    result = suggest(
        args.image,
        board,
        workload=args.workload,
        grid=_grid(args),
        strategies=tuple(dict.fromkeys(args.decompress)) if args.decompress else None,
        jobs=args.jobs,
        progress=_bar if tty else None,
    )
    if tty:
        sys.stderr.write("\r\x1b[K")
    if args.plot is not None:
        from fusefs.budget.plot import write_suggest_plot

        write_suggest_plot(result, args.plot)
    _emit(args, result.to_json() if args.json else None, lambda: suggestion_table(result))
    if args.fail_if_none_fits and result.recommended is None:
        return EXIT_NONE_FITS
    return 0
