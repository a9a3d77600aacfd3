"""EROFS: the on-disk format (:mod:`fusefs.erofs.format`, with the codecs
:mod:`~fusefs.erofs.hash`, :mod:`~fusefs.erofs.dirent` and
:mod:`~fusefs.erofs.zindex`, all shared with the writer) and a sans-IO reader
(:class:`fusefs.erofs.fs.ErofsFilesystem`)."""

from __future__ import annotations
