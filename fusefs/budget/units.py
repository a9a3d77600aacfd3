"""Sizes as a board maker reads them: ``272K``, ``3.5M``."""

from __future__ import annotations


def kib(n: int) -> str:
    """``n`` bytes in KiB (whole or one decimal), or MiB from 10 MiB up."""
    if n >= 10 << 20:
        return f"{n / (1 << 20):.1f}M"
    if n % 1024 == 0:
        return f"{n >> 10}K"
    return f"{n / 1024:.1f}K"
