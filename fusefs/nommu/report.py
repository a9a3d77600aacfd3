"""The comparison as a Markdown table (the README's, and the script's output)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fusefs.vfs import PAGE_SIZE

_PAGE_KIB = PAGE_SIZE // 1024


def _kernel_outcome(k: dict[str, Any]) -> str:
    if k["bug"]:
        b = k["bug"]
        return f"BUG at {b['where']} in {b['function']} <- {b['called_from'][0]} (mount)"
    if k["outcome"] == "mount-failed":
        return f"mount: errno {k['mount_errno']}"
    bad = f", {len(k['bad_files'])} files differ" if k["bad_files"] else ""
    return f"{k['outcome']}{bad}"


def _model_outcome(m: dict[str, Any] | None) -> str:
    if m is None:
        return "(not modelled)"
    if m["ok"]:
        return f"{m['combination']}: ok"
    where = "mount" if str(m["failure"]).startswith("mount:") else "read"
    return f"{m['combination']}: fails at {where}"


def _pair(kernel: int | None, model: int | None) -> str:
    if kernel is None and model is None:
        return "-"
    return f"{'-' if kernel is None else kernel} / {'-' if model is None else model}"


def table(doc: dict[str, Any]) -> Iterator[str]:
    """One row per case: the kernel's outcome and numbers next to the model's."""
    yield ("| case | kernel | model | page cache after reading, pages (kernel / model) "
           "| mmap copies, pages (kernel / model) | smallest RAM (kernel: -m, free after boot; "
           "model: min arena) |")
    yield "|---|---|---|---|---|---|"
    for c in doc["cases"]:
        k, m = c["kernel"], c["model"]
        cached = None if k["cached_delta_kib"] is None else k["cached_delta_kib"] // _PAGE_KIB
        copies = sum(k["mmap_copy_pages"]) if k["mmap_copy_pages"] else None
        flash = f" ({k['segments_in_flash']} segments in flash)" if k["segments_in_flash"] else ""
        exec_frames = None if m is None else m["exec_frames"]
        exec_cell = _pair(copies, exec_frames) + flash
        if copies is not None and m is not None and exec_frames is None:
            exec_cell = f"{copies} / (no loader for {c['case'].split('-')[0]})"
        ram = "; ".join(
            f"{w}: {r['kernel_min_kib']}K, {r['mem_free_after_boot_at_min_kib']}K free / "
            + ("-" if r["model_min_arena_kib"] is None else f"{r['model_min_arena_kib']}K")
            for w, r in c.get("min_ram", {}).items()) or "-"
        model_cached = None if m is None else m["page_cache_frames"]
        yield (f"| {c['case']} ({c['kernel_variant']}) | {_kernel_outcome(k)} | "
               f"{_model_outcome(m)} | {_pair(cached, model_cached)} | {exec_cell} | {ram} |")
    if doc.get("boot_floor_kib") is not None:
        yield ""
        yield (f"Boot floor (no image, no virtio-blk): {doc['boot_floor_kib']}K, "
               f"{doc['boot_floor_mem_free_kib']}K free after boot.")
