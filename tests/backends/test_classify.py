"""Classification every backend shares, table-driven over the three drivers (no server needed):
a statement's own fault is QUERY whatever the driver calls it, errors of the OS and of the
caller's code mean the same everywhere, the cause chain is walked (cycles too), a closed
connection turns an unknown error into CONNECTION but never overrides a known kind, connect
errors are CONNECTION (try again) or PERMANENT (probe slowly), and only the pre-write checks
are ``unsent``.

What each driver's own tables say, row by row, and its driver-specific rows stay in
``tests/test_<backend>_classify.py``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from asyncpg import exceptions as pgexc
from pymysql import err as myerr

from resilientdb.backends.base import ConnectPaused, ErrorKind, PoolClosed
from resilientdb.backends.mysql import MySQLBackend
from resilientdb.backends.mysql import classify_error as mysql_classify
from resilientdb.backends.postgres import PostgresBackend
from resilientdb.backends.postgres import classify_error as pg_classify
from resilientdb.backends.sqlite import DatabaseFileMoved, SQLiteBackend
from resilientdb.backends.sqlite import classify_error as sqlite_classify
from resilientdb.config import Options, parse_dsn

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY


def pg(code: str, message: str = "boom") -> pgexc.PostgresError:
    """The exception asyncpg builds from an error message with this SQLSTATE."""
    exc = pgexc.PostgresError.new({"C": code, "M": message, "S": "ERROR"})
    assert exc.sqlstate == code
    return exc


def my(code: int, message: str = "boom") -> myerr.MySQLError:
    """The exception PyMySQL builds from an error packet with this number."""
    cls = myerr.error_map.get(code) or (
        myerr.InternalError if code < 1000 else myerr.OperationalError
    )
    return cls(code, message)


def lite(code: int, message: str = "boom") -> sqlite3.OperationalError:
    """An sqlite3 error carrying this (extended) result code and its name."""
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code
    exc.sqlite_errorname = next(
        (n for n in dir(sqlite3) if n.startswith("SQLITE_") and getattr(sqlite3, n) == code),
        f"SQLITE_UNKNOWN_{code}",
    )
    return exc


def closed_sqlite3_error() -> sqlite3.ProgrammingError:
    conn = sqlite3.connect(":memory:")
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError) as info:
        conn.execute("SELECT 1")
    return info.value


@dataclass(frozen=True)
class Driver:
    """One driver's examples for each class of failure."""

    name: str
    backend: Callable[[], Any]
    classify_error: Callable[[BaseException], ErrorKind]
    connection_lost: BaseException  # the server's "your connection is gone"
    retryable: BaseException  # a lost race: deadlock, busy
    permanent: BaseException  # retrying cannot fix it
    odd: BaseException  # unknown to the tables: the closed flag decides
    connect: tuple[tuple[BaseException, ErrorKind], ...]  # classify_connect's answers
    unsent: Callable[[], tuple[BaseException, ...]]  # raised before anything was written
    not_unsent: tuple[BaseException, ...]  # may have been written, at least in part


DRIVERS = [
    Driver(
        "postgres",
        lambda: PostgresBackend(parse_dsn("postgresql://app@127.0.0.1/app"), Options()),
        pg_classify,
        # asyncpg 0.32 chains the server's reason as __cause__ of a client-side error.
        connection_lost=pg("57P01", "terminating connection due to administrator command"),
        retryable=pg("40P01"),
        permanent=pg("28P01"),
        odd=RuntimeError("unexpected protocol state"),
        connect=(
            (ConnectionRefusedError(), C),
            (pg("57P03"), C),  # starting up
            (pg("53300"), C),  # too many connections
            (pg("28P01"), P),
            (pg("3D000"), P),
            (pg("42501"), P),  # no CONNECT privilege
            (pg("40001"), C),  # a lost race: try again
        ),
        unsent=lambda: (
            pgexc.InterfaceError("cannot perform operation: connection is closed"),
            pgexc.InterfaceError("connection is closed"),
        ),
        not_unsent=(pgexc.ConnectionDoesNotExistError("closed in the middle of operation"),),
    ),
    Driver(
        "mysql",
        lambda: MySQLBackend(parse_dsn("mysql://app:pw-secret-1@127.0.0.1/app"), Options()),
        mysql_classify,
        connection_lost=my(1927, "Connection was killed"),
        retryable=my(1213),
        permanent=my(1045),
        odd=AssertionError("Protocol error, expecting EOF"),
        connect=(
            (myerr.OperationalError(2003, "Can't connect"), C),
            (my(1040, "Too many connections"), C),
            (my(1053), C),  # shutting down
            (my(1045), P),
            (my(1044), P),
            (my(1049), P),
            (my(1213), C),  # a race in init_command: try again
            (my(1064), P),  # a broken init_command or hook
            (myerr.OperationalError("Couldn't receive server's public key"), P),
        ),
        unsent=lambda: (
            myerr.InterfaceError("(0, 'Not connected')"),
            myerr.InterfaceError(0, "Not connected (the server closed the connection)"),
            myerr.InterfaceError("Cancelled during execution"),
            myerr.Error("Already closed"),
        ),
        not_unsent=(
            # 2013 mid-query: the statement may have run. Its message must not fool the check.
            myerr.OperationalError(2013, "Lost connection to MySQL server"),
            myerr.OperationalError(2013, "Lost connection (Not connected: [Errno 107])"),
            my(1927, "Connection was killed"),
            myerr.InternalError("Packet sequence number wrong - got 0 expected 1"),
        ),
    ),
    Driver(
        "sqlite",
        lambda: SQLiteBackend(parse_dsn("sqlite:///x.db"), Options()),
        sqlite_classify,
        connection_lost=lite(sqlite3.SQLITE_IOERR_READ),
        retryable=lite(sqlite3.SQLITE_BUSY),
        permanent=lite(sqlite3.SQLITE_CORRUPT),
        odd=RuntimeError("unexpected"),
        connect=(
            (lite(sqlite3.SQLITE_CANTOPEN), P),
            (lite(sqlite3.SQLITE_NOTADB), P),
            (lite(sqlite3.SQLITE_CORRUPT), P),
            (lite(sqlite3.SQLITE_BUSY), C),  # switching to WAL, locked
            (lite(sqlite3.SQLITE_IOERR), C),
            (lite(sqlite3.SQLITE_ERROR), P),  # a broken on_connect hook
            (RuntimeError("hook bug"), P),
        ),
        unsent=lambda: (
            ValueError("no active connection"),  # aiosqlite's Connection._conn
            ValueError("Connection closed"),  # aiosqlite's Connection._execute
            closed_sqlite3_error(),  # sqlite3's own check, before anything runs
            DatabaseFileMoved("/x.db"),  # resilientdb's check, before anything runs
            ConnectPaused("paused"),
        ),
        not_unsent=(
            lite(sqlite3.SQLITE_IOERR_WRITE),  # may have written part
            lite(sqlite3.SQLITE_BUSY),
            lite(sqlite3.SQLITE_READONLY_DBMOVED),  # SQLite's own: not provably before
            ValueError("no active connection, but a subclass"),
            sqlite3.ProgrammingError("Incorrect number of bindings"),
        ),
    ),
]
BY_NAME = {d.name: d for d in DRIVERS}


@pytest.fixture(params=[d.name for d in DRIVERS])
def driver(request: pytest.FixtureRequest) -> Driver:
    return BY_NAME[request.param]


# A statement's own fault, by class of failure: QUERY on every driver, never retried.
QUERY_ERRORS: list[tuple[str, str, BaseException]] = [
    ("syntax", "postgres", pg("42601")),
    ("syntax", "mysql", my(1064)),
    ("syntax-or-no-such-table", "sqlite", lite(sqlite3.SQLITE_ERROR)),
    ("unique-violation", "postgres", pg("23505")),
    ("unique-violation", "mysql", my(1062)),
    ("unique-violation", "sqlite", lite(sqlite3.SQLITE_CONSTRAINT_UNIQUE)),
    ("primary-key", "sqlite", lite(sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY)),
    ("foreign-key", "mysql", my(1452)),
    ("permission", "postgres", pg("42501")),
    ("permission", "mysql", my(1142)),  # table access denied
    ("permission", "sqlite", lite(sqlite3.SQLITE_AUTH)),
    ("division-by-zero", "postgres", pg("22012")),
    ("division-by-zero", "mysql", my(1365)),  # strict mode
    ("undefined-table", "postgres", pg("42P01")),
    ("undefined-table", "mysql", my(1146)),
    ("undefined-column", "mysql", my(1054)),
    ("statement-cancelled", "postgres", pg("57014")),  # statement timeout
    ("statement-cancelled", "mysql", my(1317)),  # KILL QUERY
    ("statement-timeout", "mysql", my(1969)),
    ("statement-timeout", "mysql", my(3024)),
    ("lock-not-available", "postgres", pg("55P03")),
    ("type-mismatch", "sqlite", lite(sqlite3.SQLITE_MISMATCH)),
    ("too-big", "sqlite", lite(sqlite3.SQLITE_TOOBIG)),
    ("misuse", "sqlite", lite(sqlite3.SQLITE_MISUSE)),
    ("bind-range", "sqlite", lite(sqlite3.SQLITE_RANGE)),
]


@pytest.mark.parametrize(
    ("name", "exc"),
    [pytest.param(name, exc, id=f"{failure}-{name}") for failure, name, exc in QUERY_ERRORS],
)
def test_query_errors_surface(name: str, exc: BaseException) -> None:
    assert BY_NAME[name].classify_error(exc) is Q


# Not the driver's: the OS's and the caller's own errors mean the same on every driver.
GENERIC = [
    (ConnectionRefusedError(111, "refused"), C),
    (ConnectionResetError(104, "reset"), C),
    (OSError(113, "no route to host"), C),
    (OSError(5, "I/O error"), C),
    (TimeoutError(), C),
    (ConnectPaused("paused"), C),  # the adapters' own: connecting is paused
    (PoolClosed("the pool is closed"), C),  # the adapters' own
    (ValueError("not a driver error"), Q),
    (RuntimeError("odd"), Q),
]


@pytest.mark.parametrize(("exc", "kind"), GENERIC, ids=[type(e).__name__ for e, _ in GENERIC])
def test_generic_errors(driver: Driver, exc: BaseException, kind: ErrorKind) -> None:
    assert driver.classify_error(exc) is kind


def test_cause_chain_is_followed(driver: Driver) -> None:
    outer = RuntimeError("wrapped")
    outer.__cause__ = driver.connection_lost
    assert driver.classify_error(outer) is C
    loop = RuntimeError("a")
    loop.__cause__ = loop  # a cycle must not hang
    assert driver.classify_error(loop) is Q


class _Conn:
    def __init__(self, closed: bool) -> None:
        self.closed = closed

    def is_closed(self) -> bool:
        return self.closed


def test_closed_flag_turns_an_unknown_error_into_connection(driver: Driver) -> None:
    b = driver.backend()
    assert b.classify(driver.odd, _Conn(True)) is C
    assert b.classify(driver.odd, _Conn(False)) is Q
    assert b.classify(driver.odd) is Q
    # A known kind is never overridden by the flag.
    assert b.classify(driver.retryable, _Conn(True)) is R
    assert b.classify(driver.permanent, _Conn(True)) is P


def test_connect_errors_are_connection_or_permanent(driver: Driver) -> None:
    b = driver.backend()
    assert b.classify_connect(TimeoutError()) is C  # the whole handshake timed out
    assert b.classify_connect(ConnectPaused("paused")) is C
    for exc, kind in driver.connect:
        assert b.classify_connect(exc) is kind, exc


def test_unsent_only_for_pre_write_checks(driver: Driver) -> None:
    b = driver.backend()
    for exc in (*driver.unsent(), PoolClosed("closed")):
        assert b.unsent(exc), exc
        assert driver.classify_error(exc) is C, exc  # and the connection is gone
    for exc in (*driver.not_unsent, ConnectionResetError(), TimeoutError()):
        assert not b.unsent(exc), exc
