"""What the nommu modules share: the repository's nommu/ directory, the cache, errors."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

#: The repository's ``nommu/`` directory: init.c, config fragments, patches.
NOMMU_DIR: Final = Path(__file__).resolve().parents[2] / "nommu"
CROSS_COMPILE: Final = "riscv64-linux-gnu-"


class NommuKernelError(Exception):
    """A kernel could not be built or run; the message names the step and the file."""


def cache_root() -> Path:
    """``$NOMMUFS_CACHE`` or ``/var/cache/nommufs``: outside the repository."""
    return Path(os.environ.get("NOMMUFS_CACHE", "/var/cache/nommufs"))


@contextlib.contextmanager
def locked(path: Path) -> Iterator[int]:
    """An exclusive flock on `path`; yields its descriptor. A child given the
    descriptor (``pass_fds``) holds the lock too, until it and its own
    children exit: a build outliving a killed parent still keeps others out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        if not _try_lock(f.fileno()):
            log.info("waiting for %s (another build holds it)", path)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        yield f.fileno()


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def staging(final: Path) -> Iterator[Path]:
    """A temporary directory beside `final`, renamed onto it on success, removed otherwise.

    When another process renamed its own copy into place first, ours is dropped.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the cache is for every user
    try:
        yield tmp
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
