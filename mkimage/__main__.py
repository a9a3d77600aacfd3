"""``python -m mkimage FORMAT [options] OUT SRC``."""

from __future__ import annotations

from fusefs.cmdline import exit_process
from mkimage.cli import main

exit_process(main())
