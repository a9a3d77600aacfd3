"""EROFS: the on-disk format (:mod:`fusefs.erofs.format`, shared with the
writer) and a sans-IO reader (:class:`fusefs.erofs.fs.ErofsFilesystem`)."""

from __future__ import annotations
