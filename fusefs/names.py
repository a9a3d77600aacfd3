"""Names from an image, shown to a person or given to a program.

An image is input like any other: its names may hold ESC sequences, NUL,
newlines, bytes that are not UTF-8.  Printed raw they would drive the
terminal or split one message into two lines that look like two.  So every
name the command line shows -- in error messages, ``ls``, ``fsck``'s report,
warnings and logs -- goes through :func:`escape`, one convention for the
whole CLI, Python's for bytes literals:

* printable characters of valid UTF-8 stay as they are (``é``, ``日本``);
* a backslash is doubled (``\\\\``), so the escaped text says which
  backslashes were in the name;
* newline, tab and carriage return are ``\\n``, ``\\t``, ``\\r``;
* every other byte -- a control character (ESC is ``\\x1b``, NUL ``\\x00``),
  each byte of a non-printable character (U+202E is ``\\xe2\\x80\\xae``), a
  byte that is not UTF-8 -- is ``\\xNN``.

The result is one line of printable text from which the name's bytes can be
read back exactly.  :func:`one_line` is the last guard for a whole message
(which may carry a command-line argument too): it escapes what is not
printable and leaves the rest, escaped names included, as it is.

JSON outputs keep names exact instead (:func:`json_name`): valid UTF-8 is the
string itself; a byte that is not UTF-8 becomes the lone surrogate U+DC80 +
byte (``"\\udcff"`` for 0xff), as Python's ``os.fsdecode`` does, so
``os.fsencode(json.loads(text))`` gives the bytes back.
"""

from __future__ import annotations

import re
from typing import Final

# ASCII that is printable and not a backslash: shown as it is
_PLAIN: Final = re.compile(rb"[\x20-\x5b\x5d-\x7e]*")
_NAMED: Final[dict[str, str]] = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _char(c: str) -> str:
    if c in _NAMED:
        return _NAMED[c]
    if c.isprintable():
        return c
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    return "".join(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogatepass"))


def escape(name: bytes | str) -> str:
    """``name`` as one line of printable text (the convention above).

    A ``str`` is taken as the OS gives it (``sys.argv``, ``os.fsdecode``):
    its surrogate escapes are the bytes that were not UTF-8."""
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    if _PLAIN.fullmatch(raw):
        return raw.decode("ascii")
    return "".join(_char(c) for c in raw.decode("utf-8", "surrogateescape"))


def show_path(path: bytes) -> str:
    """A path from an image (relative to its root) for a message: ``/``-rooted
    and escaped."""
    return "/" + escape(path)


def one_line(message: str) -> str:
    """``message`` with every character that is not printable escaped (as
    :func:`escape` would) and everything else, backslashes included, kept:
    text that is already escaped comes back unchanged."""
    if message.isprintable():
        return message
    return "".join(c if c.isprintable() else _char(c) for c in message)


def json_name(name: bytes) -> str:
    """``name`` for a JSON document, exact (see the module docstring)."""
    return name.decode("utf-8", "surrogateescape")
