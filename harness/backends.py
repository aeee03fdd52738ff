"""The ledger's per-backend dialects: placeholders, DDL, what the SQL can do, driver errors.

The driver modules are imported only when a predicate runs, so that importing the ledger
does not need every driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


def _pg_error(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.PostgresError)


def _pg_duplicate(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.UniqueViolationError)


def _pg_aborted(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.InFailedSQLTransactionError)


def _my_error(exc: BaseException) -> bool:
    from pymysql import err

    return isinstance(exc, err.MySQLError)


def _my_duplicate(exc: BaseException) -> bool:
    from pymysql import err

    return isinstance(exc, err.IntegrityError) and exc.args[:1] == (1062,)


def _sqlite_error(exc: BaseException) -> bool:
    import sqlite3

    return isinstance(exc, sqlite3.Error)


def _sqlite_duplicate(exc: BaseException) -> bool:
    import sqlite3

    return isinstance(exc, sqlite3.IntegrityError)


def _never(exc: BaseException) -> bool:
    return False


@dataclass(frozen=True)
class Dialect:
    """What differs between backends: placeholders, DDL, what the SQL can do, driver errors."""

    name: str
    placeholder: Callable[[int], str]
    serial: str
    insert_ignore: str  # INSERT of a (mark_id) that does nothing when it exists
    multi_statement: bool  # db.execute takes "stmt; stmt" without arguments
    ddl_commits: bool  # DDL commits the open transaction implicitly
    driver_error: Callable[[BaseException], bool]
    duplicate_key: Callable[[BaseException], bool]
    aborted: Callable[[BaseException], bool]  # "current transaction is aborted"

    def p(self, n: int) -> str:
        return self.placeholder(n)


POSTGRES = Dialect(
    "postgres",
    lambda n: f"${n}",
    "bigserial PRIMARY KEY",
    "INSERT INTO marks (mark_id, hits) VALUES ($1, 0) ON CONFLICT DO NOTHING",
    multi_statement=True,
    ddl_commits=False,
    driver_error=_pg_error,
    duplicate_key=_pg_duplicate,
    aborted=_pg_aborted,
)
MYSQL = Dialect(
    "mysql",
    lambda n: "%s",
    "bigint AUTO_INCREMENT PRIMARY KEY",
    "INSERT IGNORE INTO marks (mark_id, hits) VALUES (%s, 0)",
    multi_statement=True,
    ddl_commits=True,
    driver_error=_my_error,
    duplicate_key=_my_duplicate,
    aborted=_never,
)
SQLITE = Dialect(
    "sqlite",
    lambda n: "?",
    "integer PRIMARY KEY AUTOINCREMENT",
    "INSERT INTO marks (mark_id, hits) VALUES (?, 0) ON CONFLICT DO NOTHING",
    multi_statement=False,
    ddl_commits=False,
    driver_error=_sqlite_error,
    duplicate_key=_sqlite_duplicate,
    aborted=_never,
)
