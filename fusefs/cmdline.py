"""The one pattern of nommufs's command lines: ``nommufs``, ``python -m fusefs``
and ``python -m mkimage`` are each a :class:`Parser` with :class:`Command`
modules under it, run by :func:`run_main`.

A command is a module exposing ``NAME``, ``HELP``, ``add_arguments(parser)``
and ``run(args) -> int`` (the :class:`Command` protocol); whoever lists
commands imports them by name, so mypy and a reader see the structure.  A
command may have commands of its own (``nommufs mkimage erofs``): it calls
:func:`add_commands` in its ``add_arguments`` and :func:`run_chosen` in its
``run``.

What every command line gets from here, like the erofs-utils and util-linux
tools it stands beside:

* ``-h``, ``-V``/``--version``, ``-v`` (repeatable) and ``-d N`` (erofs-utils
  message levels: 0 errors only, 2 warnings (default), 3 info, 7 debug),
  before and after each subcommand;
* usage errors in one line, ``PROG: error: ... (see PROG -h)``, exit status 2;
  a command without its subcommand is one too;
* an :class:`~fusefs.errors.FsError` or ``OSError`` in one line, exit 1;
* SIGINT, SIGTERM and SIGHUP raise :class:`~fusefs.errors.Interrupted`, so
  every ``finally`` and ``except BaseException`` runs: temporaries are removed
  and the message says which (exit 128 + the signal's number);
* output into a closed pipe (``nommufs ls IMAGE | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Final, NoReturn, Protocol

from fusefs import __version__
from fusefs.errors import FsError, Interrupted, InvalidArgumentError, interruption
from fusefs.names import one_line

EXIT_USAGE: Final = 2
EXIT_SIGPIPE: Final = 128 + signal.SIGPIPE
SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
LOG_FORMAT: Final = "nommufs: %(levelname)s: %(message)s"


class Command(Protocol):
    """A subcommand module."""

    NAME: str
    HELP: str

    def add_arguments(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


class UsageError(InvalidArgumentError):
    """A command line that does not parse; ``prog`` is the (sub)command's."""

    def __init__(self, message: str, prog: str) -> None:
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise :class:`UsageError` instead of
    exiting, so that :func:`run_main` reports them and callers that build
    command lines in-process (:func:`parse`) can catch them."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


def add_common_arguments(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``-V``, ``-v`` and ``-d``.  A subcommand's land in attributes of their
    own and only when given (argparse lets a subparser's defaults overwrite
    the top level's values); :func:`log_level` takes both."""
    suffix = "" if top else "_sub"
    count: object = 0 if top else argparse.SUPPRESS
    level: object = None if top else argparse.SUPPRESS
    if top:
        parser.set_defaults(verbose_sub=0, debug_sub=None)
    parser.add_argument("-V", "--version", action="version", version=f"nommufs {__version__}")
    parser.add_argument(
        "-v", "--verbose", dest=f"verbose{suffix}", action="count", default=count,
        help="say more (repeatable: -v info, -vv debug)",
    )  # fmt: skip
    parser.add_argument(
        "-d", dest=f"debug{suffix}", type=_debug_level, default=level, metavar="N",
        help="message level as erofs-utils: 0 errors, 2 warnings (default), 3 info, 7+ debug",
    )  # fmt: skip


def _debug_level(text: str) -> int:
    if not text.isdigit() or int(text) > 9:
        raise argparse.ArgumentTypeError(f"-d {text}: a message level 0..9")
    return int(text)


def verbosity(args: argparse.Namespace) -> int:
    """How many ``-v`` were given, before and after the subcommand."""
    return int(args.verbose) + int(args.verbose_sub)


def log_level(args: argparse.Namespace) -> int:
    """The logging level ``-v``/``-d`` ask for (the more talkative wins)."""
    level = logging.WARNING - 10 * min(verbosity(args), 2)
    for debug in (args.debug, args.debug_sub):
        if debug is not None:
            by_d = (
                logging.ERROR if debug < 2 else logging.WARNING if debug == 2
                else logging.INFO if debug < 7 else logging.DEBUG
            )  # fmt: skip
            level = min(level, by_d) if debug >= 2 else max(level, by_d)
    return level


def add_commands(
    parser: argparse.ArgumentParser, commands: Sequence[Command], *, dest: str, metavar: str
) -> None:
    """One subparser per command, under ``parser``; :func:`run_chosen` runs
    the one given."""
    sub = parser.add_subparsers(dest=dest, metavar=metavar, parser_class=Parser)
    sub.required = True  # a command without its subcommand is a usage error
    for cmd in commands:
        p = sub.add_parser(cmd.NAME, help=cmd.HELP, description=cmd.HELP)
        add_common_arguments(p, top=False)
        cmd.add_arguments(p)
        p.set_defaults(**{_runner(dest): cmd.run})


def _runner(dest: str) -> str:
    return f"_run_{dest}"


def run_chosen(args: argparse.Namespace, dest: str) -> int:
    """Run the command :func:`add_commands` registered under ``dest``."""
    run: Callable[[argparse.Namespace], int] = vars(args)[_runner(dest)]
    return int(run(args))


def build_parser(
    prog: str, description: str, commands: Sequence[Command], *, dest: str, metavar: str
) -> Parser:
    parser = Parser(prog=prog, description=description)
    add_common_arguments(parser, top=True)
    add_commands(parser, commands, dest=dest, metavar=metavar)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """``argv`` parsed; UsageError on a bad one (nothing printed, no exit)."""
    return parser.parse_args(list(argv))


class OneLineFormatter(logging.Formatter):
    """Log records whose message is one line of printable text
    (:func:`~fusefs.names.one_line`): a name from an image cannot split it
    or drive the terminal.  A traceback after it stays as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = one_line(record.message)
        return super().formatMessage(record)


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # a second signal must not interrupt the cleanups the first one started
    for s in SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise Interrupted inside the block (in the
    main thread; elsewhere Python cannot set handlers and nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise_interrupted) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _quiet_stdout() -> None:
    """After EPIPE on stdout: point it at /dev/null so that the flush at exit
    does not complain again."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)


def run_main(parser: Parser, argv: Sequence[str] | None, *, dest: str) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the chosen command and
    turn whatever ends it into a message on stderr and an exit status."""
    label = parser.prog
    try:
        args = parse(parser, sys.argv[1:] if argv is None else argv)
        chosen = vars(args)[dest]
        label = f"{parser.prog} {chosen}" if chosen else label
        handler = logging.StreamHandler()
        handler.setFormatter(OneLineFormatter(LOG_FORMAT))
        logging.basicConfig(level=log_level(args), handlers=[handler])
        with _signals_interrupt():
            return run_chosen(args, dest)
    except UsageError as e:
        print(one_line(f"{e.prog}: error: {e} (see {e.prog} -h)"), file=sys.stderr)
        return EXIT_USAGE
    except (Interrupted, FsError, OSError) as e:
        interrupted = interruption(e)
        if interrupted is not None:  # whatever the interrupted cleanup raised after it
            removed = f"; removed {', '.join(interrupted.removed)}" if interrupted.removed else ""
            print(one_line(f"{label}: interrupted by {interrupted.name}{removed}"), file=sys.stderr)
            return 128 + interrupted.signum
        if isinstance(e, BrokenPipeError):
            _quiet_stdout()
            return EXIT_SIGPIPE
        if isinstance(e, FsError):
            print(one_line(f"{label}: {e}"), file=sys.stderr)
        elif isinstance(e, OSError):
            where = f"{os.fsdecode(e.filename)}: " if e.filename is not None else ""
            print(one_line(f"{label}: {where}{e.strerror or e}"), file=sys.stderr)
        return 1


def exit_process(status: int) -> NoReturn:
    """End a command-line process with ``status`` once its command returned,
    without the interpreter's teardown: a build leaves a few objects per
    source file, and freeing them one by one at exit took 60 ms of an
    8000-file ``mkimage erofs`` (as mypy skips it for the same reason).
    Everything the commands open is closed by then (``with`` blocks; the
    images are linked in before ``run`` returns); only the standard
    streams' buffers are left, flushed here.  Output into a closed pipe
    ends as :func:`run_main` ends it.  For ``__main__`` and the console
    script only: a caller of :func:`run_main` in-process keeps its
    interpreter.  Under a profiler or tracer (``python -m cProfile``,
    coverage) the process exits the usual way, so that they write out."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(status)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        status = status or EXIT_SIGPIPE
    except OSError:
        status = status or 1
    with contextlib.suppress(OSError):
        sys.stderr.flush()
    os._exit(status)
