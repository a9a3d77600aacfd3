"""Tests and the compiled hot modules (see ``mmshim._compiled``).

When ``scripts/compile`` has built them, the suite runs against the compiled
read path, as users do.  A test that patches a hot module's internals (to
count calls) cannot patch a compiled class: :func:`interpreted` runs such a
test again in a child pytest with ``NOMMUFS_INTERPRETED=1``, so it still
runs and can still fail.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec

from mmshim import _compiled

P = ParamSpec("P")
ROOT = Path(__file__).resolve().parent.parent


def interpreted(test: Callable[P, None]) -> Callable[P, None]:
    """Run ``test`` with the interpreted hot modules, in a child pytest when
    this process uses the compiled ones."""

    @functools.wraps(test)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        if not _compiled.active():
            test(*args, **kwargs)
            return
        nodeid = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]
        env = {**os.environ, _compiled.DISABLE_ENV: "1"}
        child = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", nodeid],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
        )  # fmt: skip
        assert child.returncode == 0, f"{nodeid} (interpreted):\n{child.stdout}{child.stderr}"

    return wrapper
