"""Hypothesis round trip: read(mkimage(tree)) == tree, for random small trees and options."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.cramfs.helpers import compare, fsck_cramfs, mkimage

NAMES = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="/\0"),
    min_size=1,
    max_size=12,
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 252)

CONTENT = st.one_of(
    st.binary(max_size=9000),
    st.integers(0, 3).map(lambda n: bytes(n * 4096)),  # page multiples of zeros (holes)
    st.builds(lambda a, n: a * n, st.binary(min_size=1, max_size=7), st.integers(0, 2000)),
)

TREES = st.recursive(
    st.one_of(
        st.tuples(st.just("file"), CONTENT, st.sampled_from([0o644, 0o755, 0o600, 0o4711])),
        st.tuples(st.just("link"), NAMES, st.just(0)),
    ),
    lambda children: st.dictionaries(NAMES, children, max_size=5).map(lambda d: ("dir", d, 0o755)),
    max_leaves=12,
)

OPTIONS = st.sampled_from(
    [(), ("-z",), ("-N", "big", "-p"), ("-x",), ("-X", "--xip", "*"), ("-X", "-X", "--xip", "*")]
)


def _make(path: Path, node: tuple[str, object, int]) -> None:
    kind, payload, mode = node
    if kind == "dir":
        path.mkdir()
        assert isinstance(payload, dict)
        for name, child in payload.items():
            _make(path / name, child)
        os.chmod(path, mode)
    elif kind == "file":
        assert isinstance(payload, bytes)
        path.write_bytes(payload)
        os.chmod(path, mode)
    else:
        assert isinstance(payload, str)
        os.symlink(payload, path)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=st.dictionaries(NAMES, TREES, max_size=6), options=OPTIONS)
def test_roundtrip(tree: dict[str, tuple[str, object, int]], options: tuple[str, ...]) -> None:
    base = Path(tempfile.mkdtemp(prefix="cram-rt-"))
    try:
        _make(base / "src", ("dir", tree, 0o755))
        image = mkimage(base / "src", base / "img", *options)
        assert compare(base / "src", image) == []
        if not any(o.startswith("-x") or o.startswith("-X") for o in options) and shutil.which(
            "fsck.cramfs"
        ):
            r = fsck_cramfs(image, base / "fsck-out")
            assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(base)
