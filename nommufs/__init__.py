"""nommufs: build, mount and read compressed read-only filesystems (EROFS,
cramfs with XIP) for tiny Linux systems, from Python.

The public API is what this module exports, and only that::

    import nommufs

    nommufs.build_image("rootfs/", "rootfs.erofs", z="lz4hc", C=16384, T=0)
    with nommufs.open_image("rootfs.erofs", mm="nommu-contig", decompress="percpu-buffer",
                            arena="1536K") as img:
        img.read_file("/etc/hostname")
        for dirpath, dirnames, filenames in img.walk("/"):
            ...
    with nommufs.mount("rootfs.erofs", "mnt") as m:     # a real FUSE mount
        (m.path / "etc/hostname").read_bytes()
        m.stats()["frames_peak"]

Everything else (:mod:`fusefs`, :mod:`mkimage`, :mod:`mmshim` and the
underscored modules here) is internal and may change.  The pytest plugin
(fixtures ``nommufs_image`` and ``nommufs_mount``) is
:mod:`nommufs.pytest_plugin`, loaded by pytest through its entry point.
"""

from __future__ import annotations

from fusefs import __version__
from fusefs.errors import (
    CorruptImageError,
    FsError,
    InvalidArgumentError,
    NotFoundError,
    OutOfMemoryError,
    UnsupportedFeatureError,
)
from fusefs.vfs import Attr
from mkimage.errors import BuildError
from nommufs._build import build_image
from nommufs._image import Image, open_image
from nommufs._mount import Mount, mount

__all__ = [
    "Attr",
    "BuildError",
    "CorruptImageError",
    "FsError",
    "Image",
    "InvalidArgumentError",
    "Mount",
    "NotFoundError",
    "OutOfMemoryError",
    "UnsupportedFeatureError",
    "__version__",
    "build_image",
    "mount",
    "open_image",
]
