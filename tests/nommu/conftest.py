"""The real nommu kernel under qemu (scripts/nommu-kernel) as the model's oracle.

The kernels are built once per machine and cached in /var/cache/nommufs
(``$NOMMUFS_CACHE``): on a fresh machine the first test that needs them pays
for the build (apt-get of the packages, about 5 minutes of compiling on two
cores); every later run finds them in the cache. Each boot takes under a second.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from fusefs.nommu.cases import CASES
from fusefs.nommu.kernel import VARIANTS, missing_packages
from fusefs.nommu.oracle import Comparison, Workspace, compare

# The build is fixture set-up inside the first test; it gets this long (the
# qemu runs carry their own timeouts, so a hang still ends).
BUILD_TIMEOUT = 1800


def missing_nommu_kernel() -> str | None:
    missing = missing_packages()
    if missing and os.geteuid() != 0:
        return f"not root, and Debian packages are missing: {' '.join(missing)}"
    return None


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workspace]:
    why = missing_nommu_kernel()
    if why:
        pytest.skip(why)
    ws = Workspace(tmp_path_factory.mktemp("nommu"))
    for variant in VARIANTS.values():
        ws.kernels[variant.name] = ws.builder.get(variant)  # the long part, once per machine
    yield ws


@pytest.fixture(scope="session")
def comparisons(workspace: Workspace) -> dict[str, Comparison]:
    """Every case booted once at 16M and replayed once by budget."""
    return {name: compare(workspace, case) for name, case in CASES.items()}

