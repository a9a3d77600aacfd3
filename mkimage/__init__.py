"""Building EROFS and cramfs images from a directory.

Public API:

* :mod:`mkimage.tree` -- the format-neutral source model: :func:`~mkimage.tree.scan`
  (directory or tar, excludes, ownership rules, device table) into a
  :class:`~mkimage.tree.Tree` of :class:`~mkimage.tree.Node`, and
  :func:`~mkimage.tree.atomic_output` (no partial image ever left at OUT);
* :func:`mkimage.erofs.writer.build_erofs` with :class:`~mkimage.erofs.writer.ErofsOptions`
  (validated from a command line by :func:`mkimage.erofs.cli.options_from_args`);
* :mod:`mkimage.cli` -- ``nommufs mkimage FORMAT`` / ``python -m mkimage FORMAT``.
"""

from __future__ import annotations

# First: importing it decides whether the compiled hot modules (three of
# them this package's) are used, before any of them is imported.
from mmshim import _compiled  # noqa: F401  isort: skip
