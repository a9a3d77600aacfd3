"""The source tree of the committed upstream images in
``tests/corpus/upstream-1.9.3/`` (each ``.txt`` there says the mkfs.erofs
command line that made its image from this tree).

Small (about 0.3 MB of data, images of 20-300 KiB), deterministic (fixed
seed, every mtime set explicitly), and with what the 1.9 features change:
files of one to many lclusters, incompressible and zero data, a hole, a
directory of several blocks, hard links (nlink > 1 keeps NLINK_1 off),
inline and block symlinks, xattrs shared and inline, owners and mtimes that
need extended inodes.  Devices and owners need root.

Run once, as root:  ``python -m tests.erofs.corpus_tree DIR``.
"""

from __future__ import annotations

import os
import random
import stat
import sys
from pathlib import Path

from tests.trees import add_deep_dir, add_shared_xattrs

MTIME = 1_700_000_000


def _text(rng: random.Random, size: int) -> bytes:
    words = [b"erofs ", b"metabox ", b"48bit ", b"nommu ", b"folio\n", b"pcluster ", b"dot "]
    out = bytearray()
    while len(out) < size:
        out += rng.choice(words)
    return bytes(out[:size])


def build_corpus_tree(root: Path) -> Path:
    rng = random.Random(1009)
    root.mkdir(parents=True)
    files = root / "files"
    files.mkdir()
    for size in (0, 1, 100, 4095, 4096, 4097, 40000, 100000):
        (files / f"text-{size}").write_bytes(_text(rng, size))
    (files / "random-5000").write_bytes(rng.randbytes(5000))
    (files / "random-20000").write_bytes(rng.randbytes(20000))
    (files / "zeros-30000").write_bytes(bytes(30000))
    with open(files / "sparse", "wb") as f:
        f.write(b"A" * 5000)
        f.seek(60_000)
        f.write(b"B" * 3000)
    crowd = root / "crowd"
    crowd.mkdir()
    for i in range(250):  # two directory blocks; mostly empty files (no data blocks)
        data = str(i).encode() if i % 25 == 0 else b""
        (crowd / f"n{i:04d}-{rng.randrange(1 << 20):05x}").write_bytes(data)
    # a name before "." in byte order, for DOT_OMITTED directories
    (crowd / "-first").write_bytes(b"-")
    add_deep_dir(root, 6)
    links = root / "links"
    links.mkdir()
    os.symlink("../files/text-4097", links / "rel")
    os.symlink("x" * 3000, links / "long-target")
    (links / "hard-a").write_bytes(b"one inode, two names\n")
    os.link(links / "hard-a", links / "hard-b")
    special = root / "special"
    special.mkdir()
    os.mkfifo(special / "fifo")
    if os.geteuid() == 0:
        os.mknod(special / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chown(files / "text-100", 1234, 5678)
        os.chown(files / "text-1", 100000, 70000)  # needs an extended inode
    x = add_shared_xattrs(root, "user.common")
    os.setxattr(x / "shared-0", "user.own", b"inline value")
    os.setxattr(x, "user.on-a-directory", b"dir")
    os.setxattr(files / "text-40000", "trusted.overlay.opaque", b"y")
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), (MTIME, MTIME), follow_symlinks=False)
        os.utime(dirpath, (MTIME, MTIME))
    os.utime(files / "text-4095", ns=(0, (MTIME + 5) * 10**9 + 123456789))  # nanoseconds
    os.utime(files / "text-4096", (0, 4_102_444_800))  # 2100: far from the others
    return root


if __name__ == "__main__":
    build_corpus_tree(Path(sys.argv[1]))
