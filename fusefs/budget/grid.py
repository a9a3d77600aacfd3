"""The build options ``budget --suggest`` tries: a grid of mkimage command
lines (:class:`Variant`), pruned of what cannot differ.

Each variant is the exact ``nommufs mkimage`` command line that builds it,
so the table's winner can be reproduced by pasting its line.  The grid:

* EROFS: ``-z`` (lz4, lz4hc, zstd, deflate, lzma) x ``-C`` (pcluster size)
  x ``--max-extent-bytes`` (a few sizes and ``unbounded``, the 12 MiB the
  kernel decodes at most) x tail packing (``-E ztailpacking``, ``-E
  fragments``, both, or neither);
* cramfs: plain, ``-X`` and ``-X -X`` (the last two only when the tree has
  ELF programs: XIP changes nothing else).

Pruned before anything is built, because the images would be the same:

* a ``--max-extent-bytes`` below ``-C``: a pcluster never holds more
  compressed bytes than its extent decodes, so ``-C`` above the bound is
  the bound (the variant with ``-C`` equal to it is kept);
* a ``--max-extent-bytes`` at least the largest file: no extent can reach
  it, so it is ``unbounded`` (the larger one is kept).

Every build also gets ``-T 0 --mkfs-time`` (EROFS; files keep their own
mtimes) so that the same tree gives the same image, hence the same table.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from fusefs.errors import InvalidArgumentError
from fusefs.vfs import parse_size
from mkimage.erofs.compress import MAX_EXTENT_BYTES_LIMIT

ImageFormat = Literal["erofs", "cramfs"]
ALGORITHMS: Final = ("lz4", "lz4hc", "zstd", "deflate", "lzma")
TAILS: Final = ("plain", "ztailpacking", "fragments", "ztailpacking+fragments")
UNBOUNDED: Final = MAX_EXTENT_BYTES_LIMIT
XIP_LEVELS: Final = (0, 1, 2)
# the default grid: every algorithm; pcluster sizes up to 64 KiB; extents
# bounded at 64 KiB or not; tails packed (both ways) or not
DEFAULT_PCLUSTERS: Final = (4096, 16384, 65536)
DEFAULT_EXTENTS: Final = (65536, UNBOUNDED)
DEFAULT_TAILS: Final = ("plain", "ztailpacking+fragments")
REPRODUCIBLE: Final = ("-T", "0", "--mkfs-time")


@dataclass(frozen=True, slots=True)
class Variant:
    """One build: ``nommufs mkimage FORMAT OPTIONS...`` (OUT and SRC apart)."""

    format: ImageFormat
    options: tuple[str, ...]

    def argv(self, out: str, src: str) -> list[str]:
        """The mkimage arguments (after ``mkimage``): erofs takes OUT SRC, cramfs SRC OUT."""
        where = [out, src] if self.format == "erofs" else [src, out]
        return [self.format, *self.options, *where]

    def command(self, out: str = "OUT.img", src: str = "SRC") -> str:
        return " ".join(["nommufs", "mkimage", *self.argv(out, src)])

    @property
    def key(self) -> tuple[str, tuple[str, ...]]:
        """A total order: the same grid sorts the same way every time."""
        return self.format, self.options


@dataclass(frozen=True, slots=True)
class Grid:
    """What to try; :meth:`variants` lists the builds after pruning."""

    algorithms: tuple[str, ...] = ALGORITHMS
    pclusters: tuple[int, ...] = DEFAULT_PCLUSTERS
    extents: tuple[int, ...] = DEFAULT_EXTENTS
    tails: tuple[str, ...] = DEFAULT_TAILS
    formats: tuple[ImageFormat, ...] = ("erofs", "cramfs")

    def variants(self, largest_file: int, has_programs: bool) -> list[Variant]:
        """Every variant worth building for a tree whose largest regular file
        has ``largest_file`` bytes, in a fixed order (see the module's rules)."""
        out: list[Variant] = []
        if "erofs" in self.formats:
            out += self._erofs(largest_file)
        if "cramfs" in self.formats:
            for xip in XIP_LEVELS if has_programs else (0,):
                out.append(Variant("cramfs", ("-X",) * xip))
        return out

    def _erofs(self, largest_file: int) -> Iterator[Variant]:
        extents = sorted(set(self.extents))
        # a bound no file reaches is the unbounded image: keep the largest such one
        reached = [e for e in extents if e < largest_file]
        beyond = [e for e in extents if e >= largest_file]
        if beyond:
            reached.append(max(beyond))
        for alg in self.algorithms:
            for pcluster in sorted(set(self.pclusters)):
                for ext in reached:
                    if ext < pcluster:
                        continue  # the same as -C ext (kept where the grid has it)
                    for tail in self.tails:
                        yield Variant("erofs", _erofs_options(alg, pcluster, ext, tail))


def _erofs_options(alg: str, pcluster: int, ext: int, tail: str) -> tuple[str, ...]:
    # the bound is always written: mkimage's own default (1 MiB) is neither
    opts = ["-z", alg, "-C", str(pcluster), "--max-extent-bytes", str(ext)]
    if tail != "plain":
        opts += ["-E", tail.replace("+", ",")]
    return (*opts, *REPRODUCIBLE)


def parse_list(flag: str, text: str, choices: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated list of ``choices``; InvalidArgumentError naming the bad one."""
    items = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    for item in items:
        if item not in choices:
            raise InvalidArgumentError(f"{flag} {item}: not one of {', '.join(choices)}")
    if not items:
        raise InvalidArgumentError(f"{flag}: empty list")
    return items


def parse_sizes(flag: str, text: str, *, unbounded: bool = False) -> tuple[int, ...]:
    """Comma-separated sizes (``4096,16K``; ``unbounded`` where allowed), each a
    power of two from 4 KiB."""
    out: list[int] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if unbounded and item == "unbounded":
            out.append(UNBOUNDED)
            continue
        size = parse_size(item)
        if size < 4096 or size & (size - 1):
            raise InvalidArgumentError(f"{flag} {item}: not a power of two from 4096")
        out.append(size)
    if not out:
        raise InvalidArgumentError(f"{flag}: empty list")
    return tuple(dict.fromkeys(out))
