"""The cramfs image writer (``nommufs mkimage cramfs``), on the format declared
in :mod:`fusefs.cramfs.format`."""

from __future__ import annotations
