"""The FUSE front end (pyfuse3 on trio): the only package importing either."""

from __future__ import annotations

from fusefs.fuse.daemon import mount_options, serve
from fusefs.fuse.ops import NommuOperations

__all__ = ["NommuOperations", "mount_options", "serve"]
