"""The SQLite adapter's lease: one caller's hold on one pooled connection, with asyncpg's API.

The connection (``connection.py``) runs each call on its worker thread; the pool (``pool.py``)
hands connections to leases and takes them back; the design is in ``backend.py``'s docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import aiosqlite

from ..._row import Row
from .._kit.pool import CLOSE_TIMEOUT
from .connection import (
    BUSY_SLICE,
    EXECUTE,
    FETCH,
    FETCHROW,
    FETCHVAL,
    MANY,
    SETTLE_TIMEOUT,
    Call,
    SQLiteConnection,
    prepare,
    set_busy,
)

if TYPE_CHECKING:
    from .pool import SQLitePool

__all__ = ["SQLiteLease"]


class SQLiteLease:
    """One lease on a pooled connection, with asyncpg's API (the uniform ``Connection``).

    ``backend.acquire()`` returns it as an async context manager; entering takes a connection
    from the pool for this lease alone, leaving gives it back (rolled back first if a
    transaction is still open). Each call is one round trip to the worker thread.
    ``timeout=None`` means the backend's ``command_timeout``; past it the statement is
    interrupted and ``TimeoutError`` raised. Parameters use SQLite's paramstyles: positional
    arguments for ``?``, or one mapping for ``:name``. ``execute`` returns sqlite3's
    ``rowcount`` (rows changed; -1 for statements that change none, such as SELECT or CREATE);
    ``executemany`` runs the batch in one ``BEGIN IMMEDIATE`` transaction (all rows or none,
    like asyncpg's) unless a transaction is open, and returns None. Outside a transaction each
    statement commits on its own (autocommit).
    """

    __slots__ = ("_abandoned", "_conn", "_lent", "_pool", "_timeout")

    def __init__(
        self, pool: SQLitePool, timeout: float | None, conn: SQLiteConnection | None = None
    ) -> None:
        """A lease to enter (``async with``), or one already holding ``conn`` (the probe's,
        on a connection outside the pool)."""
        self._pool = pool
        self._timeout = timeout  # for acquiring
        self._conn = conn
        self._abandoned: list[Call] | None = None  # cancelled calls not yet ended
        self._lent = False  # handed out raw: runs with SQLite's own busy timeout

    async def __aenter__(self) -> SQLiteLease:
        pool = self._pool
        self._conn = pool.checkout_now() or await pool.checkout(self._timeout)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not self._pool.checkin_now(conn, self):
            await self._pool.checkin(conn, self)

    @property
    def held(self) -> SQLiteConnection | None:
        """The connection this lease holds, if any."""
        return self._conn

    @property
    def connection(self) -> SQLiteConnection:
        """The connection this lease holds now."""
        conn = self._conn
        if conn is None:
            raise ValueError("no active connection")  # as aiosqlite's: nothing was sent
        return conn

    # Plain functions returning the call's coroutine: one coroutine frame less per call.
    def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Coroutine[Any, Any, list[Row]]:
        """All rows."""
        return self._call(FETCH, query, args, 0, timeout)

    def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Coroutine[Any, Any, Row | None]:
        """The first row, or None."""
        return self._call(FETCHROW, query, args, 0, timeout)

    def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Coroutine[Any, Any, Any]:
        """One value of the first row, or None without rows."""
        return self._call(FETCHVAL, query, args, column, timeout)

    def execute(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Coroutine[Any, Any, int]:
        """Run one statement to completion; the number of rows it changed (or -1)."""
        return self._call(EXECUTE, query, args, 0, timeout)

    def executemany(
        self, command: str, args: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> Coroutine[Any, Any, None]:
        """Run ``command`` for each argument tuple, atomically."""
        return self._call(MANY, command, (args,), 0, timeout)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction was open after the last statement."""
        conn = self._conn
        return conn is not None and conn.in_tx

    def is_closed(self) -> bool:
        """Whether the connection is closed (or this lease has ended)."""
        conn = self._conn
        return conn is None or conn.is_closed()

    # -- the engine -------------------------------------------------------------------------

    async def _call(
        self, op: int, sql: str, args: tuple[Any, ...], column: int, timeout: float | None
    ) -> Any:
        conn = self._conn
        if conn is None:
            raise ValueError("no active connection")  # as aiosqlite's: nothing was sent
        if timeout is None:
            timeout = conn.timeout
        call = Call()
        # One mapping binds :name parameters; executemany's rows come as args[0].
        params = (
            args[0] if op == MANY or (len(args) == 1 and isinstance(args[0], Mapping)) else args
        )
        try:
            if timeout is None:
                return await conn.submit(conn.work, call, op, sql, params, column)
            async with asyncio.timeout(timeout):
                return await conn.submit(conn.work, call, op, sql, params, column)
        except (asyncio.CancelledError, TimeoutError):
            # Cancelled or timed out: the statement must not go on without its caller. One
            # still queued never starts; a running one is interrupted, and the lease does not
            # end before it has (settle).
            if conn.interrupt(call):
                if self._abandoned is None:
                    self._abandoned = []
                self._abandoned.append(call)
            raise

    # -- for the pool -------------------------------------------------------------------------

    @property
    def interrupted(self) -> bool:
        """Whether a call of this lease was cancelled while its statement ran."""
        return bool(self._abandoned)

    def clean(self, conn: SQLiteConnection) -> bool:
        """Whether ``conn`` can go back to the pool as it is: nothing of this lease still
        running, no transaction open, never lent raw."""
        return not (self._abandoned or self._lent or conn.in_tx)

    async def settle(self, conn: SQLiteConnection) -> bool:
        """Wait until this lease's cancelled statements have ended; False if one would not."""
        pending = self._abandoned
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        while pending:
            pending[:] = [c for c in pending if not c.done]
            if not pending:
                break
            if loop.time() >= deadline:
                return False
            for call in pending:
                # Again and again: an interrupt that lands before the statement starts is lost.
                conn.interrupt(call)
            await asyncio.sleep(0.005)
        return True

    def lend(self) -> aiosqlite.Connection:
        """The raw connection, with SQLite's own busy timeout for its user."""
        conn = self.connection
        if not self._lent:
            self._lent = True
            # Queued (the worker is FIFO): it runs before the borrower's first statement.
            with contextlib.suppress(Exception):
                task = partial(set_busy, conn.db, conn.busy)
                cast(Any, conn.aconn)._tx.put_nowait((None, task))
        return conn.aconn

    async def reset(self, conn: SQLiteConnection) -> bool:
        """After this lease: put ``conn`` back in the pool's state (busy slices, no open
        transaction); whether that is certain. Never raises for a database error."""
        try:
            if self._lent:
                # Behind whatever the borrower left queued (FIFO); it may have done anything.
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await conn.submit(prepare, conn, min(BUSY_SLICE, conn.busy))
            elif conn.in_tx:
                self._conn = conn
                try:
                    await self._call(EXECUTE, "ROLLBACK", (), 0, CLOSE_TIMEOUT)
                finally:
                    self._conn = None
        except Exception:
            return False
        return not (conn.in_tx or self._abandoned or conn.is_closed())
