"""The hot modules (of the read path and the EROFS writer) compiled by
mypyc, used only while they match their source.

``scripts/compile`` (which ``scripts/setup`` runs) compiles the modules that
every page read goes through (the allocator, page cache and vmap of this
package; nommufs's read memory, EROFS extent map and decompression), and
those every pcluster the EROFS writer makes goes through, with mypyc, into
``<sys.prefix>/nommufs-compiled/``, and writes ``stamp.json`` there: for
each module its source file, the SHA-256 of the source it was compiled
from, and its binary.  :func:`activate`, run by ``import mmshim``, ``import
fusefs`` and ``import mkimage`` before anything else of theirs (importing
this module runs it), puts a finder in front of ``sys.meta_path`` that imports those
modules from their binaries, but only when every listed source still has
the hash it was compiled from and the binaries were built for this
interpreter.  It is all of them or none: the
compiled modules call one another directly, so a changed source imported
from its ``.py`` next to stale binaries of its neighbours would run two
copies of one module.  Otherwise, or with ``NOMMUFS_INTERPRETED=1`` in the
environment, the sources are imported as usual; the behaviour is the same
either way, only the speed differs.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Final

STAMP: Final = "stamp.json"
DISABLE_ENV: Final = "NOMMUFS_INTERPRETED"
# the directory holding the packages: mmshim/, fusefs/ ...
SOURCE_ROOT: Final = Path(__file__).resolve().parent.parent


def compiled_dir() -> Path:
    """Where ``scripts/compile`` puts the binaries for this interpreter."""
    return Path(sys.prefix) / "nommufs-compiled"


def source_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Finder:
    """Finds the compiled modules (and mypyc's shared library) by name (a
    meta path finder by protocol: subclassing ``importlib.abc``'s would
    import ``importlib.resources`` too, a fifth of a build's start-up)."""

    def __init__(self, binaries: dict[str, Path]) -> None:
        self.binaries = binaries

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        binary = self.binaries.get(fullname)
        if binary is None:
            return None
        return importlib.util.spec_from_file_location(fullname, binary)


def _usable(where: Path) -> dict[str, Path] | None:
    """The binaries by module name when the stamp in ``where`` matches the
    sources and this interpreter; None otherwise."""
    try:
        stamp = json.loads((where / STAMP).read_text())
        if stamp["ext_suffix"] != sysconfig.get_config_var("EXT_SUFFIX"):
            return None
        binaries = {}
        for name, entry in stamp["modules"].items():
            source = entry.get("source")
            if source is not None and source_digest(SOURCE_ROOT / source) != entry["sha256"]:
                return None
            binary = where / entry["binary"]
            if not binary.is_file():
                return None
            binaries[name] = binary
        return binaries
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


class _State:
    finder: _Finder | None = None
    decided = False


def activate() -> bool:
    """Use the compiled modules if they match their sources (decided once per
    process, before any of them is imported); True when they are in use."""
    if not _State.decided:
        _State.decided = True
        if not os.environ.get(DISABLE_ENV):
            binaries = _usable(compiled_dir())
            loaded = binaries is not None and any(name in sys.modules for name in binaries)
            if binaries is not None and not loaded:
                _State.finder = _Finder(binaries)
                sys.meta_path.insert(0, _State.finder)
    return _State.finder is not None


def active() -> bool:
    """Are the compiled modules in use in this process?"""
    return _State.finder is not None


activate()
