"""One target per backend for the contract suite: a DSN, the backend's dialect (placeholders,
the auto-increment column: ``harness/backends.py``), and a way to kill the app's connections
from outside."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from harness.backends import MYSQL, POSTGRES, SQLITE, Dialect
from harness.servers import SECURE_USER, MariaDBServer, PostgresServer
from resilientdb import Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy


@dataclass
class Target:
    dialect: Dialect
    dsn: str
    kill_connections: Callable[[], Awaitable[int]]  # kill the app's connections, server side
    server: PostgresServer | MariaDBServer | None = None  # set by the server_target fixture

    # What the fault suite (test_faults.py) needs beyond the dialect: FAULTS below, and the
    # server's side of the app's connections, asked through its superuser.

    @property
    def faults(self) -> Faults:
        return FAULTS[self.dialect.name]

    @property
    def throwaway(self) -> PostgresServer | MariaDBServer:
        assert self.server is not None, "a server_target only"
        return self.server

    def via(self, proxy: FaultProxy) -> str:
        """The DSN, through ``proxy``."""
        return with_host(parse_dsn(self.dsn), proxy.host, proxy.port)

    async def admin(self, sql: str, database: str | None = None) -> str:
        server = self.throwaway
        if isinstance(server, PostgresServer):
            return await asyncio.to_thread(server.admin_query, sql, database or "postgres")
        return await asyncio.to_thread(server.admin_query, sql, database)

    async def app_connections(self, running: str = "") -> int:
        """How many connections the app user has open; with ``running``, only those running
        a statement that starts so."""
        if self.dialect.name == "postgres":
            sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
            where = " AND state = 'active' AND query LIKE '{}%'"
        else:
            sql = "SELECT COUNT(*) FROM information_schema.processlist WHERE user = 'app'"
            where = " AND info LIKE '{}%'"
        return int(await self.admin(sql + (where.format(running) if running else "")))

    async def kill_running(self, running: str) -> int:
        """Kill the app's connections running a statement that starts with ``running``."""
        if self.dialect.name == "postgres":
            return int(
                await self.admin(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    f"WHERE usename = 'app' AND query LIKE '{running}%'"
                )
            )
        ids = await self.admin(
            "SELECT id FROM information_schema.processlist "
            f"WHERE user = 'app' AND info LIKE '{running}%'"
        )
        for i in ids.split():
            await self.admin(f"KILL {int(i)}")
        return len(ids.split())


def _server(dialect: Dialect, server: PostgresServer | MariaDBServer) -> Target:
    async def kill() -> int:
        return await asyncio.to_thread(server.kill_app_connections)

    return Target(dialect, server.dsn(), kill)


def _sqlite(path: Path) -> Target:
    async def kill() -> int:
        # SQLite has no server: "killing" a connection is closing it underneath the supervisor,
        # which the contract tests do through the adapter (see test_contract.kill_underneath).
        return 0

    sqlite3.connect(path).close()
    return Target(SQLITE, f"sqlite:///{path}", kill)


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "postgres":
        yield _server(POSTGRES, request.getfixturevalue("pg"))
    elif request.param == "mysql":
        yield _server(MYSQL, request.getfixturevalue("mariadb"))
    else:
        yield _sqlite(tmp_path / "contract.db")


# --- the fault suite (test_faults.py): what differs per backend when things break -------------


def _pg_syntax(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.PostgresSyntaxError)


def _pg_division_by_zero(exc: BaseException) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.DivisionByZeroError)


def _pg_gone(exc: BaseException | None) -> bool:
    import asyncpg

    return isinstance(exc, asyncpg.ConnectionDoesNotExistError)


def _pg_refused(exc_type: str) -> Callable[[BaseException | None], bool]:
    def check(exc: BaseException | None) -> bool:
        import asyncpg

        return isinstance(exc, getattr(asyncpg, exc_type))

    return check


def _my_code(*codes: int, kind: str = "MySQLError") -> Callable[[BaseException | None], bool]:
    def check(exc: BaseException | None) -> bool:
        from pymysql import err

        return isinstance(exc, getattr(err, kind)) and exc.args[:1] in {(c,) for c in codes}

    return check


def _sqlite_syntax(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and "syntax error" in str(exc)


def _sqlite_integrity(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.IntegrityError)


async def _pg_raw_execute(raw: Any, sql: str) -> None:
    await raw.execute(sql)


async def _my_raw_execute(raw: Any, sql: str) -> None:
    async with raw.cursor() as cur:
        await cur.execute(sql)


@dataclass
class CountedFailure:
    """A statement that counts its attempt, out of reach of any rollback, and then fails:
    ``attempts`` reads how often it ran. ``on_connect`` is the supervisor's hook, if needed."""

    setup: tuple[str, ...]  # run through the supervisor first
    method: str  # the Database method that runs ``statement``
    statement: str
    error: Callable[[BaseException], bool]  # the driver's own error, raised unchanged
    attempts: Callable[[Supervisor], Awaitable[int]]
    on_connect: Callable[[Any], Awaitable[None]] | None = None


def _sql_attempts(sql: str) -> Callable[[Supervisor], Awaitable[int]]:
    async def read(sup: Supervisor) -> int:
        return int(await sup.db.fetchval(sql))

    return read


def _pg_counted() -> CountedFailure:
    return CountedFailure(
        ("DROP SEQUENCE IF EXISTS attempts", "CREATE SEQUENCE attempts"),
        "fetchval",
        "SELECT nextval('attempts') / 0",  # nextval is never rolled back
        _pg_division_by_zero,
        _sql_attempts("SELECT last_value FROM attempts"),
    )


def _my_counted() -> CountedFailure:
    return CountedFailure(
        (
            "DROP TABLE IF EXISTS attempts",
            # MyISAM has no rollback: the row inserted before the duplicate stays.
            "CREATE TABLE attempts (n int AUTO_INCREMENT PRIMARY KEY) ENGINE=MyISAM",
        ),
        "execute",
        "INSERT INTO attempts VALUES (NULL), (1)",
        _my_code(1062, kind="IntegrityError"),
        _sql_attempts("SELECT COUNT(*) FROM attempts"),
    )


def _sqlite_counted() -> CountedFailure:
    runs = 0

    def bump() -> int:
        nonlocal runs
        runs += 1
        return 1

    async def on_connect(conn: Any) -> None:
        await conn.create_function("bump", 0, bump)

    async def attempts(sup: Supervisor) -> int:
        return runs

    return CountedFailure(
        ("CREATE TABLE u (id INTEGER PRIMARY KEY)", "INSERT INTO u VALUES (1)"),
        "execute",
        "INSERT INTO u VALUES (bump())",  # bump() runs, then the primary key fails
        _sqlite_integrity,
        attempts,
        on_connect,
    )


@dataclass(frozen=True)
class Faults:
    """Per backend: the SQL and the errors the fault suite expects (``test_faults.py``)."""

    syntax_error: Callable[[BaseException], bool]  # what "SELEC 1" raises
    counted_failure: Callable[[], CountedFailure]  # a fresh one per test
    # Server backends only (None / empty for SQLite):
    raw_execute: Callable[[Any, str], Awaitable[None]] | None = None  # on a raw connection
    tag_session: str = ""  # run by on_connect; then...
    read_tag: str = ""  # ...reads tag_value back
    slow_read_tag: str = ""  # the same, taking 0.5 s
    tag_value: str = ""
    sleep: str = ""  # a 30 ms read
    session_id: str = ""  # the server's id of the connection
    current_user: str = ""
    secure_user: str = ""  # current_user's answer for SECURE_USER
    ledger: str = ""  # admin SQL (re)creating ledger (id PRIMARY KEY), owned by app
    slow_insert: str = ""  # an INSERT INTO ledger of {1}, taking 0.5 s
    inserted_one: object = None  # what db.execute returns for a one-row INSERT
    killed_mid_query: Callable[[BaseException | None], bool] = lambda exc: False
    refusal_setup: str = ""  # admin SQL run before the refused connects
    refusals: tuple[tuple[dict[str, str], Callable[[BaseException | None], bool]], ...] = ()
    pool_quiet: Callable[[Any], bool] = lambda backend: True  # the adapter's own bookkeeping


FAULTS = {
    "postgres": Faults(
        _pg_syntax,
        _pg_counted,
        _pg_raw_execute,
        tag_session="SET search_path TO app_schema, public",
        read_tag="SHOW search_path",
        slow_read_tag="SELECT current_setting('search_path') FROM pg_sleep(0.5)",
        tag_value="app_schema, public",
        sleep="SELECT pg_sleep(0.03)",
        session_id="SELECT pg_backend_pid()",
        current_user="SELECT current_user",
        secure_user=SECURE_USER,
        ledger="DROP TABLE IF EXISTS ledger; CREATE TABLE ledger (id text PRIMARY KEY);"
        "ALTER TABLE ledger OWNER TO app;",
        slow_insert="INSERT INTO ledger SELECT $1 FROM pg_sleep(0.5)",
        inserted_one="INSERT 0 1",  # asyncpg's status string
        killed_mid_query=_pg_gone,
        refusals=(
            ({"user": SECURE_USER, "password": "wrong-pw"}, _pg_refused("InvalidPasswordError")),
            ({"database": "no_such_db"}, _pg_refused("InvalidCatalogNameError")),
        ),
    ),
    "mysql": Faults(
        _my_code(1064, kind="ProgrammingError"),
        _my_counted,
        _my_raw_execute,
        tag_session="SET @tag = 'hooked'",
        read_tag="SELECT @tag",
        slow_read_tag="SELECT @tag FROM (SELECT SLEEP(0.5)) x",
        tag_value="hooked",
        sleep="SELECT SLEEP(0.03)",
        session_id="SELECT CONNECTION_ID()",
        current_user="SELECT CURRENT_USER()",
        secure_user=f"{SECURE_USER}@127.0.0.1",
        ledger="DROP TABLE IF EXISTS ledger; CREATE TABLE ledger (id varchar(20) PRIMARY KEY)",
        slow_insert="INSERT INTO ledger SELECT %s FROM (SELECT SLEEP(0.5)) x",
        inserted_one=1,  # the row count
        killed_mid_query=_my_code(2013, 1927, kind="OperationalError"),
        # With a grant on it, the server tells the app user the database does not exist
        # (1049); without one it answers access denied (1044).
        refusal_setup="GRANT ALL ON `no_such_db`.* TO 'app'@'127.0.0.1'",
        refusals=(
            ({"user": SECURE_USER, "password": "wrong-pw"}, _my_code(1045)),
            ({"database": "no_such_db"}, _my_code(1049)),
            ({"database": "not_granted"}, _my_code(1044)),
        ),
        pool_quiet=lambda backend: backend._pool._slots == 0 and not backend._pool._waiting,
    ),
    "sqlite": Faults(_sqlite_syntax, _sqlite_counted),
}


@pytest.fixture(params=["postgres", "mysql"])
def server_target(request: pytest.FixtureRequest) -> Target:
    """``target`` over the backends with a server, which it carries (to restart, kill, ask)."""
    if request.param == "postgres":
        server: PostgresServer | MariaDBServer = request.getfixturevalue("pg")
        return replace(_server(POSTGRES, server), server=server)
    server = request.getfixturevalue("mariadb")
    return replace(_server(MYSQL, server), server=server)


@pytest.fixture
async def proxy(server_target: Target) -> AsyncIterator[FaultProxy]:
    """A FaultProxy in front of ``server_target``'s server (``server_target.via(proxy)``)."""
    server = server_target.throwaway
    async with FaultProxy(server.host, server.port) as p:
        yield p
