"""The PostgreSQL classification table: one test per row, plus the fallbacks."""

from __future__ import annotations

import pytest
from asyncpg import exceptions as pgexc

from resilientdb.backends.base import ErrorKind
from resilientdb.backends.postgres import (
    SQLSTATE_CLASS_KINDS,
    SQLSTATE_KINDS,
    PostgresBackend,
    classify_error,
)
from resilientdb.config import Options, parse_dsn

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY


def server_error(code: str, message: str = "boom") -> pgexc.PostgresError:
    return pgexc.PostgresError.new({"C": code, "M": message, "S": "ERROR"})


def backend() -> PostgresBackend:
    return PostgresBackend(parse_dsn("postgresql://app@127.0.0.1/app"), Options())


@pytest.mark.parametrize(("code", "kind"), sorted(SQLSTATE_KINDS.items()))
def test_sqlstate_table_row(code: str, kind: ErrorKind) -> None:
    exc = server_error(code)
    assert exc.sqlstate == code
    assert classify_error(exc) is kind


@pytest.mark.parametrize(
    ("code", "kind"),
    [("08000", C), ("08003", C), ("08006", C), ("08001", C), ("08004", C), ("08P01", C)],
)
def test_sqlstate_class_rows(code: str, kind: ErrorKind) -> None:
    assert code[:2] in SQLSTATE_CLASS_KINDS
    assert classify_error(server_error(code)) is kind


@pytest.mark.parametrize("code", ["42601", "23505", "42501", "22012", "42P01", "57014", "55P03"])
def test_query_errors_surface(code: str) -> None:
    # syntax, unique violation, permission, division by zero, undefined table,
    # statement timeout (canceled), lock not available: the statement's own fault.
    assert classify_error(server_error(code)) is Q


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionRefusedError(111, "refused"), C),
        (ConnectionResetError(104, "reset"), C),
        (OSError(113, "no route to host"), C),
        (TimeoutError(), C),
        (TimeoutError(), C),
        (pgexc.ConnectionDoesNotExistError("connection was closed in the middle of operation"), C),
        (pgexc.InterfaceError("cannot perform operation: connection is closed"), C),
        (pgexc.InterfaceError("connection is closed"), C),
        (pgexc.InterfaceError("pool is closing"), C),
        (
            pgexc.InterfaceError(
                "cannot call Connection.execute(): connection has been released back to the pool"
            ),
            C,
        ),
        (pgexc.InterfaceError("cannot perform operation: another operation is in progress"), Q),
        (pgexc.ClientConfigurationError("invalid sslmode"), P),
        (pgexc.TargetServerAttributeNotMatched("None of the hosts match"), C),
        (ValueError("not a driver error"), Q),
    ],
)
def test_client_side_rows(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_error(exc) is kind


def test_cause_chain_is_followed() -> None:
    # asyncpg 0.32 chains the server's reason as __cause__ of a client-side error.
    outer = RuntimeError("wrapped")
    outer.__cause__ = server_error("57P01", "terminating connection due to administrator command")
    assert classify_error(outer) is C
    loop = RuntimeError("a")
    loop.__cause__ = loop  # a cycle must not hang
    assert classify_error(loop) is Q


class _ClosedConn:
    def __init__(self, closed: bool) -> None:
        self.closed = closed

    def is_closed(self) -> bool:
        return self.closed


def test_closed_flag_turns_an_unknown_error_into_connection() -> None:
    b = backend()
    odd = RuntimeError("unexpected protocol state")
    assert b.classify(odd, _ClosedConn(True)) is C  # type: ignore[arg-type]
    assert b.classify(odd, _ClosedConn(False)) is Q  # type: ignore[arg-type]


def test_connect_errors_are_connection_or_permanent() -> None:
    b = backend()
    assert b.classify_connect(ConnectionRefusedError()) is C
    assert b.classify_connect(server_error("57P03")) is C
    assert b.classify_connect(server_error("53300")) is C
    assert b.classify_connect(server_error("28P01")) is P
    assert b.classify_connect(server_error("3D000")) is P
    assert b.classify_connect(server_error("42501")) is P  # no CONNECT privilege
    assert b.classify_connect(server_error("40001")) is C


def test_unsent_only_for_pre_write_checks() -> None:
    b = backend()
    assert b.unsent(pgexc.InterfaceError("cannot perform operation: connection is closed"))
    assert b.unsent(pgexc.InterfaceError("connection is closed"))
    assert not b.unsent(pgexc.ConnectionDoesNotExistError("closed in the middle of operation"))
    assert not b.unsent(ConnectionResetError())
    assert not b.unsent(TimeoutError())
