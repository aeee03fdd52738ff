"""The demo's contrast: the same workload on the raw driver, without resilientdb.

The one place outside ``backends/`` that imports a driver, on purpose: it shows what an
application written directly against aiosqlite, asyncpg or aiomysql sees under the same
faults (the drivers are imported only when a client is set up). Each client is what a careful
but ordinary application does:

- aiosqlite: one connection per worker, reopened when it is found closed, the same busy
  timeout as the supervised run; a transfer is ``BEGIN IMMEDIATE`` ... ``COMMIT``.
- asyncpg: ``asyncpg.create_pool`` (which replaces broken connections itself).
- aiomysql: ``aiomysql.create_pool`` with autocommit.

Every error reaches the workload and is counted; nothing is retried (retrying safely is
exactly what resilientdb adds).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import warnings
from typing import Any

from ...config import DSN
from .workload import ACCOUNTS, INITIAL_BALANCE, OP_TIMEOUT, Schema, Written, read_written

__all__ = ["RawAiomysql", "RawAiosqlite", "RawAsyncpg"]


class RawAiosqlite:
    """One aiosqlite connection per worker, reopened after it is found closed."""

    def __init__(self, path: str, schema: Schema, busy_timeout: float) -> None:
        self.label = "raw aiosqlite"
        self.path = path
        self.schema = schema
        self.busy = busy_timeout
        self._conns: dict[int, Any] = {}
        self.opened: list[Any] = []  # every connection ever opened (the fault closes them)

    async def _connect(self) -> Any:
        import aiosqlite

        conn = await aiosqlite.connect(self.path, timeout=self.busy, isolation_level=None)
        self.opened.append(conn)
        return conn

    async def _conn(self, worker: int) -> Any:
        conn = self._conns.get(worker)
        if conn is None:
            conn = self._conns[worker] = await self._connect()
        return conn

    def _forget_if_closed(self, worker: int, exc: BaseException) -> None:
        # aiosqlite: ValueError once closed; sqlite3: ProgrammingError on a closed handle.
        if isinstance(exc, ValueError | sqlite3.ProgrammingError):
            self._conns.pop(worker, None)

    async def setup(self) -> None:
        conn = await self._connect()
        try:
            await conn.execute("PRAGMA journal_mode = wal")  # as the supervised run's adapter
            for statement in self.schema.ddl():
                await conn.execute(statement)
            rows = [(i, INITIAL_BALANCE) for i in range(ACCOUNTS)]
            await conn.executemany(self.schema.seed, rows)
        finally:
            await conn.close()

    async def read(self, worker: int, account: int) -> None:
        conn = await self._conn(worker)
        try:
            async with conn.execute(self.schema.read, (account,)) as cur:
                await cur.fetchone()
        except Exception as exc:
            self._forget_if_closed(worker, exc)
            raise

    async def insert(self, worker: int, op_id: str) -> None:
        conn = await self._conn(worker)
        try:
            await conn.execute(self.schema.insert, (op_id,))
        except Exception as exc:
            self._forget_if_closed(worker, exc)
            raise

    async def transfer(self, worker: int, op_id: str, src: int, dst: int, amount: int) -> None:
        conn = await self._conn(worker)
        try:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in self.schema.transfer_steps(op_id, src, dst, amount):
                    await conn.execute(sql, args)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            self._forget_if_closed(worker, exc)
            raise

    async def written(self) -> Written:
        conn = await self._connect()
        try:

            async def fetch(sql: str) -> Any:
                return await conn.execute_fetchall(sql)

            return await read_written(fetch, self.schema)
        finally:
            await conn.close()

    def state(self) -> str:
        return "-"

    async def aclose(self) -> None:
        for conn in self.opened:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)
        self._conns.clear()


class RawAsyncpg:
    """``asyncpg.create_pool``: the pool asyncpg applications use."""

    def __init__(self, dsn: str, schema: Schema) -> None:
        self.label = "raw asyncpg"
        self.dsn = dsn
        self.schema = schema
        self._pool: Any = None

    async def setup(self) -> None:
        import asyncpg

        self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=10, timeout=5)
        async with self._pool.acquire() as conn:
            for statement in self.schema.ddl():
                await conn.execute(statement)
            rows = [(i, INITIAL_BALANCE) for i in range(ACCOUNTS)]
            await conn.executemany(self.schema.seed, rows)

    async def read(self, worker: int, account: int) -> None:
        await self._pool.fetchval(self.schema.read, account, timeout=OP_TIMEOUT)

    async def insert(self, worker: int, op_id: str) -> None:
        await self._pool.execute(self.schema.insert, op_id, timeout=OP_TIMEOUT)

    async def transfer(self, worker: int, op_id: str, src: int, dst: int, amount: int) -> None:
        async with asyncio.timeout(OP_TIMEOUT):
            async with self._pool.acquire() as conn, conn.transaction():
                for sql, args in self.schema.transfer_steps(op_id, src, dst, amount):
                    await conn.execute(sql, *args)

    async def written(self) -> Written:
        async def fetch(sql: str) -> Any:
            return await self._pool.fetch(sql, timeout=OP_TIMEOUT)

        return await read_written(fetch, self.schema)

    async def drop(self) -> None:
        for statement in self.schema.drops():
            await self._pool.execute(statement, timeout=OP_TIMEOUT)

    def state(self) -> str:
        return "-"

    async def aclose(self) -> None:
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), timeout=5)
            except (TimeoutError, OSError):
                self._pool.terminate()


class RawAiomysql:
    """``aiomysql.create_pool`` with autocommit: the pool aiomysql applications use."""

    def __init__(self, dsn: DSN, host: str, port: int, schema: Schema) -> None:
        self.label = "raw aiomysql"
        self.dsn = dsn
        self.host = host
        self.port = port
        self.schema = schema
        self._pool: Any = None

    async def setup(self) -> None:
        import aiomysql

        d = self.dsn
        self._pool = await aiomysql.create_pool(
            host=self.host,
            port=self.port,
            user=d.user or "",
            password=d.password or "",
            db=d.database or "",
            autocommit=True,
            minsize=1,
            maxsize=10,
            connect_timeout=5,
        )
        with warnings.catch_warnings():
            # aiomysql turns the server's notes ("Unknown table" on DROP TABLE IF EXISTS)
            # into Python warnings; before the run, nothing else is running.
            warnings.simplefilter("ignore")
            for statement in self.schema.ddl():
                await self._execute(statement, ())
        await self._execute_many(self.schema.seed, [(i, INITIAL_BALANCE) for i in range(ACCOUNTS)])

    async def _execute(self, sql: str, args: tuple[Any, ...]) -> Any:
        async with asyncio.timeout(OP_TIMEOUT), self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            return await cur.fetchall()

    async def _execute_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        async with self._pool.acquire() as conn, conn.cursor() as cur:
            await cur.executemany(sql, rows)

    async def read(self, worker: int, account: int) -> None:
        await self._execute(self.schema.read, (account,))

    async def insert(self, worker: int, op_id: str) -> None:
        await self._execute(self.schema.insert, (op_id,))

    async def transfer(self, worker: int, op_id: str, src: int, dst: int, amount: int) -> None:
        async with asyncio.timeout(OP_TIMEOUT), self._pool.acquire() as conn:
            await conn.begin()
            try:
                async with conn.cursor() as cur:
                    for sql, args in self.schema.transfer_steps(op_id, src, dst, amount):
                        await cur.execute(sql, args)
                await conn.commit()
            except BaseException:
                with contextlib.suppress(Exception):
                    await conn.rollback()
                raise

    async def written(self) -> Written:
        return await read_written(lambda sql: self._execute(sql, ()), self.schema)

    async def drop(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for statement in self.schema.drops():
                await self._execute(statement, ())

    def state(self) -> str:
        return "-"

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
            with contextlib.suppress(TimeoutError, OSError):
                await asyncio.wait_for(self._pool.wait_closed(), timeout=5)
