"""Registers the image formats with :mod:`fusefs.vfs` (imported lazily by open_image)."""

from __future__ import annotations

from fusefs.cramfs.fs import open_cramfs, probe_cramfs
from fusefs.erofs.fs import open_erofs
from fusefs.erofs.super import probe as erofs_probe
from fusefs.vfs import register_format

register_format("erofs", erofs_probe, open_erofs)
register_format("cramfs", probe_cramfs, open_cramfs)
