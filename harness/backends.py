"""What differs per backend, described once for the ledger, the contract suite and the
benchmarks: placeholders and the auto-increment column (the shipped demo's own dialects, which
this extends), what the SQL can do, the benchmarks' queries, and the driver's errors.

The driver modules are imported only when a predicate runs, so that importing the harness
does not need every driver. Killing the app's connections from outside is the throwaway
servers' job (``kill_app_connections`` in ``harness/servers.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from resilientdb.cli.demo.workload import MYSQL as DEMO_MYSQL
from resilientdb.cli.demo.workload import POSTGRES as DEMO_POSTGRES
from resilientdb.cli.demo.workload import SQLITE as DEMO_SQLITE
from resilientdb.cli.demo.workload import Dialect as DemoDialect

__all__ = ["DIALECTS", "MYSQL", "POSTGRES", "SQLITE", "Dialect"]


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

    base: DemoDialect  # the name, the placeholder style and the auto-increment column
    insert_ignore: str  # INSERT of a (mark_id) that does nothing when it exists
    multi_statement: bool  # db.execute takes "stmt; stmt" without arguments
    ddl_commits: bool  # DDL commits the open transaction implicitly
    hundred_rows: str  # a 100-row read that needs no table (the benchmarks' rows())
    driver_error: Callable[[BaseException], bool]
    duplicate_key: Callable[[BaseException], bool]
    aborted: Callable[[BaseException], bool]  # "current transaction is aborted"

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def serial(self) -> str:
        return self.base.serial

    def p(self, n: int) -> str:
        """The placeholder for parameter ``n`` (1-based)."""
        return self.base.p(n)

    def sql(self, text: str) -> str:
        """``text`` with ``{1}``, ``{2}`` ... replaced by this backend's placeholders."""
        for n in range(9, 0, -1):
            text = text.replace("{" + str(n) + "}", self.p(n))
        return text


POSTGRES = Dialect(
    DEMO_POSTGRES,
    "INSERT INTO marks (mark_id, hits) VALUES ($1, 0) ON CONFLICT DO NOTHING",
    multi_statement=True,
    ddl_commits=False,
    hundred_rows="SELECT g, 'row ' || g FROM generate_series(1, 100) g",
    driver_error=_pg_error,
    duplicate_key=_pg_duplicate,
    aborted=_pg_aborted,
)
MYSQL = Dialect(
    DEMO_MYSQL,
    "INSERT IGNORE INTO marks (mark_id, hits) VALUES (%s, 0)",
    multi_statement=True,
    ddl_commits=True,
    hundred_rows="SELECT seq, CONCAT('row ', seq) FROM seq_1_to_100",
    driver_error=_my_error,
    duplicate_key=_my_duplicate,
    aborted=_never,
)
SQLITE = Dialect(
    DEMO_SQLITE,
    "INSERT INTO marks (mark_id, hits) VALUES (?, 0) ON CONFLICT DO NOTHING",
    multi_statement=False,
    ddl_commits=False,
    hundred_rows=(
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 100) "
        "SELECT x, 'row ' || x FROM g"
    ),
    driver_error=_sqlite_error,
    duplicate_key=_sqlite_duplicate,
    aborted=_never,
)
DIALECTS = {d.name: d for d in (POSTGRES, MYSQL, SQLITE)}
