"""Arena occupancy over a budget workload, one panel per combination, as a
PNG, SVG or PDF (what the file's extension names).

matplotlib is imported only here and only when a plot is asked for, with the
Agg backend (no display needed).  The file is written to a temporary name
beside the target and renamed, so a failed plot leaves nothing half-written.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import TYPE_CHECKING, Final

from fusefs.atomicfile import atomic_output
from fusefs.budget.result import BudgetReport
from fusefs.budget.samples import OWNER_KINDS
from fusefs.budget.suggest import Suggestion
from fusefs.errors import FsError, InvalidArgumentError, UnsupportedFeatureError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PLOT_FORMATS: Final = ("png", "svg", "pdf")
COLOURS: Final[dict[str, str]] = {
    "page_cache": "#4c72b0",
    "decompress": "#dd8452",
    "bounce": "#c44e52",
    "percpu": "#8172b3",
    "other": "#937860",
    "free": "#e8e8e8",
}


def _bytes(x: float, _pos: object = None) -> str:
    """An axis tick in bytes: 0, 512K, 3.5M."""
    for unit, shift in (("M", 20), ("K", 10)):
        if abs(x) >= 1 << shift:
            return f"{x / (1 << shift):.3g}{unit}"
    return f"{x:.0f}"


def _tick_step(span: int) -> int:
    """A power of two (bytes) giving four to eight ticks over ``span``."""
    step = 1
    while span // step > 8:
        step *= 2
    return step


def write_plot(report: BudgetReport, out: str | os.PathLike[str]) -> None:
    """Draw ``report`` (replayed with ``record=True``) into ``out`` (.png, .svg, .pdf).

    One panel per combination: arena frames by owner over the bytes of the
    workload read so far, the largest free block, and (right axis, labelled)
    the short-lived decompression and bounce buffers; a combination that
    failed ends in a red FAIL line where it stopped.  A single combination
    gets a figure of its own size, with the legend beside it."""
    plot_format(out)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    results = [r for r in report.results if r.samples]
    if not results:
        raise FsError("--plot: no occupancy was recorded")
    single = len(results) == 1
    ncols = min(4, len(results))
    nrows = math.ceil(len(results) / ncols)
    size = (9.0, 4.5) if single else (4.2 * ncols, 3.0 * nrows)
    fig, axes = plt.subplots(nrows, ncols, figsize=size, sharey=True, squeeze=False)
    total = report.arena_bytes // 4096
    small = 9 if single else 7
    try:
        for ax, res in zip(axes.flat, results, strict=False):
            xs = [s.bytes_read for s in res.samples]
            layers = [[s.by_owner[i] for s in res.samples] for i in range(len(OWNER_KINDS))]
            layers.append([s.free for s in res.samples])
            names = [*OWNER_KINDS, "free"]
            ax.stackplot(xs, *layers, labels=names, colors=[COLOURS[n] for n in names], step="post")
            ax.step(
                xs,
                [s.largest_free for s in res.samples],
                where="post",
                color="black",
                linewidth=0.8,
                label="largest free block",
            )
            # short-lived buffers are a few frames next to hundreds of cached
            # ones: give them their own scale on the right
            transient = [
                s.by_owner[OWNER_KINDS.index("decompress")]
                + s.by_owner[OWNER_KINDS.index("bounce")]
                for s in res.samples
            ]
            right = ax.twinx()
            right.step(
                xs,
                transient,
                where="post",
                color="#c44e52",
                linewidth=0.6,
                label="decompress + bounce (right axis)",
            )
            right.set_ylim(0, max(8, int(max(transient) * 1.25)))
            right.tick_params(labelsize=small, colors="#c44e52")
            right.set_ylabel("decompress + bounce frames", fontsize=small + 1, color="#c44e52")
            extra = right
            if not res.ok:
                ax.axvline(xs[-1], color="red", linewidth=1.5, linestyle="--")
                ax.text(xs[-1], total * 0.97, "FAIL ", color="red", fontweight="bold",
                        fontsize=small + 2, va="top", ha="right")  # fmt: skip
            title = f"{res.mm}" + (f" + {res.decompress}" if res.decompress else "")
            verdict = "ok" if res.ok else "FAILED"
            ax.set_title(f"{title}: {verdict}, peak {res.peak_frames}", fontsize=small + 2)
            ax.set_ylim(0, total)
            ax.set_xlim(0, max(xs[-1], 1))
            ax.xaxis.set_major_locator(MultipleLocator(_tick_step(max(xs[-1], 1))))
            ax.xaxis.set_major_formatter(FuncFormatter(_bytes))
            ax.set_xlabel("bytes read", fontsize=small + 1)
            ax.tick_params(labelsize=small)
        for ax in axes.flat[len(results) :]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel("arena frames (4 KiB)", fontsize=small + 1)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        more_handles, more_labels = extra.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
        ncol = 4 if single else len(labels)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=small - 1 if single
                   else 8)  # fmt: skip
        fig.suptitle(
            f"{os.path.basename(report.image)} ({report.format}), arena {total} frames, "
            f"workload {report.workload.label}",
            fontsize=10,
        )
        rect = (0, 0.12, 1, 0.95) if single else (0, 0.05, 1, 0.96)
        fig.tight_layout(rect=rect)
        _save(fig, os.fspath(out))
    finally:
        plt.close(fig)


def plot_format(out: str | os.PathLike[str]) -> str:
    """The file format ``out``'s extension names (png, svg or pdf);
    InvalidArgumentError for any other, before anything is replayed."""
    ext = os.path.splitext(os.fspath(out))[1].lower().lstrip(".")
    if ext not in PLOT_FORMATS:
        raise InvalidArgumentError(
            f"--plot {os.fspath(out)}: unknown format {ext or '(no extension)'!r}"
            f" (use .{', .'.join(PLOT_FORMATS)})"
        )
    if importlib.util.find_spec("matplotlib") is None:
        raise UnsupportedFeatureError("--plot needs matplotlib (pip install 'nommufs[plot]')")
    return ext


def _save(fig: Figure, out: str) -> None:
    import matplotlib

    # SVG keeps its text as text (searchable, selectable), not as outlines
    with matplotlib.rc_context({"svg.fonttype": "none"}), atomic_output(out) as f:
        fig.savefig(f, format=plot_format(out), dpi=100)


def write_suggest_plot(s: Suggestion, out: str | os.PathLike[str]) -> None:
    """Draw ``budget --suggest``'s variants as image bytes (flash) against
    minimum arena (RAM), the Pareto front joined, the board's limits dashed
    and the recommendation ringed, into ``out`` (.png, .svg, .pdf)."""
    plot_format(out)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import FuncFormatter

    points = [(r, r.image_bytes, r.ram) for r in s.rows
              if r.image_bytes is not None and r.ram is not None and r.same_as is None]  # fmt: skip
    if not points:
        raise FsError("--plot: no variant was measured")
    fig, ax = plt.subplots(figsize=(9.0, 5.5))
    try:
        for fmt, marker in (("erofs", "o"), ("cramfs", "s")):
            xs = [x for r, x, _y in points if r.variant.format == fmt]
            ys = [y for r, _x, y in points if r.variant.format == fmt]
            if xs:
                ax.scatter(xs, ys, marker=marker, s=18, color="#4c72b0" if fmt == "erofs"
                           else "#8172b3", alpha=0.7, label=fmt)  # fmt: skip
        front = sorted((x, y) for r, x, y in points if r.front)
        ax.step([x for x, _ in front], [y for _, y in front], where="post", color="#c44e52",
                linewidth=1.2, label="Pareto front")  # fmt: skip
        ax.scatter([x for x, _ in front], [y for _, y in front], s=30, color="#c44e52")
        ax.axhline(s.board.arena_bytes, color="black", linestyle="--", linewidth=0.8,
                   label=f"board RAM {_bytes(s.board.arena_bytes)}")  # fmt: skip
        if s.board.flash_bytes is not None:
            ax.axvline(s.board.flash_bytes, color="grey", linestyle="--", linewidth=0.8,
                       label=f"board flash {_bytes(s.board.flash_bytes)}")  # fmt: skip
        rec = s.recommended
        if rec is not None and rec.image_bytes is not None and rec.ram is not None:
            ax.scatter([rec.image_bytes], [rec.ram], s=160, facecolors="none",
                       edgecolors="green", linewidths=2, label="recommended")  # fmt: skip
        ax.xaxis.set_major_formatter(FuncFormatter(_bytes))
        ax.yaxis.set_major_formatter(FuncFormatter(_bytes))
        ax.set_xlabel("image bytes (flash)")
        ax.set_ylabel("minimum arena, best strategy (RAM)")
        ax.set_title(f"{os.path.basename(s.source.rstrip('/'))}: {len(points)} images, "
                     f"{s.board.mm}, workload {s.workload}", fontsize=10)  # fmt: skip
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        _save(fig, os.fspath(out))
    finally:
        plt.close(fig)
