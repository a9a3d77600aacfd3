"""Compile nommu/init.c, our freestanding init, into the cache.

The flags make a static PIE with no dynamic linker and no relocations: the
riscv nommu kernel's ELF-FDPIC loader runs it as it is (no bFLT, no elf2flt).
``-z stack-size`` sets PT_GNU_STACK, the stack the loader allocates for it.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Final

from fusefs.nommu.common import CROSS_COMPILE, NOMMU_DIR, NommuKernelError, cache_root, staging

SOURCE: Final = NOMMU_DIR / "init.c"
CFLAGS: Final = (
    "-Os", "-Wall", "-Wextra", "-Werror", "-ffreestanding", "-fno-builtin",
    "-fno-stack-protector", "-fno-asynchronous-unwind-tables", "-fPIE",
    "-nostdlib", "-static-pie", "-Wl,--no-dynamic-linker,--no-relax",
    "-Wl,-z,stack-size=32768", "-Wl,--build-id=none",
)


def _compiler() -> str:
    cc = shutil.which(f"{CROSS_COMPILE}gcc")
    if cc is None:
        raise NommuKernelError(f"{CROSS_COMPILE}gcc: not installed (gcc-riscv64-linux-gnu)")
    return cc


def build_init(root: Path | None = None) -> Path:
    """The compiled init (built once per source, flags and compiler)."""
    cc = _compiler()
    version = subprocess.run([cc, "--version"], capture_output=True, text=True,
                             check=False).stdout.splitlines()[:1]
    h = hashlib.sha256("\0".join([*CFLAGS, *version]).encode() + SOURCE.read_bytes())
    final = (root or cache_root()) / "init" / h.hexdigest()[:12]
    if (final / "init").is_file():
        return final / "init"
    with staging(final) as tmp:
        done = subprocess.run([cc, *CFLAGS, "-o", str(tmp / "init"), str(SOURCE)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise NommuKernelError(f"{SOURCE}: does not compile:\n{done.stderr.strip()}")
        relocs = subprocess.run([f"{CROSS_COMPILE}readelf", "-r", str(tmp / "init")],
                                capture_output=True, text=True, check=False).stdout
        if "no relocations" not in relocs:
            # nothing would apply them: the FDPIC loader maps a PIE as it is
            raise NommuKernelError(f"{SOURCE}: the init has relocations:\n{relocs.strip()}")
    return final / "init"
