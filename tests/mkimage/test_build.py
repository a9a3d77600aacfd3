"""mkimage erofs as a command: reproducible output, the same through both
entry points, source rules (device table, ownership, excludes, tar input)
and one-line errors that leave nothing at OUT."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from fusefs.vfs import MemoryConfig, open_image
from mkimage.erofs.compress import parse_codec
from mkimage.erofs.writer import ErofsOptions, build_erofs
from mkimage.errors import BuildError
from mkimage.tree import FileData, atomic_output, scan
from tests.conftest import Mounter
from tests.mkimage.conftest import Build
from tests.trees import diff_trees, snapshot, snapshot_fs

UUID = "0b9e1f4c-3a52-4d2e-9c61-52f0d7e2a001"


def run_cli(*args: str, module: str = "mkimage", **env: str) -> subprocess.CompletedProcess[str]:
    prefix = [] if module == "mkimage" else ["mkimage"]
    return subprocess.run(
        [sys.executable, "-m", module, *prefix, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )


def test_two_builds_are_byte_identical(rich_tree: Path, build: Build, tmp_path: Path) -> None:
    opts = ["-z", "lz4hc", "-C", "65536", "-T", "1700000000", "--mkfs-time"]
    a = build(rich_tree, *opts, "-j", "1")
    out = tmp_path / "b.img"
    # another process, another hash seed, two threads
    proc = run_cli(
        "erofs", "-q", *opts, "-j", "2", str(out), str(rich_tree), PYTHONHASHSEED="12345"
    )
    assert proc.returncode == 0, proc.stderr
    assert a.read_bytes() == out.read_bytes()


def test_source_date_epoch_is_reproducible(small_tree: Path, tmp_path: Path) -> None:
    outs = []
    for i in range(2):
        out = tmp_path / f"{i}.img"
        proc = run_cli(
            "erofs", "-q", "-z", "zstd", str(out), str(small_tree), SOURCE_DATE_EPOCH="86400"
        )
        assert proc.returncode == 0, proc.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_a_reproducible_uuid_follows_the_tree(tmp_path: Path, build: Build) -> None:
    """-T: the UUID comes from the options and the metadata, so a renamed
    file, a changed mode or another label gives another one."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(b"a" * 5000)

    def uuid(*opts: str) -> bytes:
        return build(src, "-z", "lz4", "-T", "1700000000", *opts).read_bytes()[1072:1088]

    first = uuid()
    assert uuid() == first
    assert uuid("-L", "other") != first
    (src / "a").chmod(0o600)
    moded = uuid()
    (src / "a").rename(src / "b")
    assert len({first, moded, uuid()}) == 3


def test_nommufs_and_python_m_mkimage_agree(small_tree: Path, tmp_path: Path) -> None:
    args = ["erofs", "-q", "-z", "lz4", "-T", "5", "-U", UUID, "-L", "rootfs"]
    a, b = tmp_path / "a.img", tmp_path / "b.img"
    p1 = run_cli(*args, str(a), str(small_tree))
    p2 = run_cli(*args, str(b), str(small_tree), module="fusefs")
    assert p1.returncode == 0 and p2.returncode == 0, p1.stderr + p2.stderr
    assert a.read_bytes() == b.read_bytes()
    raw = a.read_bytes()
    assert raw[1024 + 0x30 : 1024 + 0x40].hex() == UUID.replace("-", "")
    assert raw[1024 + 0x40 : 1024 + 0x50].rstrip(b"\0") == b"rootfs"


@pytest.mark.parametrize("module", ["mkimage", "fusefs"])
def test_help_and_version(module: str) -> None:
    for flag in ("-h", "--version"):
        proc = run_cli("erofs", flag, module=module)
        assert proc.returncode == 0
        assert proc.stdout.strip()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-E", "ztailpackin"], "ztailpackin"),
        (["-E", "noinline_data,bogus"], "bogus"),
        (["-E", "fragments"], "-z"),
        (["-C", "3000"], "-C 3000"),
        (["-C", str(2 << 20)], "-C"),
        (["-z", "lz4", "-b", "512", "-C", "262144"], "at most 256 blocks"),
        (["-b", "4096", "-C", "2048"], "-C 2048"),
        (["-b", "1000"], "-b 1000"),
        (["-z", "lzo"], "lzo"),
        (["-z", "lz4hc,99"], "level"),
        (["-z", "lzma,level=10"], "0..9 or 100..109"),
        (["-z", "lz4,level=1"], "no level"),
        (["-z", "lz4hc,dictsize=65536"], "no dictsize"),
        (["-z", "zstd,dictsize=3000"], "power of two"),
        (["-z", "zstd,window=9"], "unknown option"),
        (["-z", "lz4:lz4hc"], "once"),
        (["-E", "all-fragments"], "-z"),
        (["-z", "lz4", "--max-extent-bytes", "100"], "--max-extent-bytes 100"),
        (["--max-extent-bytes", str(13 << 20)], "12582912"),
        (["--chunksize", "3000"], "--chunksize 3000"),
        (["--offset", "-1"], "--offset"),
        (["-U", "not-a-uuid"], "-U"),
        (["-L", "a-label-longer-than-15"], "-L"),
        (["--exclude-regex", "("], "--exclude-regex"),
    ],
)
def test_bad_options_give_one_line_and_no_image(
    args: list[str], needle: str, small_tree: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.img"
    proc = run_cli("erofs", *args, str(out), str(small_tree))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
    assert not out.exists()
    assert os.listdir(tmp_path) == []


def test_missing_source_and_bad_device_table(small_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    proc = run_cli("erofs", str(out), str(tmp_path / "nope"))
    assert proc.returncode == 1 and "nope" in proc.stderr and len(proc.stderr.splitlines()) == 1
    table = tmp_path / "devs.txt"
    table.write_text("# ok\n/dev d 755 0 0 - - - - -\n/dev/null x 666 0 0 1 3 0 0 -\n")
    proc = run_cli("erofs", "--device-table", str(table), str(out), str(small_tree))
    assert proc.returncode == 1
    assert f"{table}:3" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not out.exists()


def _build_api(src: Path, out: Path, **kw: object) -> None:
    with scan(str(src)) as tree:
        mutate = kw.pop("mutate", None)
        if callable(mutate):
            mutate()
        with atomic_output(str(out)) as f:
            build_erofs(tree, ErofsOptions(codec=parse_codec("lz4")), f)


@pytest.mark.parametrize("change", ["vanish", "grow", "touch"])
def test_source_changing_during_build(change: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    victim = src / "victim"
    victim.write_bytes(b"v" * 10000)
    (src / "other").write_bytes(b"o")
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def mutate() -> None:
        if change == "vanish":
            victim.unlink()
        elif change == "grow":
            with open(victim, "ab") as f:
                f.write(b"more")
        else:
            os.utime(victim, ns=(0, 12345))

    with pytest.raises(BuildError, match="victim"):
        _build_api(src, out_dir / "img", mutate=mutate)
    assert os.listdir(out_dir) == []


@pytest.mark.parametrize("how", ["read", "read_buffer"])
def test_a_file_with_more_than_its_size_is_refused(how: str) -> None:
    # /proc files say 0 bytes and have more: only reading past the size finds it
    path = b"/proc/self/status"
    st = os.stat(path)
    data = FileData(path, st.st_size, st.st_mtime_ns, st.st_ino)
    assert st.st_size == 0
    with pytest.raises(BuildError, match="status: file changed size while being read"):
        getattr(data, how)()


@pytest.mark.parametrize("how", ["read", "read_buffer"])
def test_a_file_replaced_by_a_fifo_is_refused_without_blocking(tmp_path: Path, how: str) -> None:
    # a FIFO opened for reading blocks until a writer comes: the read must not
    path = tmp_path / "victim"
    path.write_bytes(b"v" * 100)
    st = os.stat(path)
    data = FileData(bytes(path), st.st_size, st.st_mtime_ns, st.st_ino)
    path.unlink()
    os.mkfifo(path)
    with pytest.raises(BuildError, match="victim: file changed"):
        getattr(data, how)()


@pytest.mark.kernel
def test_device_table_and_ownership(
    small_tree: Path, build: Build, tmp_path: Path, mounter: Mounter
) -> None:
    table = tmp_path / "devs.txt"
    table.write_text(
        "# name type mode uid gid major minor start inc count\n"
        "/dev d 755 0 0 - - - - -\n"
        "/dev/console c 600 0 5 5 1 - - -\n"
        "/dev/ttyS c 660 0 20 4 64 0 1 3\n"
        "/dev/sda b 640 0 6 8 0 - - -\n"
        "/dev/initctl p 600 0 0 - - - - -\n"
        "/sub/deeper/hello f 4755 0 0 - - - - -\n"
        "/var/run d 1777 0 0 - - - - -\n"
    )
    img = build(
        small_tree,
        "--force-uid",
        "1000",
        "--force-gid",
        "100",
        "--device-table",
        str(table),
        "-T",
        "7",
    )
    mnt = mounter.kernel_erofs(img)
    st = os.lstat(mnt / "dev" / "console")
    assert stat.S_ISCHR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert (
        os.major(st.st_rdev) == 5 and os.minor(st.st_rdev) == 1 and (st.st_uid, st.st_gid) == (0, 5)
    )
    for i in range(3):
        st = os.lstat(mnt / "dev" / f"ttyS{i}")
        assert os.minor(st.st_rdev) == 64 + i and st.st_gid == 20
    assert stat.S_ISBLK(os.lstat(mnt / "dev" / "sda").st_mode)
    assert stat.S_ISFIFO(os.lstat(mnt / "dev" / "initctl").st_mode)
    st = os.lstat(mnt / "sub" / "deeper" / "hello")
    assert stat.S_IMODE(st.st_mode) == 0o4755 and (st.st_uid, st.st_gid) == (0, 0)
    st = os.lstat(mnt / "var" / "run")
    assert stat.S_IMODE(st.st_mode) == 0o1777 and st.st_mtime == 7
    st = os.lstat(mnt / "file1.txt")
    assert (st.st_uid, st.st_gid) == (1000, 100)
    img2 = build(small_tree, "--all-root")
    mnt2 = mounter.kernel_erofs(img2)
    assert {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in [mnt2, *mnt2.rglob("*")]} == {(0, 0)}


def test_excludes(small_tree: Path, build: Build) -> None:
    img = build(small_tree, "--exclude-path", "sub/deeper", "--exclude-regex", r"file[12]\.txt$")
    with open_image(str(img), MemoryConfig()) as fs:
        got = snapshot_fs(fs)
    want = {
        k: v
        for k, v in snapshot(small_tree).items()
        if not k.startswith("sub/deeper") and k not in ("file1.txt", "file2.txt")
    }
    want["sub"].nlink -= 1  # one subdirectory fewer
    assert diff_trees(want, got) == []


@pytest.mark.kernel
def test_tar_input(small_tree: Path, build: Build, tmp_path: Path, mounter: Mounter) -> None:
    tar = tmp_path / "src.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        t.add(small_tree, arcname=".")
    img = build(tar, "--tar", "-z", "lz4hc")
    mnt = mounter.kernel_erofs(img)
    fields = ("mode", "uid", "gid", "size", "nlink", "rdev", "target", "data_sha")
    assert diff_trees(snapshot(small_tree), snapshot(mnt), fields=fields) == []
    for p in small_tree.rglob("*"):
        rel = p.relative_to(small_tree)
        assert int(os.lstat(mnt / rel).st_mtime) == int(os.lstat(p).st_mtime)


def test_tar_members_read_from_two_threads_keep_their_bytes(tmp_path: Path, build: Build) -> None:
    """Members share the archive's file position; the compression threads must
    not interleave their reads (a race that once swapped file contents)."""
    src = tmp_path / "many"
    src.mkdir()
    for i in range(300):
        (src / f"f{i:03d}").write_bytes(os.urandom(97 * (i % 13 + 1)) + b"%d" % i)
    tar = tmp_path / "many.tar"
    with tarfile.open(tar, "w") as t:
        t.add(src, arcname=".")
    img = build(tar, "--tar", "-z", "lz4", "-j", "2")
    with open_image(str(img), MemoryConfig()) as fs:
        got = snapshot_fs(fs)
    assert diff_trees(snapshot(src), got, fields=("size", "data_sha")) == []


def test_block_size_above_page_size_warns_and_reads_back(small_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "b16k.img"
    proc = run_cli("erofs", "-q", "-b", "16384", "-z", "lz4hc", "-C", "65536", "-T", "9",
                   "--mkfs-time", str(out), str(small_tree))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning: -b 16384" in proc.stderr and "page size" in proc.stderr
    assert out.stat().st_size % 16384 == 0
    with open_image(str(out), MemoryConfig()) as fs:
        assert diff_trees(snapshot(small_tree), snapshot_fs(fs)) == []


@pytest.mark.parametrize(
    ("member", "needle"),
    [("../escape", "escapes the root"), ("a/" + "n" * 256, "longer than 255")],
)
def test_hostile_tar_is_refused(member: str, needle: str, tmp_path: Path) -> None:
    import io

    tar = tmp_path / "bad.tar"
    with tarfile.open(tar, "w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(member)
        info.size = 3
        t.addfile(info, io.BytesIO(b"abc"))
    out = tmp_path / "out" / "img"
    out.parent.mkdir()
    proc = run_cli("erofs", "--tar", str(out), str(tar))
    assert proc.returncode == 1 and needle in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert os.listdir(out.parent) == []
