"""What every command line shares (fusefs/cmdline.py), side by side with the
erofs-utils and util-linux tools: -V and -h everywhere, -v/-d before and after
the subcommand, usage errors exit 2, a closed pipe ends quietly, ls hides
dotfiles without -a."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import mkfs_erofs, nommufs

COMMANDS = ["mount", "umount", "ls", "cat", "extract", "inspect", "fsck", "budget", "mkimage",
            "mkimage erofs", "mkimage cramfs"]  # fmt: skip


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = tmp_path_factory.mktemp("manners") / "tree"
    (tree / "many").mkdir(parents=True)
    for i in range(3000):
        (tree / "many" / f"file-with-a-longish-name-{i:05}").write_bytes(b"x")
    (tree / ".profile").write_bytes(b"dot")
    (tree / "visible").write_bytes(b"v")
    return mkfs_erofs(tree.parent / "m.erofs", tree)


@pytest.mark.parametrize("cmd", ["", *COMMANDS])
def test_version_and_help_everywhere(cmd: str) -> None:
    r = nommufs(*cmd.split(), "-V" if cmd else "--version")
    assert r.returncode == 0 and r.stdout.decode().startswith("nommufs "), r.stderr
    r = nommufs(*cmd.split(), "-h")
    assert r.returncode == 0 and b"usage: nommufs" in r.stdout, r.stderr
    for flag in ("-v", "-d"):
        assert f"[{flag}".encode() in r.stdout, r.stdout


@pytest.mark.parametrize(
    ("argv", "prog", "why"),
    [
        ([], "nommufs", "required: COMMAND"),
        (["mkimage"], "nommufs mkimage", "required: FORMAT"),
        (["ls"], "nommufs ls", "required: IMAGE"),
        (["ls", "-d", "12", "x"], "nommufs ls", "-d 12: a message level 0..9"),
        (["bogus"], "nommufs", "invalid choice: 'bogus'"),
        (["mkimage", "cramfs", "-r", "-N", "big", "a", "b"], "nommufs mkimage cramfs",
         "not allowed with argument"),
    ],
)  # fmt: skip
def test_usage_errors_exit_2(argv: list[str], prog: str, why: str) -> None:
    r = nommufs(*argv)
    err = r.stderr.decode().strip()
    assert r.returncode == 2, err
    assert err.startswith(f"{prog}: error: ") and why in err and err.endswith(f"(see {prog} -h)")
    assert len(err.splitlines()) == 1
    r = subprocess.run([sys.executable, "-m", "mkimage"], capture_output=True, check=False)
    assert r.returncode == 2 and r.stderr.startswith(b"mkimage: error: ")


def test_verbosity_before_and_after_the_subcommand(image: Path) -> None:
    quiet = nommufs("fsck", str(image))
    assert quiet.returncode == 0 and not quiet.stderr
    for argv in (["-v", "fsck"], ["fsck", "-v"], ["-d", "3", "fsck"], ["fsck", "-d9"]):
        r = nommufs(*argv, str(image))
        assert r.returncode == 0, r.stderr
        assert f"nommufs: INFO: {image}: erofs image of ".encode() in r.stderr, r.stderr
    for argv in (["-d", "0", "fsck"], ["fsck", "-d", "2"]):  # errors only; warnings (default)
        r = nommufs(*argv, str(image))
        assert r.returncode == 0 and not r.stderr, r.stderr


def test_a_closed_pipe_ends_quietly(image: Path) -> None:
    for argv in (["ls", "-l", "-R", str(image)], ["ls", str(image), "many"]):
        r = subprocess.run(
            f"{sys.executable} -m fusefs {' '.join(argv)} | head -1; echo ${{PIPESTATUS[0]}} >&2",
            shell=True, executable="/bin/bash", capture_output=True, check=False, timeout=120,
        )  # fmt: skip
        assert r.stderr.decode().strip() in ("141", "0"), r.stderr
        assert len(r.stdout.splitlines()) == 1


def test_buffered_output_is_whole_at_exit(image: Path, tmp_path: Path) -> None:
    """The process ends without the interpreter's teardown (exit_process):
    what is still in stdout's buffer is written first, and a failed write
    is a failed command."""
    r = nommufs("ls", str(image), "many")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3000, r.stderr
    assert r.stdout.endswith(b"file-with-a-longish-name-02999\n")
    out = tmp_path / "again.erofs"
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"data")
    r = subprocess.run(
        [sys.executable, "-m", "mkimage", "erofs", str(out), str(src)],
        capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and r.stdout.startswith(f"{out}: ".encode()), r.stderr
    assert r.stdout.endswith(b" compressed files\n")
    with open("/dev/full", "wb") as full:
        r = subprocess.run(
            [sys.executable, "-m", "fusefs", "ls", str(image)],  # two names: only at exit
            stdout=full, stderr=subprocess.PIPE, check=False, timeout=120,
        )  # fmt: skip
    assert r.returncode == 1, r.stderr


def test_a_profiled_run_writes_its_profile(tmp_path: Path) -> None:
    """Under a profiler the process exits the usual way, so cProfile (and
    coverage) get to write what they gathered."""
    prof = tmp_path / "out.prof"
    src = tmp_path / "src"
    src.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "mkimage", "erofs", "-q",
         str(tmp_path / "img"), str(src)],
        capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0 and prof.stat().st_size > 0, r.stderr
    assert b"writer.py" in prof.read_bytes()


def test_ls_hides_dotfiles_without_a(image: Path) -> None:
    r = nommufs("ls", str(image))
    assert r.returncode == 0 and r.stdout.split() == [b"many", b"visible"], r.stdout
    r = nommufs("ls", "-a", str(image))
    assert r.stdout.split()[:3] == [b".", b"..", b".profile"], r.stdout
    r = nommufs("ls", "-l", str(image), ".profile")  # named explicitly: shown
    assert r.returncode == 0 and r.stdout.rstrip().endswith(b" .profile"), r.stdout


def test_errors_name_the_path_asked_for(image: Path, tmp_path: Path) -> None:
    """Not the temporary beside it: the output the user named."""
    missing = tmp_path / "no-such-dir"
    cases = [
        (["extract", str(image), str(missing / "out")], f"nommufs extract: {missing / 'out'}: "),
        (["mkimage", "erofs", str(missing / "x.img"), str(tmp_path)],
         f"nommufs mkimage: {missing / 'x.img'}: "),
        (["budget", str(image), "--mm", "mmu", "--decompress", "vmap", "--plot",
          str(missing / "p.png")], f"nommufs budget: {missing / 'p.png'}: "),
    ]  # fmt: skip
    for argv, prefix in cases:
        r = nommufs(*argv)
        err = r.stderr.decode().strip()
        assert r.returncode == 1 and len(err.splitlines()) == 1, err
        assert err.startswith(prefix) and "No such file or directory" in err, err
    assert not missing.exists() and sorted(os.listdir(tmp_path)) == []


def test_extract_into_a_directory_named_relative_to_the_cwd(image: Path, tmp_path: Path) -> None:
    """``nommufs extract IMG out``: the free-space check looks at the cwd."""
    r = nommufs("extract", str(image), "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "visible").read_bytes() == b"v"
