"""The contenders, each behind one small interface: resilientdb, the raw drivers' pools and
the peer libraries, configured the way their documentation suggests.

Every client runs four operations: ``scalar()`` (``SELECT 1``), ``rows()`` (a 100-row read),
``big()`` (a 10,000-row read) and ``insert(ident, tag)`` (one row into ``bench_writes``, for
the outage benchmark).

``outage=True`` gives every library bounded timeouts, so that nothing hangs forever through
a partition (RESULTS.md lists them): connect 2 s, waiting for a free pool connection 5 s,
each statement 1 s;
resilientdb's callers wait up to 15 s at the gate (``gate_timeout``), longer than a restart.
Without it each library runs with its defaults (the overhead benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from harness import backends
from harness.backends import Dialect

CONNECT_TIMEOUT = 2.0
ACQUIRE_TIMEOUT = 5.0
COMMAND_TIMEOUT = 1.0
GATE_TIMEOUT = 15.0

TIMEOUTS = {
    "resilientdb": "connect_timeout=2, acquire_timeout=5, command_timeout=1, gate_timeout=15",
    "asyncpg pool": "create_pool(timeout=2 (connect), command_timeout=1); pool.fetchval "
    "has no acquire timeout",
    "SQLAlchemy": "pool_timeout=5, connect_args={timeout: 2, command_timeout: 1}",
    "psycopg_pool": "timeout=5 (getconn), connect_timeout=2, each statement in "
    "asyncio.timeout(1) (psycopg has no client-side statement timeout)",
}


# A 10,000-row read per dialect, the same shape as its hundred_rows (an int and a text).
BIG_ROWS = {
    "postgres": "SELECT g, 'row ' || g FROM generate_series(1, 10000) g",
    "mysql": "SELECT seq, CONCAT('row ', seq) FROM seq_1_to_10000",
    "sqlite": (
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 10000) "
        "SELECT x, 'row ' || x FROM g"
    ),
}


@dataclass(frozen=True)
class Sql:
    """One backend's statements, in its driver's paramstyle."""

    scalar: str
    rows: str
    insert: str
    big: str = ""  # the 10,000-row read

    @classmethod
    def of(cls, dialect: Dialect, big: str = "") -> Sql:
        """The benchmarks' statements on ``dialect``'s backend (``harness/backends.py``)."""
        insert = dialect.sql("INSERT INTO bench_writes (id, tag) VALUES ({1}, {2})")
        return cls("SELECT 1", dialect.hundred_rows, insert, big)


PG = Sql.of(backends.POSTGRES, BIG_ROWS["postgres"])
PG_FORMAT = Sql(PG.scalar, PG.rows, "INSERT INTO bench_writes (id, tag) VALUES (%s, %s)", PG.big)
PG_NAMED = Sql(PG.scalar, PG.rows, "INSERT INTO bench_writes (id, tag) VALUES (:id, :tag)", PG.big)
MYSQL = Sql.of(backends.MYSQL, BIG_ROWS["mysql"])
SQLITE = Sql.of(backends.SQLITE, BIG_ROWS["sqlite"])


# A write that is safe to run twice, for the caller that marks it idempotent=True: the id is
# the client's, and one worker writes it, so a replay finds the row of the first attempt.
PG_INSERT_ONCE = (
    "INSERT INTO bench_writes (id, tag) SELECT $1::text, $2::text "
    "WHERE NOT EXISTS (SELECT 1 FROM bench_writes WHERE id = $1::text)"
)


class ResilientDB:
    """resilientdb's Supervisor on any backend. ``idempotent_writes=True`` writes with
    ``PG_INSERT_ONCE`` marked ``idempotent=True`` (resilientdb may then replay them)."""

    def __init__(
        self,
        dsn: str,
        size: int,
        sql: Sql,
        *,
        outage: bool = False,
        idempotent_writes: bool = False,
        **opts: Any,
    ):
        from resilientdb import Supervisor

        if outage:
            opts = {
                "connect_timeout": CONNECT_TIMEOUT,
                "acquire_timeout": ACQUIRE_TIMEOUT,
                "command_timeout": COMMAND_TIMEOUT,
                "gate_timeout": GATE_TIMEOUT,
                **opts,
            }
        self.supervisor = Supervisor(dsn, min_size=size, max_size=size, **opts)
        self.db = self.supervisor.db
        self.sql = sql
        self.idempotent_writes = idempotent_writes

    async def open(self) -> None:
        await self.supervisor.start()
        await self.supervisor.wait_until_connected(timeout=30)

    async def close(self) -> None:
        await self.supervisor.aclose()

    async def scalar(self) -> Any:
        return await self.db.fetchval(self.sql.scalar)

    async def rows(self) -> list[Any]:
        return await self.db.fetch(self.sql.rows)

    async def big(self) -> list[Any]:
        return await self.db.fetch(self.sql.big)

    async def insert(self, ident: str, tag: str) -> None:
        if self.idempotent_writes:
            await self.db.execute(PG_INSERT_ONCE, ident, tag, idempotent=True)
        else:
            await self.db.execute(self.sql.insert, ident, tag)


class AsyncpgPool:
    """asyncpg's own pool: ``pool.fetchval`` / ``pool.fetch`` / ``pool.execute``."""

    def __init__(self, dsn: str, size: int, *, outage: bool = False) -> None:
        self.dsn, self.size, self.outage = dsn, size, outage
        self.pool: Any = None

    async def open(self) -> None:
        import asyncpg

        extra: dict[str, Any] = {}
        if self.outage:
            extra = {"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT}
        self.pool = await asyncpg.create_pool(
            self.dsn, min_size=self.size, max_size=self.size, **extra
        )

    async def close(self) -> None:
        if self.pool is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.pool.close()
            self.pool.terminate()

    async def scalar(self) -> Any:
        return await self.pool.fetchval(PG.scalar)

    async def rows(self) -> list[Any]:
        return list(await self.pool.fetch(PG.rows))

    async def big(self) -> list[Any]:
        return list(await self.pool.fetch(PG.big))

    async def insert(self, ident: str, tag: str) -> None:
        await self.pool.execute(PG.insert, ident, tag)


class SQLAlchemyEngine:
    """SQLAlchemy's async engine on asyncpg, used as its docs show: ``engine.connect()`` for
    reads (its default transaction: BEGIN, the statement, ROLLBACK on return to the pool),
    ``engine.begin()`` for writes."""

    def __init__(self, dsn: str, size: int, *, pre_ping: bool, outage: bool = False) -> None:
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        connect_args: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        if outage:
            connect_args = {"timeout": CONNECT_TIMEOUT, "command_timeout": COMMAND_TIMEOUT}
            extra = {"pool_timeout": ACQUIRE_TIMEOUT}
        url = "postgresql+asyncpg://" + dsn.split("://", 1)[1]
        self.engine = create_async_engine(
            url,
            pool_size=size,
            max_overflow=0,
            pool_pre_ping=pre_ping,
            connect_args=connect_args,
            **extra,
        )
        self._scalar = text(PG.scalar)
        self._rows = text(PG.rows)
        self._big = text(PG.big)
        self._insert = text(PG_NAMED.insert)

    async def open(self) -> None:
        async with self.engine.connect() as conn:
            await conn.scalar(self._scalar)

    async def close(self) -> None:
        await self.engine.dispose()

    async def scalar(self) -> Any:
        async with self.engine.connect() as conn:
            return await conn.scalar(self._scalar)

    async def rows(self) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(self._rows)).all())

    async def big(self) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(self._big)).all())

    async def insert(self, ident: str, tag: str) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(self._insert, {"id": ident, "tag": tag})


class PsycopgPool:
    """psycopg 3's ``AsyncConnectionPool`` with autocommit connections; ``check=True`` checks
    every connection on checkout (``AsyncConnectionPool.check_connection``)."""

    def __init__(self, dsn: str, size: int, *, check: bool, outage: bool = False) -> None:
        from psycopg_pool import AsyncConnectionPool

        kwargs: dict[str, Any] = {"autocommit": True}
        extra: dict[str, Any] = {}
        if outage:
            kwargs["connect_timeout"] = int(CONNECT_TIMEOUT)
            extra = {"timeout": ACQUIRE_TIMEOUT}
        self.command_timeout = COMMAND_TIMEOUT if outage else None
        self.pool = AsyncConnectionPool(
            dsn,
            min_size=size,
            max_size=size,
            open=False,
            kwargs=kwargs,
            check=AsyncConnectionPool.check_connection if check else None,
            **extra,
        )

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close(timeout=5)

    async def _run(self, sql: str, params: tuple[Any, ...] | None, fetch: str) -> Any:
        async with self.pool.connection() as conn:
            if self.command_timeout is None:
                cur = await conn.execute(sql, params)
                return await getattr(cur, fetch)() if fetch else None
            async with asyncio.timeout(self.command_timeout):
                cur = await conn.execute(sql, params)
                return await getattr(cur, fetch)() if fetch else None

    async def scalar(self) -> Any:
        row = await self._run(PG.scalar, None, "fetchone")
        return row[0]

    async def rows(self) -> list[Any]:
        rows: list[Any] = await self._run(PG.rows, None, "fetchall")
        return rows

    async def big(self) -> list[Any]:
        rows: list[Any] = await self._run(PG.big, None, "fetchall")
        return rows

    async def insert(self, ident: str, tag: str) -> None:
        await self._run(PG_FORMAT.insert, (ident, tag), "")


class AiomysqlPool:
    """aiomysql's own pool, autocommit, one cursor per call."""

    def __init__(self, dsn: str, size: int) -> None:
        self.dsn, self.size = dsn, size
        self.pool: Any = None

    async def open(self) -> None:
        import aiomysql

        parts = urlsplit(self.dsn)
        self.pool = await aiomysql.create_pool(
            host=parts.hostname,
            port=parts.port or 3306,
            user=parts.username,
            db=parts.path.lstrip("/"),
            minsize=self.size,
            maxsize=self.size,
            autocommit=True,
        )

    async def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            await self.pool.wait_closed()

    async def _run(self, sql: str, fetch: str) -> Any:
        async with self.pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql)
            return await getattr(cur, fetch)()

    async def scalar(self) -> Any:
        return (await self._run(MYSQL.scalar, "fetchone"))[0]

    async def rows(self) -> list[Any]:
        return list(await self._run(MYSQL.rows, "fetchall"))

    async def big(self) -> list[Any]:
        return list(await self._run(MYSQL.big, "fetchall"))

    async def insert(self, ident: str, tag: str) -> None:
        raise NotImplementedError("the outage benchmark runs on PostgreSQL only")


class AiosqlitePool:
    """Raw aiosqlite: ``size`` connections (one worker thread each) handed out from a queue,
    WAL and autocommit like resilientdb's adapter; ``size=1`` is a single shared connection."""

    def __init__(self, path: str, size: int) -> None:
        self.path, self.size = path, size
        self.conns: list[Any] = []
        self.free: asyncio.Queue[Any] = asyncio.Queue()

    async def open(self) -> None:
        import aiosqlite

        for i in range(self.size):
            conn = await aiosqlite.connect(self.path, isolation_level=None)
            if i == 0:  # WAL is a property of the file: set once, as the first opener
                await conn.execute("PRAGMA journal_mode = wal")
            self.conns.append(conn)
            self.free.put_nowait(conn)

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()

    async def _run(self, sql: str) -> Any:
        conn = await self.free.get()
        try:
            return await conn.execute_fetchall(sql)
        finally:
            self.free.put_nowait(conn)

    async def scalar(self) -> Any:
        rows = list(await self._run(SQLITE.scalar))
        return rows[0][0]

    async def rows(self) -> list[Any]:
        return list(await self._run(SQLITE.rows))

    async def big(self) -> list[Any]:
        return list(await self._run(SQLITE.big))

    async def insert(self, ident: str, tag: str) -> None:
        raise NotImplementedError("the outage benchmark runs on PostgreSQL only")
