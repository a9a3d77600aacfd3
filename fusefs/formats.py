"""Registers the image formats with :mod:`fusefs.vfs` (imported lazily by open_image)."""

from __future__ import annotations
