"""The adapter over the model server (``server.py``): a small pool, the error kinds, the
facts the replay rules read. Registered as the ``model://<server name>`` scheme."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from resilientdb.backends.base import ConnectPaused, ErrorKind, PoolStats, with_closed_flag
from resilientdb.backends.registry import register
from tests.model.server import (
    FACTS,
    SERVERS,
    ModelConnection,
    NotSent,
    QueryError,
    Race,
    WriteRefused,
)


class ModelBackend:
    """The adapter over one :class:`Server` (named by the DSN's host)."""

    def __init__(self, dsn: Any, options: Any) -> None:
        self.dsn = dsn
        self.options = options
        self.server = SERVERS[dsn.host]
        self.facts = FACTS[self.server.flavor]
        if self.server.flavor == "postgresql":
            self.harmless_functions = self._harmless_functions
            self.transaction_mark = self._transaction_mark
            self.transaction_status = self._transaction_status
        self._idle: list[ModelConnection] = []
        self._opened = False
        self._generation = 0
        self.in_use = 0
        self._may_connect: Callable[[], bool] = lambda: True

    @property
    def opened(self) -> bool:
        return self._opened

    async def _connect(self) -> ModelConnection:
        await asyncio.sleep(0)
        if not self.server.up:
            raise ConnectionRefusedError("connection refused")
        return ModelConnection(self.server, self.options.command_timeout, self._generation)

    async def open(self) -> None:
        self._idle.append(await self._connect())
        self._opened = True

    async def probe(self) -> None:
        conn = await self._connect()
        await conn.fetchval("SELECT 1")
        conn.die()

    async def refresh(self) -> None:
        self._generation += 1
        for conn in self._idle:
            conn.die()
        self._idle.clear()

    async def close(self) -> None:
        await self.refresh()
        self._opened = False

    def begin_statements(self, isolation: str | None, readonly: bool) -> tuple[str, ...]:
        if self.server.flavor == "mysql":
            return ("START TRANSACTION READ ONLY",) if readonly else ("START TRANSACTION",)
        if self.server.flavor == "sqlite":
            return ("BEGIN DEFERRED",) if readonly else ("BEGIN IMMEDIATE",)
        return ("BEGIN READ ONLY",) if readonly else ("BEGIN",)

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        self._may_connect = may_connect

    def acquire(self, timeout: float | None) -> AbstractAsyncContextManager[Any]:
        return self._lease(timeout)

    @asynccontextmanager
    async def _lease(self, timeout: float | None) -> AsyncIterator[ModelConnection]:
        conn = None
        while self._idle and conn is None:
            candidate = self._idle.pop()
            if not candidate.closed and candidate.generation == self._generation:
                conn = candidate
        if conn is None:
            if not self._may_connect():
                raise ConnectPaused("the supervisor is reconnecting")
            async with asyncio.timeout(timeout):
                conn = await self._connect()
        self.in_use += 1
        try:
            yield conn
        finally:
            self.in_use -= 1
            if conn.tx is not None:
                conn.die()  # released inside a transaction: closed, the server rolls back
            if not conn.closed and conn.generation == self._generation:
                self._idle.append(conn)

    def raw(self, conn: Any) -> Any:
        return conn

    def discard(self, conn: Any) -> None:
        conn.die()

    def classify(self, exc: BaseException, conn: Any = None) -> ErrorKind:
        if isinstance(exc, Race):
            return ErrorKind.RETRYABLE
        if isinstance(exc, QueryError | UnicodeError):
            return with_closed_flag(ErrorKind.QUERY, conn, exc)
        if isinstance(exc, OSError | TimeoutError):
            return ErrorKind.CONNECTION
        return with_closed_flag(ErrorKind.QUERY, conn, exc)

    def classify_connect(self, exc: BaseException) -> ErrorKind:
        kind = self.classify(exc)
        return ErrorKind.CONNECTION if kind is not ErrorKind.QUERY else ErrorKind.PERMANENT

    def unsent(self, exc: BaseException) -> bool:
        return isinstance(exc, NotSent | ConnectPaused)

    def stats(self) -> PoolStats:
        idle = len(self._idle)
        return PoolStats(idle + self.in_use, idle, self.in_use, 1, self.options.max_size)

    def in_transaction(self, conn: Any) -> bool:
        return bool(conn.in_tx_status)

    def commit_applied(self, result: Any) -> bool:
        return result != "ROLLBACK"

    def write_refused(self, exc: BaseException) -> bool:
        return isinstance(exc, WriteRefused)

    async def _harmless_functions(
        self, conn: Any, names: frozenset[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        return frozenset(names & {"stable_fn"}), frozenset()

    async def _transaction_mark(self, conn: Any) -> tuple[str | None, str]:
        xid, run = await conn.fetchrow("SELECT xact_mark()")
        return xid, run

    async def _transaction_status(self, conn: Any, xid: str) -> tuple[str | None, str]:
        status, run = await conn.fetchrow("SELECT xact_status($1)", xid)
        return status, run


register("model", ModelBackend)
