"""The PostgreSQL classification table: one test per row, and asyncpg's own client-side
errors. What every driver shares (query errors by class of failure, generic errors, the cause
chain, the closed flag, connect errors, ``unsent``) is in ``tests/backends/test_classify.py``."""

from __future__ import annotations

import pytest
from asyncpg import exceptions as pgexc

from resilientdb.backends.base import ErrorKind
from resilientdb.backends.postgres import (
    SQLSTATE_CLASS_KINDS,
    SQLSTATE_KINDS,
    classify_error,
)

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY


def server_error(code: str, message: str = "boom") -> pgexc.PostgresError:
    return pgexc.PostgresError.new({"C": code, "M": message, "S": "ERROR"})


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


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
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
    ],
)
def test_client_side_rows(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_error(exc) is kind
