"""Options shared by several subcommands."""

from __future__ import annotations

import argparse
import re

from fusefs.vfs import DEFAULT_ARENA_BYTES, MM_MODES, STRATEGIES, MemoryConfig

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)(i?[bB])?\s*$")


def parse_size(text: str) -> int:
    """Bytes from ``4096``, ``1536K``, ``64M`` or ``3.5M`` (binary units)."""
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (examples: 4096, 1536K, 3.5M)")
    scaled = float(m.group(1)) * (1 << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()])
    if scaled != int(scaled):
        raise argparse.ArgumentTypeError(f"size {text!r} is not a whole number of bytes")
    return int(scaled)


def add_memory_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("simulated machine")
    g.add_argument("--mm", choices=MM_MODES, default="mmu", help="arena mode (default: mmu)")
    g.add_argument(
        "--decompress", choices=STRATEGIES, default="vmap", help="decompression strategy (default: vmap)"
    )
    g.add_argument(
        "--arena",
        type=parse_size,
        default=DEFAULT_ARENA_BYTES,
        metavar="SIZE",
        help="arena size, a multiple of 4 KiB (default: 64M)",
    )


def memory_from_args(args: argparse.Namespace) -> MemoryConfig:
    return MemoryConfig(
        mm=args.mm,
        decompress=args.decompress,
        arena_bytes=args.arena,
        xip_read=getattr(args, "xip_read", "pagecache"),
    )
