"""Images made once by upstream mkfs.erofs 1.9.3 (``tests/corpus/upstream-1.9.3``:
48-bit layout with encoded extents and 48-bit chunk indexes, dot-omitted
directories, metadata in a compressed metabox), read by nommufs and compared
field by field with the kernel's mount of the same image.

Each image's ``.txt`` gives the command that made it from
:func:`tests.erofs.corpus_tree.build_corpus_tree`.  ``kernel-view.json`` is
what the kernel's mount of every one of them showed when they were made (the
same for all); the kernel tests check it still does, so the offline tests,
which need no root, compare with what the kernel shows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fusefs.erofs import format as f
from fusefs.erofs.fs import ErofsFilesystem
from fusefs.erofs.hash import superblock_checksum
from fusefs.errors import CorruptImageError
from fusefs.vfs import MemoryConfig, open_image, resolve, walk
from tests.conftest import Mounter, missing_kernel_erofs, nommufs
from tests.trees import Entry, diff_trees, snapshot, snapshot_fs

CORPUS = Path(__file__).resolve().parent.parent / "corpus" / "upstream-1.9.3"
IMAGES = sorted(p.name for p in CORPUS.glob("*.img"))
READ = IMAGES
# every memory mode, spread over the images
MEMORY = [
    ["--mm", "mmu"],
    ["--mm", "nommu-contig", "--decompress", "contig-folio", "--arena", "8M"],
    ["--mm", "nommu-bounce", "--decompress", "bounce", "--arena", "4M"],
    ["--mm", "mmu", "--decompress", "percpu-buffer", "--arena", "2M"],
]


def _kernel_view() -> dict[str, Entry]:
    raw = json.loads((CORPUS / "kernel-view.json").read_text())
    out = {}
    for path, rec in raw.items():
        target = rec.pop("target")
        xattrs = rec.pop("xattrs")
        out[path] = Entry(
            path=path,
            target=None if target is None else bytes.fromhex(target),
            xattrs={bytes.fromhex(k): bytes.fromhex(v) for k, v in xattrs.items()},
            **rec,
        )
    return out


KERNEL_VIEW = _kernel_view()


def test_corpus_is_complete() -> None:
    assert len(IMAGES) == 9
    for name in IMAGES:
        assert (CORPUS / name).with_suffix(".txt").read_text().count("command: mkfs.erofs") == 1


@pytest.mark.parametrize("name", READ)
def test_reads_as_the_kernel_showed(name: str) -> None:
    with open_image(CORPUS / name) as fs:
        problems = diff_trees(KERNEL_VIEW, snapshot_fs(fs))
        assert not problems, "\n".join(problems[:20])
        assert list(fs.fsck_extra()) == []


@pytest.mark.parametrize("name", READ)
def test_fsck_and_inspect(name: str) -> None:
    r = nommufs("fsck", str(CORPUS / name))
    out = r.stdout.decode()
    assert r.returncode == 0, out + r.stderr.decode()
    assert ": clean;" in out.splitlines()[-1], out
    r = nommufs("inspect", str(CORPUS / name))
    assert r.returncode == 0, r.stderr.decode()
    assert "48bit" in r.stdout.decode()


def test_features_described() -> None:
    with open_image(CORPUS / "erofs-metabox-lz4hc.img") as fs:
        assert isinstance(fs, ErofsFilesystem)
        d = fs.describe()
        assert {"48bit", "metabox"} <= set(d["feature_incompat"])
        assert d["metabox_nid"] == fs.sbi.metabox_nid > 0
        info = fs.describe_inode(resolve(fs, "files/text-100000"))
        assert info["in_metabox"] is True
        assert info["nid"] >> 63 == 1
        assert sum(e["llen"] for e in info["extents"]) == 100000


def test_dot_omitted_directory_lists_dot_first() -> None:
    with open_image(CORPUS / "erofs-dot-omitted.img") as fs:
        assert isinstance(fs, ErofsFilesystem)
        crowd = resolve(fs, "crowd")
        assert fs.inode(crowd).dot_omitted
        names = [e.name for e in fs.readdir(crowd)]
        # "." is not stored (it would sort after "-first"): readdir shows it first
        assert names[:3] == [b".", b"-first", b".."]
        assert len(names) == 253
        # offsets are stable keys: listing again after "." gives the rest
        entries = list(fs.readdir(crowd))
        assert [e.name for e in fs.readdir(crowd, entries[0].offset)] == names[1:]
        assert [e.name for e in fs.readdir(crowd, entries[5].offset)] == names[6:]


def test_metabox_metadata_goes_through_the_arena() -> None:
    """Walking a metabox image (inodes only, no file data) decompresses the
    metabox into the page cache; the same walk of a 48-bit image without a
    metabox reads no page at all."""

    def walk_stats(name: str) -> dict[str, int]:
        with open_image(CORPUS / name, MemoryConfig(arena_bytes=1 << 20)) as fs:
            for item in walk(fs):
                fs.listxattr(item.ino)
            return fs.memory_stats()

    box = walk_stats("erofs-metabox-lz4hc.img")
    plain = walk_stats("erofs-48bit-lz4hc.img")
    assert box["bytes_decompressed"] > 0 and box["pclusters_decoded"] > 0
    assert plain["bytes_decompressed"] == 0 and plain["pclusters_decoded"] == 0


def test_metabox_inline_pcluster_reads_from_the_inodes_record() -> None:
    """An inline (ztailpacking) pcluster of an inode in the metabox lives in
    the inode's record there, not in the image."""
    with open_image(CORPUS / "erofs-metabox-ztailpacking.img") as fs:
        ino = resolve(fs, "files/text-4095")
        assert fs.getattr(ino).size == 4095
        data = fs.read(ino, 0, 4095)
        assert len(data) == 4095 and data.strip(b"\0")


@pytest.mark.kernel
@pytest.mark.parametrize("name", IMAGES)
def test_kernel_still_shows_the_recorded_view(name: str, mounter: Mounter) -> None:
    problems = diff_trees(KERNEL_VIEW, snapshot(mounter.kernel_erofs(CORPUS / name)))
    assert not problems, "\n".join(problems[:20])


@pytest.mark.kernel
@pytest.mark.parametrize("name", READ)
def test_extract_matches_kernel(name: str, mounter: Mounter, tmp_path: Path) -> None:
    expected = snapshot(mounter.kernel_erofs(CORPUS / name))
    dest = tmp_path / "out"
    memory = MEMORY[READ.index(name) % len(MEMORY)]
    r = nommufs("extract", *memory, str(CORPUS / name), str(dest))
    assert r.returncode == 0, r.stderr.decode()
    problems = diff_trees(expected, snapshot(dest))
    assert not problems, "\n".join(problems[:20])


@pytest.mark.kernel
@pytest.mark.fuse
@pytest.mark.parametrize("name", ["erofs-metabox-deflate-lzma-zD.img", "erofs-dot-omitted.img"])
def test_fuse_mount_matches_kernel(name: str, mounter: Mounter) -> None:
    expected = snapshot(mounter.kernel_erofs(CORPUS / name))
    m = mounter.fuse(CORPUS / name)
    problems = diff_trees(expected, snapshot(m.path))
    assert not problems, "\n".join(problems[:20])
    assert m.alive, m.stderr()
    assert "Traceback" not in m.stderr(), m.stderr()



def _patch_superblock(data: bytes, offset: int, raw: bytes) -> bytes:
    """``data`` with ``raw`` at ``offset`` of the superblock, its checksum redone."""
    out = bytearray(data)
    at = f.EROFS_SUPER_OFFSET
    out[at + offset : at + offset + len(raw)] = raw
    blkszbits = out[at + 0x0C]
    region = out[at : at + f.sb_checksum_length(blkszbits)]
    out[at + 4 : at + 8] = superblock_checksum(region).to_bytes(4, "little")
    return bytes(out)


@pytest.mark.parametrize(
    ("offset", "raw", "message"),
    [
        (0x80, ((1 << 63) | 37).to_bytes(8, "little"), "metabox nid .* points into the metabox"),
        (0x0D, b"\0", "no metabox_nid slot"),
        (0x50, (0x81).to_bytes(4, "little"), "metabox bit, but the image has no metabox"),
    ],
    ids=["metabox-in-itself", "no-slot", "no-metabox-feature"],
)
def test_broken_metabox_superblock(
    offset: int, raw: bytes, message: str, tmp_path: Path, mounter: Mounter
) -> None:
    image = tmp_path / "broken.img"
    image.write_bytes(_patch_superblock((CORPUS / "erofs-metabox-lz4hc.img").read_bytes(),
                                        offset, raw))  # fmt: skip
    with pytest.raises(CorruptImageError, match=message):
        open_image(image)
    if missing_kernel_erofs() is None:
        with pytest.raises(AssertionError, match=r"kernel mount of .* failed"):
            mounter.kernel_erofs(image)
