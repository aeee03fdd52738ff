"""The ``resilientdb`` command.

::

    resilientdb demo [--duration 20] [--dsn DSN] [--plot FILE.png]
    resilientdb check DSN [--json] [--timeout 5]      exit 0 pass, 1 fail, 2 bad input
    resilientdb wait DSN [--timeout 60]                exit 0 ready, 1 timed out, 2 bad input
    resilientdb watch DSN [--interval 1] [--count N]   a line per second until Ctrl-C

Errors are one line on stderr (``--debug`` shows the traceback of an unexpected one), and
every DSN printed is redacted. See docs/guide.md for what the demo measures.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn

from .. import __version__
from .._redact import register_dsn, scrub
from ._common import (
    EXIT_BAD_INPUT,
    EXIT_FAIL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    CLIError,
    configure_logging,
    one_line,
    say,
)

__all__ = ["main"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, not {text!r}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text!r}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse with its error line scrubbed: "unrecognized arguments: DSN" quotes a DSN."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {scrub(message)}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="resilientdb",
        description="An asyncio connection supervisor for asyncpg, aiomysql and aiosqlite.",
    )
    parser.add_argument("--version", action="version", version=f"resilientdb {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help="show the supervisor's log lines"
    )
    common.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="run a workload under injected faults and show what resilientdb absorbs",
        description="Run reads, writes and transactions while injecting real faults, through "
        "resilientdb and on the raw driver at the same time; print a line per second and a "
        "summary. Without --dsn: an embedded SQLite database in a temporary directory.",
    )
    demo.add_argument("--duration", type=_seconds, default=20.0, help="seconds (default 20)")
    demo.add_argument(
        "--dsn",
        help="a PostgreSQL or MySQL database to use instead of SQLite; faults are injected by "
        "a FaultProxy in between; the demo creates and drops tables named resilientdb_demo_*",
    )
    demo.add_argument("--plot", metavar="FILE.png", help="draw the timeline (needs matplotlib)")

    check = sub.add_parser(
        "check",
        parents=[common],
        help="one health check: exit 0 pass, 1 fail, 2 bad input",
        description="Connect, run SELECT 1, report. A SQLite file is opened mode=rw: a check "
        "never creates a database.",
    )
    check.add_argument("dsn", metavar="DSN")
    check.add_argument("--json", action="store_true", help="print the application/health+json")
    check.add_argument(
        "--timeout", type=_seconds, default=5.0, help="bound on connecting and on the ping (5)"
    )

    wait = sub.add_parser(
        "wait",
        parents=[common],
        help="wait until the database accepts connections (container entrypoints)",
        description="Probe with backoff until the database accepts a connection: exit 0, or 1 "
        "after --timeout seconds.",
    )
    wait.add_argument("dsn", metavar="DSN")
    wait.add_argument("--timeout", type=_seconds, default=60.0, help="seconds (default 60)")

    watch = sub.add_parser(
        "watch",
        parents=[common],
        help="live state, latency and pool figures until Ctrl-C",
    )
    watch.add_argument("dsn", metavar="DSN")
    watch.add_argument("--interval", type=_seconds, default=1.0, help="seconds between lines")
    watch.add_argument("--count", type=_positive, help="stop after N lines")
    return parser


def _command(args: argparse.Namespace) -> Coroutine[Any, Any, int]:
    from . import _probe

    if args.command == "check":
        return _probe.check(args.dsn, timeout=args.timeout, as_json=args.json)
    if args.command == "wait":
        return _probe.wait(args.dsn, timeout=args.timeout, verbose=args.verbose)
    if args.command == "watch":
        return _probe.watch(args.dsn, interval=args.interval, count=args.count)
    from .demo.run import demo

    return demo(duration=args.duration, dsn=args.dsn, plot=args.plot)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``resilientdb`` console script; returns the exit status."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        if "://" in arg:
            # Before argparse sees them: its errors quote arguments, and a DSN that parse_dsn
            # refuses (an unencoded '#' in the password) is never parsed to register it later.
            register_dsn(arg)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_OK
    configure_logging(args.verbose)
    name = f"resilientdb {args.command}"
    try:
        return asyncio.run(_command(args))
    except CLIError as exc:
        say(f"{name}: {exc}", sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        # Ctrl-C is how `watch` is meant to end; for the others it is an interruption.
        return EXIT_OK if args.command == "watch" else EXIT_INTERRUPTED
    except Exception as exc:
        if args.debug:
            raise
        say(f"{name}: unexpected error: {one_line(exc)} (--debug shows where)", sys.stderr)
        return EXIT_FAIL
