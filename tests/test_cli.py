"""Every offline subcommand: the happy path on a mkfs.erofs image, and bad
input (missing image, not an image, bad flag, bad --arena, hostile names)
answered by one line on stderr and a non-zero exit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import mkfs_erofs, nommufs
from tests.trees import build_small_tree, diff_trees, snapshot


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = build_small_tree(tmp_path_factory.mktemp("src") / "tree")
    os.setxattr(root / "file1.txt", "user.colour", b"blue")
    return root


@pytest.fixture(scope="module")
def image(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mkfs_erofs(tmp_path_factory.mktemp("img") / "small.erofs", src, "-zlz4", "-C16384")


def _one_line_error(r: object) -> str:
    err = r.stderr.decode().strip()  # type: ignore[attr-defined]
    assert r.returncode != 0, err  # type: ignore[attr-defined]
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def test_ls(src: Path, image: Path) -> None:
    r = nommufs("ls", str(image))
    assert r.returncode == 0, r.stderr
    assert sorted(r.stdout.decode().split()) == sorted(os.listdir(src))
    r = nommufs("ls", "-l", str(image), "sub/deeper")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split()[-1] == "hello"
    assert r.stdout.decode().startswith("-rw")
    r = nommufs("ls", "-l", str(image), "link")
    assert r.stdout.decode().rstrip().endswith("link -> sub/deeper/hello")
    r = nommufs("ls", "-R", str(image))
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "sub/deeper:" in out and "random.bin" in out


def test_cat(src: Path, image: Path) -> None:
    for rel in ("file5.txt", "sub/random.bin", "file0.txt", "link"):
        r = nommufs("cat", str(image), rel)
        assert r.returncode == 0, r.stderr
        assert r.stdout == (src / rel).read_bytes()


def test_inspect(image: Path) -> None:
    r = nommufs("inspect", "--json", str(image))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["format"] == "erofs"
    r = nommufs("inspect", str(image))
    assert r.returncode == 0 and r.stdout
    r = nommufs("inspect", "--json", "--inode", "sub/random.bin", str(image))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["size"] == 20000


def test_fsck_clean(image: Path) -> None:
    r = nommufs("fsck", str(image))
    assert r.returncode == 0, r.stdout + r.stderr
    assert b": clean;" in r.stdout


def test_fsck_reports_every_problem(image: Path, tmp_path: Path) -> None:
    raw = bytearray(image.read_bytes())
    # wipe everything after the metadata: every compressed file breaks
    for at in range(4 * 4096, len(raw)):
        raw[at] = 0xFF
    bad = tmp_path / "bad.erofs"
    bad.write_bytes(bytes(raw))
    r = nommufs("fsck", str(bad))
    assert r.returncode == 1, r.stdout + r.stderr
    (summary,) = r.stdout.decode().splitlines()  # the summary on stdout, problems on stderr
    problems = r.stderr.decode().splitlines()
    assert "problem" in summary
    assert "/file5.txt: " in r.stderr.decode()  # problems name their path
    assert int(summary.split(": ")[1].split()[0]) == len(problems) == len(set(problems))


def test_extract(src: Path, image: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    r = nommufs("extract", str(image), str(dest))
    assert r.returncode == 0, r.stderr
    problems = diff_trees(snapshot(src), snapshot(dest), fields=("mode", "size", "target",
                                                                  "data_sha", "xattrs", "nlink"))
    assert not problems, problems
    # never into a non-empty directory
    r = nommufs("extract", str(image), str(dest))
    assert "not an empty directory" in _one_line_error(r)


@pytest.mark.parametrize("cmd", ["ls", "cat", "extract", "inspect", "fsck"])
def test_bad_input(cmd: str, tmp_path: Path, image: Path) -> None:
    extra = {"cat": ["file1.txt"], "extract": [str(tmp_path / "out")]}.get(cmd, [])
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(8192))
    assert "No such file" in _one_line_error(nommufs(cmd, str(tmp_path / "missing"), *extra))
    assert "not an EROFS or cramfs image" in _one_line_error(nommufs(cmd, str(junk), *extra))
    assert "unrecognized arguments" in _one_line_error(nommufs(cmd, "--bogus", str(image), *extra))
    assert "--arena" in _one_line_error(nommufs(cmd, "--arena", "1000", str(image), *extra))
    assert "bad size" in _one_line_error(nommufs(cmd, "--arena", "lots", str(image), *extra))
    assert "--mm" in _one_line_error(nommufs(cmd, "--mm", "huge", str(image), *extra))
    _one_line_error(nommufs(cmd, "--offset", "99999999", str(image), *extra))
    assert not (tmp_path / "out").exists()


def test_missing_paths(image: Path) -> None:
    _one_line_error(nommufs("cat", str(image), "no/such/file"))
    _one_line_error(nommufs("cat", str(image), "sub"))
    _one_line_error(nommufs("ls", str(image), "nothing-here"))
    _one_line_error(nommufs("inspect", "--inode", "nothing", str(image)))


def _hostile(tmp_path: Path, rename: dict[bytes, bytes]) -> Path:
    """An image whose dirent names were patched after mkfs.erofs (same length),
    with no superblock checksum to fix."""
    tree = tmp_path / "hostile"
    tree.mkdir()
    (tree / "sub").mkdir()
    for name in rename:
        (tree / "sub" / name.decode()).write_bytes(b"payload")
    (tree / "sub" / "zz-last").write_bytes(b"last")
    image = mkfs_erofs(tmp_path / "hostile.erofs", tree, "-Enosbcrc")
    raw = image.read_bytes()
    for old, new in rename.items():
        assert raw.count(old) == 1, old
        raw = raw.replace(old, new)
    image.write_bytes(raw)
    return image


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        (b"QQdotdot", b"../../..", "'/'"),
        (b"Qslash", b"Q/x/.y", "'/'"),
        (b"Q2", b"..", "'..'"),
        (b"Q3", b"Q\0", "NUL"),
        (b"Q1", b".\0", "NUL"),
    ],
)
def test_extract_refuses_hostile_names(
    tmp_path: Path, old: bytes, new: bytes, why: str
) -> None:
    image = _hostile(tmp_path, {old: new})
    dest = tmp_path / "work" / "out"
    dest.parent.mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    r = nommufs("extract", str(image), str(dest))
    err = _one_line_error(r)
    assert why in err or "corrupt" in err.lower() or "name" in err, err
    assert not dest.exists()
    assert os.listdir(dest.parent) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    r = nommufs("fsck", str(image))
    assert r.returncode == 1


def test_extract_without_privileges_skips_devices(tmp_path: Path) -> None:
    """The non-root path (no chown, no device nodes), taken in-process."""
    import stat

    from fusefs.commands.extract import extract
    from fusefs.vfs import open_image

    tree = build_small_tree(tmp_path / "tree")
    os.mkfifo(tree / "fifo")
    if os.geteuid() == 0:
        os.mknod(tree / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        os.chown(tree / "file1.txt", 4321, 8765)
    image = mkfs_erofs(tmp_path / "img.erofs", tree, "-zlz4")
    with open_image(image) as fs:
        report = extract(fs, tmp_path / "out", owners=False, devices=False)
    out = tmp_path / "out"
    assert stat.S_ISFIFO(os.lstat(out / "fifo").st_mode)
    assert os.lstat(out / "file1.txt").st_uid == os.geteuid()
    assert (out / "file5.txt").read_bytes() == (tree / "file5.txt").read_bytes()
    if os.geteuid() == 0:
        assert not os.path.lexists(out / "null")
        assert any("null: device node skipped" in w for w in report.warnings), report.warnings
