"""cramfs: the on-disk format (:mod:`fusefs.cramfs.format`, shared with the
writer in :mod:`mkimage.cramfs`) and a reader
(:class:`fusefs.cramfs.fs.CramfsFilesystem`) with execute-in-place mmap."""

from __future__ import annotations
