"""File types and modes, as every format and the writers see them.

Kept apart from the filesystem core (:mod:`fusefs.vfs`) so that a build,
which needs only these, does not import the read path with it.
"""

from __future__ import annotations

import stat
from typing import Final

# The file types a read-only image can hold (the kernel's EROFS accepts these
# and nothing else; cramfs and the writers use the same set).
FILE_TYPES: Final = frozenset(
    {
        stat.S_IFREG,
        stat.S_IFDIR,
        stat.S_IFLNK,
        stat.S_IFCHR,
        stat.S_IFBLK,
        stat.S_IFIFO,
        stat.S_IFSOCK,
    }
)


class HasMode:
    """``is_dir`` / ``is_reg`` / ``is_lnk`` for anything with an ``st_mode``-style ``mode``."""

    __slots__ = ()
    mode: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)
