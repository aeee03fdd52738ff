"""Helpers shared by the audit regression tests (``tests/test_audit_*.py``).

* ``Target``: one backend (DSN, placeholder, what differs in SQL) for the tests that run the
  same promise on PostgreSQL, MariaDB and SQLite.
* Observers: plain driver connections straight to the server (never through the supervisor
  or a proxy), so a test can see what the server really applied.
* ``cut_reply``: make a call lose its reply *after* the server applied the statement: the
  proxy delays every chunk, the test waits until an observer sees the effect, then resets
  the connection while the reply is still held in the proxy.
"""

from __future__ import annotations

import asyncio
import datetime
import sqlite3
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiomysql
import asyncpg
import pytest
from pymysql import err as myerr

from harness.backends import DIALECTS
from harness.polling import until_async
from harness.servers import MariaDBServer, PostgresServer
from resilientdb import events
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

T = TypeVar("T")

# Disconnected / Reconnecting / Reconnected: the supervisor thought the connection was lost.
OUTAGE_EVENTS = (events.Disconnected, events.Reconnecting, events.Reconnected)


def via(proxy: FaultProxy, dsn: str) -> str:
    """``dsn`` pointed at ``proxy``."""
    return with_host(parse_dsn(dsn), proxy.host, proxy.port)


async def outcome_of(call: Awaitable[T]) -> T | Exception:
    """What ``call`` returned, or the exception it raised (to assert on both at once)."""
    try:
        return await call
    except Exception as exc:
        return exc


async def settle_task(task: asyncio.Task[Any], timeout: float = 10.0) -> None:
    """Cleanup: give a task that may still run a bounded time, then cancel it."""
    if not task.done():
        await asyncio.wait({task}, timeout=timeout)
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=timeout)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning


def chain(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and every exception behind it (``__cause__``, else ``__context__``)."""
    seen: list[BaseException] = []
    while exc is not None and all(exc is not s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def mysql_codes(exc: BaseException | None) -> list[int]:
    """The MySQL error numbers in ``exc``'s chain."""
    return [e.args[0] for e in chain(exc) if isinstance(e, myerr.MySQLError) and e.args]


# -- observers ---------------------------------------------------------------------------------


async def pg_connect(pg: PostgresServer, user: str = "app") -> asyncpg.Connection[Any]:
    """A plain asyncpg connection to the server (``postgres`` is the superuser, over TCP)."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(
        host=pg.host, port=pg.port, user=user, database="app", timeout=10
    )
    return conn


async def my_connect(mariadb: MariaDBServer) -> Any:
    """A plain aiomysql connection (user ``app``, autocommit) to the server."""
    return await aiomysql.connect(
        host=mariadb.host, port=mariadb.port, user="app", db="app", autocommit=True
    )


async def my_query(conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Every row of ``sql`` on a plain aiomysql connection."""
    async with conn.cursor() as cur:
        await cur.execute(sql, args or None)
        return list(await cur.fetchall())


async def my_value(conn: Any, sql: str, *args: Any) -> Any:
    rows = await my_query(conn, sql, *args)
    return rows[0][0] if rows else None


async def pg_admin(pg: PostgresServer, sql: str) -> str:
    return await asyncio.to_thread(pg.admin_query, sql, "app")


async def my_admin(mariadb: MariaDBServer, sql: str) -> str:
    return await asyncio.to_thread(mariadb.admin_query, sql, "app")


async def prepare_hot_mysql(mariadb: MariaDBServer) -> None:
    """MariaDB tables ``hot(id, v)`` with rows 1 and 2 at 0, and an empty ``log(id)``."""
    await my_admin(
        mariadb,
        "DROP TABLE IF EXISTS hot, log; "
        "CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL); "
        "INSERT INTO hot VALUES (1, 0), (2, 0); CREATE TABLE log (id varchar(40) NOT NULL)",
    )


async def hot_value(mariadb: MariaDBServer, row: int) -> int:
    return int(await my_admin(mariadb, f"SELECT v FROM hot WHERE id = {row}"))


# -- losing a reply after the server applied the statement ---------------------------------------


async def cut_reply(
    proxy: FaultProxy,
    call: Coroutine[Any, Any, T],
    applied: Callable[[], Awaitable[bool]],
    *,
    latency: float = 0.4,
    then_refuse: bool = False,
) -> asyncio.Task[T]:
    """Run ``call`` and reset its connection once ``applied()`` sees the server applied it.

    Every chunk through the proxy is delayed by ``latency``, so the server's reply is still
    held in the proxy when the observer sees the effect: the reset loses exactly that reply.
    ``then_refuse`` makes the proxy refuse new connections from the moment of the reset.
    Returns the call's task (done or not).
    """
    proxy.set_latency(latency)
    task = asyncio.create_task(call)
    try:
        await until_async(applied, timeout=10)
        assert not task.done(), "test setup: the reply arrived before the connection was cut"
        if then_refuse:
            proxy.refuse()
        assert proxy.reset() >= 1
    except BaseException:
        await settle_task(task, timeout=1)
        raise
    finally:
        proxy.set_latency(0)
    return task


async def pg_statement_finished(
    observer: asyncpg.Connection[Any], sql: str, since: datetime.datetime
) -> bool:
    """An app backend ran ``sql`` (started after ``since``) and is idle again: the statement
    finished server side."""
    n = await observer.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND state = 'idle' "
        "AND query = $1 AND query_start > $2 AND pid <> pg_backend_pid()",
        sql,
        since,
    )
    return bool(n)


# -- one backend of three ----------------------------------------------------------------------


@dataclass
class Target:
    name: str  # "postgres", "mysql", "sqlite"
    dsn: str
    p: str  # the placeholder of the first parameter: "$1", "%s", "?"

    def sql(self, text: str) -> str:
        """``text`` with ``{p}`` replaced by this backend's first placeholder."""
        return text.replace("{p}", self.p)


def make_target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    """The target for ``request.param`` (use in a fixture with params postgres/mysql/sqlite)."""
    dialect = DIALECTS[request.param]
    if request.param == "postgres":
        pg: PostgresServer = request.getfixturevalue("pg")
        return Target(dialect.name, pg.dsn(), dialect.p(1))
    if request.param == "mysql":
        mariadb: MariaDBServer = request.getfixturevalue("mariadb")
        return Target(dialect.name, mariadb.dsn(), dialect.p(1))
    path = tmp_path / "audit.db"
    sqlite3.connect(path).close()
    return Target(dialect.name, f"sqlite:///{path}?timeout=1", dialect.p(1))
