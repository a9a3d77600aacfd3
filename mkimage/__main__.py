"""``python -m mkimage FORMAT [options] OUT SRC``."""

from __future__ import annotations

import sys

from mkimage.cli import main

sys.exit(main())
