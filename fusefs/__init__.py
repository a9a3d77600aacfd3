"""Reading EROFS and cramfs images: formats, the filesystem core, and FUSE.

Internal to nommufs: the public API is the :mod:`nommufs` package, which
re-exports what callers may rely on.  ``__version__`` here is the one version
of the distribution (pyproject.toml reads it).
"""

from __future__ import annotations

import mmshim  # noqa: F401  (first: it decides whether the compiled hot modules are used)

__version__ = "0.1.0"
