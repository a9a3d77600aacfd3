"""The budget question: does this image fit on the board, and how should it
decompress?  And when it does not: why, and how should it be built?

A *workload* (:mod:`.workload`: every regular file read in full, a list of
files, or every ELF program mapped as a loader would, :mod:`.loader`) is
replayed (:mod:`.replay`) against a fresh open of the image -- a fresh arena
-- for each combination of arena mode and decompression strategy; each
replay yields a :class:`BudgetResult` (:mod:`.result`).  :mod:`.minimum`
bisects, to the page, the smallest arena in which the whole workload
succeeds; :mod:`.report` runs every combination into a :class:`BudgetReport`
and :mod:`.plot` draws it.
"""

from __future__ import annotations

from fusefs.budget.explain import Explanation, Knob
from fusefs.budget.minimum import find_fits_from, find_min_arena
from fusefs.budget.replay import READ_CHUNK, Prober, default_combinations, replay
from fusefs.budget.report import budget, footnotes, iter_rows
from fusefs.budget.result import BudgetReport, BudgetResult, Combination, XipRead
from fusefs.budget.samples import MAX_SAMPLES, OWNER_KINDS, Recorder, Sample
from fusefs.budget.units import kib
from fusefs.budget.workload import (
    WorkFile,
    Workload,
    WorkloadKind,
    all_files,
    listed_files,
    load_workload,
    parse_workload,
)

__all__ = [
    "MAX_SAMPLES",
    "OWNER_KINDS",
    "READ_CHUNK",
    "BudgetReport",
    "BudgetResult",
    "Combination",
    "Explanation",
    "Knob",
    "Prober",
    "Recorder",
    "Sample",
    "WorkFile",
    "Workload",
    "WorkloadKind",
    "XipRead",
    "all_files",
    "budget",
    "default_combinations",
    "find_fits_from",
    "find_min_arena",
    "footnotes",
    "iter_rows",
    "kib",
    "listed_files",
    "load_workload",
    "parse_workload",
    "replay",
]
