"""The writer's errors: part of nommufs's one hierarchy (:class:`~fusefs.errors.FsError`).

The reader's errors say what is wrong with an image; these say why an image
could not be *built*, naming the source path, option or table line at fault.
"""

from __future__ import annotations

import errno as _errno

from fusefs.errors import FsError


class BuildError(FsError):
    """mkimage could not build the image; the message names the source path
    or option: ``sub/file: cannot read: Permission denied``."""

    errno = _errno.EINVAL
