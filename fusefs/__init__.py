"""Reading EROFS and cramfs images: formats, the filesystem core, and FUSE."""

from __future__ import annotations

from fusefs.errors import (
    CorruptImageError,
    FsError,
    NoAttributeError,
    NotFoundError,
    OutOfMemoryError,
    UnsupportedFeatureError,
)
from fusefs.vfs import Attr, DirEntry, Filesystem, Ino, MemoryConfig, open_image

__version__ = "0.1.0"

__all__ = [
    "Attr",
    "CorruptImageError",
    "DirEntry",
    "Filesystem",
    "FsError",
    "Ino",
    "MemoryConfig",
    "NoAttributeError",
    "NotFoundError",
    "OutOfMemoryError",
    "UnsupportedFeatureError",
    "__version__",
    "open_image",
]
