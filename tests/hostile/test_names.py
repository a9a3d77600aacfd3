"""Names from an image reach the terminal escaped (fusefs.names): one line,
printable, the bytes recoverable; JSON keeps them exact."""

from __future__ import annotations

import json
import os

import pytest

from fusefs.names import escape, json_name, one_line, show_path


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain-name.txt", "plain-name.txt"),
        (b"a\n/bc", "a\\n/bc"),
        (b"\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        (b"nul\x00byte", "nul\\x00byte"),
        (b"back\\slash", "back\\\\slash"),
        (b"tab\there\r", "tab\\there\\r"),
        (b"\xff\xfe", "\\xff\\xfe"),
        ("été 日本".encode(), "été 日本"),
        ("rtl\u202eoverride".encode(), "rtl\\xe2\\x80\\xaeoverride"),
        (b"\xed\xa0\x80", "\\xed\\xa0\\x80"),  # an encoded surrogate is not UTF-8
        (b"\x7f", "\\x7f"),
    ],
)
def test_escape_is_one_printable_line_that_gives_the_bytes_back(raw: bytes, shown: str) -> None:
    assert escape(raw) == shown
    assert shown.isprintable()
    assert _unescape(shown) == raw


def _unescape(shown: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(shown):
        c = shown[i]
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        nxt = shown[i + 1]
        if nxt == "x":
            out.append(int(shown[i + 2 : i + 4], 16))
            i += 4
        else:
            out += {"\\": b"\\", "n": b"\n", "t": b"\t", "r": b"\r"}[nxt]
            i += 2
    return bytes(out)


def test_argv_strings_are_escaped_by_their_bytes() -> None:
    assert escape(os.fsdecode(b"x\xffy\n")) == "x\\xffy\\n"
    assert show_path(b"etc/\x1bpasswd") == "/etc/\\x1bpasswd"


def test_one_line_escapes_only_what_is_not_printable() -> None:
    already = show_path(b"a\nb\\c")
    assert one_line(already) == already
    arg = os.fsdecode(b"x\n\xff")
    assert one_line(f"nommufs ls: {arg}: gone") == "nommufs ls: x\\n\\xff: gone"


def test_json_names_are_exact() -> None:
    for raw in (b"a\n/bc", b"\xff\x00\x1b", "日本".encode()):
        text = json.dumps({"name": json_name(raw)})
        assert os.fsencode(json.loads(text)["name"]) == raw
