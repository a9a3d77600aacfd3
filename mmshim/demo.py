"""The seed's question in numbers: one scattered 16-page pcluster under each mode.

A compressed EROFS read decompresses a physical cluster into 16 page cache
pages that sit wherever the allocator put them: here every other frame, the
frames in between held by other files.  The decompressor needs one
virtually contiguous buffer, so the pages are vmapped, filled through the
view, and unmapped.  While the buffer is mapped, another reader writes one
of the pages directly (what Pedro warned about: users expecting the pages
to be *shared*).

:func:`scattered_pcluster_report` returns, per mode, whether the vmap
worked, how many bytes were copied, how many writes were lost, and the
peak arena use.  ``python -m mmshim.demo`` prints it as a table.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmshim._arena import MM_MODES, Arena
from mmshim._errors import VmapError
from mmshim._page import PAGE_SIZE, Owner, Page


@dataclass(frozen=True, slots=True)
class PclusterResult:
    """What one vmap of the scattered pcluster did under one mode."""

    mode: str
    fragmented: bool
    ok: bool  # the vmap succeeded
    how: str  # "remap", "direct", "bounce", or why it failed
    bytes_copied: int
    lost_writes: int
    peak_frames: int  # arena high-water mark during the read
    extra_frames: int  # frames the vmap itself needed beyond the pcluster's pages
    data_ok: bool  # every page ends up holding the decompressed data
    shared_write_kept: bool  # the direct write made while mapped survived


def _fill_pattern(index: int) -> bytes:
    return bytes([0x40 + index]) * PAGE_SIZE


def _read_pcluster(mode: str, nr_pages: int, fragmented: bool) -> PclusterResult:
    # 2*nr frames hold the pcluster's pages and the other files' pages in
    # between; the rest is free, in one block, or (fragmented) as every
    # other frame so that no two free frames are adjacent.
    arena = Arena(4 * nr_pages * PAGE_SIZE, mode)
    try:
        all_pages = [
            arena.alloc_pages(0, Owner.page_cache("other", i)) for i in range(2 * nr_pages)
        ]
        cluster = all_pages[::2]
        others = all_pages[1::2]
        for i, page in enumerate(cluster):
            arena.set_owner(page, Owner.page_cache("file", i))
        filler: list[Page] = []
        if fragmented:
            filler = [arena.alloc_pages(0) for _ in range(2 * nr_pages)]
            for page in filler[1::2]:
                arena.free_pages(page)
            filler = filler[::2]
        base = arena.stats
        arena.reset_peak()
        shared = b"written-by-another-reader"
        try:
            m = arena.vmap(cluster)
        except VmapError as e:
            how = {
                "not-contiguous": "ENOMEM: pages not contiguous",
                "no-bounce-buffer": "ENOMEM: no contiguous bounce buffer",
            }.get(e.reason, f"ENOMEM: {e.reason}")
            ok, data_ok, kept, lost = False, False, False, 0
        else:
            with m:
                how = m.kind.value
                for i in range(nr_pages):  # "decompress" into the virtual buffer
                    m.view[i * PAGE_SIZE : (i + 1) * PAGE_SIZE] = _fill_pattern(i)
                arena.page_view(cluster[7])[: len(shared)] = shared
            ok = True
            lost = m.lost_writes
            kept = bytes(arena.page_view(cluster[7])[: len(shared)]) == shared
            data_ok = all(
                bytes(arena.page_view(p)[len(shared) if i == 7 else 0 :])
                == _fill_pattern(i)[len(shared) if i == 7 else 0 :]
                for i, p in enumerate(cluster)
            )
        after = arena.stats
        for page in (*cluster, *others, *filler):
            arena.free_pages(page)
        return PclusterResult(
            mode=mode,
            fragmented=fragmented,
            ok=ok,
            how=how,
            bytes_copied=after.bounce_bytes - base.bounce_bytes,
            lost_writes=lost,
            peak_frames=after.frames_peak,
            extra_frames=after.frames_peak - base.frames_used,
            data_ok=data_ok,
            shared_write_kept=kept,
        )
    finally:
        arena.close()


def scattered_pcluster_report(
    nr_pages: int = 16, *, fragmented: bool | None = None
) -> list[PclusterResult]:
    """Vmap, fill and unmap the same scattered pcluster under each mode.

    By default one row per mode in an arena with a contiguous free block,
    then ``nommu-bounce`` again in a fragmented arena that has as many free
    frames as the pcluster but no two adjacent.  ``fragmented=False`` or
    ``True`` gives only those rows.
    """
    rows = []
    if not fragmented:
        rows += [_read_pcluster(mode, nr_pages, False) for mode in MM_MODES]
    if fragmented is None or fragmented:
        rows += [_read_pcluster("nommu-bounce", nr_pages, True)]
    return rows


def format_report(rows: list[PclusterResult]) -> str:
    """The rows as a plain-text table."""
    head = ("mode", "arena", "vmap", "copied", "lost", "write while mapped", "peak", "extra")
    lines = [head]
    for r in rows:
        if not r.ok:
            shared = "-"
        elif r.shared_write_kept:
            shared = "kept (shared)"
        else:
            shared = "lost (not shared)"
        lines.append(
            (
                r.mode,
                "fragmented" if r.fragmented else "free block",
                r.how,
                f"{r.bytes_copied // 1024} KiB",
                str(r.lost_writes),
                shared,
                f"{r.peak_frames} frames",
                f"+{r.extra_frames}",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def main() -> None:
    rows = scattered_pcluster_report()
    print("One scattered 16-page pcluster (every other frame of a 64-frame arena):")
    print("vmap, decompress through the view, another reader writes page 7 directly")
    print("while it is mapped, vunmap.  copied = bounce bytes in and out; lost = writes")
    print("the copy-back overwrote; extra = frames the vmap needed beyond the pages.")
    print()
    print(format_report(rows))


if __name__ == "__main__":
    main()
