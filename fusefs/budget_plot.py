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
from fusefs.budget import OWNER_KINDS, BudgetReport
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


def write_plot(report: BudgetReport, out: str | os.PathLike[str]) -> None:
    """Draw ``report`` (replayed with ``record=True``) into ``out`` (.png, .svg, .pdf)."""
    plot_format(out)
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    results = [r for r in report.results if r.samples]
    if not results:
        raise FsError("--plot: no occupancy was recorded")
    ncols = min(4, len(results))
    nrows = math.ceil(len(results) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), sharey=True, squeeze=False
    )
    total = report.arena_bytes // 4096
    try:
        for ax, res in zip(axes.flat, results, strict=False):
            xs = [s.event for s in res.samples]
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
            right.tick_params(labelsize=7, colors="#c44e52")
            extra = right
            title = f"{res.mm}" + (f" + {res.decompress}" if res.decompress else "")
            verdict = "ok" if res.ok else "FAILED"
            ax.set_title(f"{title}: {verdict}, peak {res.peak_frames}", fontsize=9)
            ax.set_ylim(0, total)
            ax.set_xlabel("arena event", fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in axes.flat[len(results) :]:
            ax.set_visible(False)
        for row in axes:
            row[0].set_ylabel("frames (4 KiB)", fontsize=8)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        more_handles, more_labels = extra.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8)
        fig.suptitle(
            f"{os.path.basename(report.image)} ({report.format}), arena {total} frames, "
            f"workload {report.workload.label}",
            fontsize=10,
        )
        fig.tight_layout(rect=(0, 0.05, 1, 0.96))
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
    with atomic_output(out) as f:
        fig.savefig(f, format=plot_format(out), dpi=100)
