"""``budget --suggest``'s answer as text: one table sorted by fit, the
recommendation for the board, and what sets the minimum of the best rows.

How to read the table (the README says the same):

* ``fit``: ``yes`` when the variant's RAM (its best strategy's minimum
  arena) is at most the board's arena and its image at most the flash;
* ``front``: ``*`` on the Pareto front (no variant is smaller in both image
  bytes and RAM);
* one column per strategy: that strategy's minimum arena (``none``: does not
  run whole even in the board's arena); cramfs has one way to decode (its
  own column);
* ``RAM`` / ``strategy``: the best of them; ``copied``: bytes that strategy
  copies at the board's arena (``-``: it fails there);
* ``exec``: cramfs rows of a tree with programs: the arena to load them all;
* ``options``: the mkimage options; the recommendation prints the whole line.
"""

from __future__ import annotations

from collections.abc import Iterator

from fusefs.budget.suggest import Measured, Row, Suggestion
from fusefs.budget.units import kib


def _min(m: Measured | None) -> str:
    if m is None:
        return ""
    return "none" if m.min_arena_bytes is None else kib(m.min_arena_bytes)


def _rows(s: Suggestion) -> Iterator[dict[str, str]]:
    has_exec = any(r.exec is not None for r in s.rows)
    for n, r in enumerate(s.rows, 1):
        best = r.best
        row = {
            "#": str(n),
            "fit": "yes" if r.fits(s.board) else "no",
            "front": "*" if r.front else "",
            "image": "-" if r.image_bytes is None else kib(r.image_bytes),
        }
        for strategy in s.strategies:
            row[strategy] = _min(r.measured.get(strategy))
        row["cramfs"] = _min(r.measured.get("-"))  # one way to decode, no strategy
        row["RAM"] = "-" if r.ram is None else kib(r.ram)
        row["strategy"] = "-" if best is None else (best.strategy or "-")
        row["copied"] = "-" if best is None or best.copy_bytes is None else kib(best.copy_bytes)
        if has_exec:
            row["exec"] = _min(r.exec)
        row["format"] = r.variant.format
        row["options"] = " ".join(r.variant.options) or "(none)"
        if r.error is not None:
            row["options"] += f"  [failed: {r.error}]"
        elif r.same_as is not None:
            row["options"] += "  [same image as a row above]"
        elif r.over_flash:
            row["options"] += "  [over the flash: not replayed]"
        yield row


def recommendation(s: Suggestion) -> list[str]:
    """The pick, or why there is none, with the line that builds it."""
    b = s.board
    board = f"{kib(b.arena_bytes)} RAM" + (
        f" and {kib(b.flash_bytes)} flash" if b.flash_bytes is not None else ""
    )
    rec = s.recommended
    if rec is not None and rec.best is not None and rec.image_bytes is not None:
        strategy = rec.best.strategy or "(cramfs: one way)"
        lines = [
            f"recommended: fits in {board} ({b.mm}): {rec.variant.command()}; "
            f"strategy {strategy}; {kib(rec.ram or 0)} RAM, {kib(rec.image_bytes)} image"
        ]
        if s.fails_above_min:
            shown = ", ".join(kib(n) for n in s.fails_above_min[:4])
            fits = "no sampled size" if s.fits_from_bytes is None else kib(s.fits_from_bytes)
            lines.append(
                f"  (fragmentation: it fails again at {shown} above that minimum; every sampled"
                f" size from {fits} up fits -- budget for that)"
            )
        return lines
    measured = [r for r in s.rows if r.ram is not None]
    lines = [f"nothing in the grid fits {board} ({b.mm})"]
    if measured:
        closest = min(measured, key=lambda r: (r.ram or 0, r.image_bytes or 0, r.variant.key))
        lines[0] += (
            f"; the least RAM: {closest.variant.command()} needs {kib(closest.ram or 0)}"
            f" ({kib(closest.image_bytes or 0)} image)"
        )
    return lines


def _critical(s: Suggestion) -> Iterator[str]:
    """What sets the minimum of the recommended row (or of the rows on the front)."""
    rows: list[Row] = [s.recommended] if s.recommended is not None else [
        r for r in s.rows if r.front]  # fmt: skip
    for r in rows:
        best = r.best
        if best is not None and best.critical is not None:
            yield f"  {r.variant.command()}: {best.critical.text()}"


def suggestion_table(s: Suggestion) -> str:
    """The whole answer as text."""
    b = s.board
    distinct = len({r.digest for r in s.rows if r.digest is not None})
    head = (
        f"{s.source}: {len(s.rows)} variants ({distinct} distinct images, {s.replays} "
        f"find-min searches, {s.seconds:.0f} s) for a {kib(b.arena_bytes)} board ({b.mm})"
        + (f", flash {kib(b.flash_bytes)}" if b.flash_bytes is not None else "")
        + f", workload {s.workload}"
    )
    rows = list(_rows(s))
    cols = [c for c in rows[0] if any(r[c] for r in rows)] if rows else []
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = [head, "  ".join(c.ljust(widths[c]) for c in cols).rstrip()]
    lines += ["  ".join(r[c].ljust(widths[c]) for c in cols).rstrip() for r in rows]
    lines += recommendation(s)
    critical = list(_critical(s))
    if critical:
        lines.append("what sets the minimum (the failure one page below it):")
        lines += critical
    return "\n".join(lines) + "\n"
