"""Building an image from Python: :func:`build_image`, ``nommufs mkimage`` in-process."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from fusefs.cmdline import UsageError, parse, run_chosen
from fusefs.errors import InvalidArgumentError
from mkimage.cli import parser as mkimage_parser

OptionValue = bool | int | str | os.PathLike[str] | Sequence[bool | int | str] | None


def mkimage_flags(options: dict[str, OptionValue]) -> list[str]:
    """Keyword options as ``nommufs mkimage`` flags: ``z="lz4hc,12"`` is
    ``-z lz4hc,12``, ``all_root=True`` is ``--all-root``, ``exclude_path=["a",
    "b"]`` repeats the flag, ``X=[True, True]`` is ``-X -X``; False and None
    leave a flag out."""
    flags: list[str] = []
    for key, value in options.items():
        flag = f"-{key}" if len(key) == 1 else f"--{key.replace('_', '-')}"
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v is True:
                flags.append(flag)
            elif v is not False and v is not None:
                flags += [flag, os.fspath(v) if isinstance(v, os.PathLike) else str(v)]
    return flags


def build_image(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *flags: str,
    format: Literal["erofs", "cramfs"] = "erofs",
    **options: OptionValue,
) -> Path:
    """Build ``out`` from the directory (or, with ``tar=True``, tar file) ``src``.

    ``flags`` and ``options`` are ``nommufs mkimage FORMAT``'s, spelled as
    :func:`mkimage_flags` says: ``build_image(tree, "root.img", z="lz4hc",
    C=16384, T=0, all_root=True)``.  The image appears whole at ``out`` or not
    at all.  Raises InvalidArgumentError for a bad option,
    :class:`~mkimage.errors.BuildError` naming the source path for anything
    that cannot go into the image.  Returns ``out``.
    """
    src_s, out_s = os.fspath(src), os.fspath(out)
    quiet = ["-q"] if format == "erofs" else []  # cramfs is quiet without -v; its -q is owners
    positional = [out_s, src_s] if format == "erofs" else [src_s, out_s]
    argv = [format, *quiet, *flags, *mkimage_flags(options), *positional]
    try:
        args = parse(mkimage_parser(), argv)
    except UsageError as e:
        raise InvalidArgumentError(f"mkimage {format}: {e}") from None
    run_chosen(args, "format")
    return Path(out_s)
