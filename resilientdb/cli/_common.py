"""What every ``resilientdb`` subcommand shares: one-line errors, redaction, quiet logging.

The rules the commands follow: a problem the user can fix (a bad DSN, an unreachable host, a
missing driver) is one line on stderr, never a traceback; every DSN and message printed is
redacted (passwords replaced by ``***``); exit status 0 means success, 1 a failed check and 2
bad input.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

from .._redact import describe, register_secret, scrub
from ..config import DSN, parse_dsn
from ..errors import ConfigurationError

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_FAIL",
    "EXIT_OK",
    "CLIError",
    "configure_logging",
    "parse_target",
    "read_only_sqlite",
    "say",
]

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130

_LOGGERS = ("resilientdb", "asyncpg", "aiomysql", "aiosqlite")


class CLIError(Exception):
    """A problem to report as one line on stderr, with the exit status to use."""

    def __init__(self, message: str, status: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.status = status


def say(text: str, stream: TextIO | None = None) -> None:
    """Print one scrubbed line (stdout by default) and flush, so pipes see it at once."""
    out = sys.stdout if stream is None else stream
    print(scrub(text), file=out, flush=True)


def parse_target(dsn: str) -> DSN:
    """Parse a DSN given on the command line; ``CLIError`` (exit 2) when it is malformed.

    The password is registered with the scrubber first, so that no later message, from
    resilientdb or from a driver, can print it.
    """
    try:
        parsed = parse_dsn(dsn)
    except ConfigurationError as exc:
        raise CLIError(describe_config(exc), EXIT_BAD_INPUT) from None
    register_secret(parsed.password)
    register_secret(parsed.options.get("password"))
    return parsed


def describe_config(exc: ConfigurationError) -> str:
    """A ConfigurationError's message, scrubbed (it already names the fix)."""
    return scrub(str(exc))


def read_only_sqlite(dsn: DSN) -> str:
    """The DSN to use for a check of ``dsn``: a SQLite file is opened ``mode=rw``.

    A health check must never create the database it checks: without this, checking a
    mistyped path would create an empty database there and report it healthy.
    """
    if dsn.backend != "sqlite" or dsn.path == ":memory:" or "mode" in dsn.options:
        return dsn.raw
    # Appended by hand: urlunsplit would drop the empty authority of sqlite:///path.
    base, _, fragment = dsn.raw.partition("#")
    joined = f"{base}{'&' if '?' in base else '?'}mode=rw"
    return f"{joined}#{fragment}" if fragment else joined


class _ScrubbingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def configure_logging(verbose: bool) -> None:
    """Keep log lines (the supervisor's, the drivers') off the terminal unless ``--verbose``.

    Without a handler, Python prints WARNING records (every failed reconnect attempt, asyncpg's
    pool retrying in the demo's raw run) to stderr, which would bury the lines a command
    promises. With ``--verbose`` they are shown, scrubbed of passwords.
    """
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        logger.propagate = False
        for old in list(logger.handlers):
            logger.removeHandler(old)
        if verbose:
            stream = logging.StreamHandler(sys.stderr)
            stream.setFormatter(
                _ScrubbingFormatter("%(asctime)s %(name)s %(levelname)s %(message)s")
            )
            logger.addHandler(stream)
            if name == "resilientdb":
                logger.setLevel(logging.INFO)
        else:
            logger.addHandler(logging.NullHandler())


def quiet_options() -> dict[str, Any]:
    """Supervisor options for a short-lived command: one connection, no memory watchdog."""
    return {"min_size": 1, "max_size": 1, "memory_watchdog": False}


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, scrubbed (for errors nobody planned for)."""
    return describe(exc)
