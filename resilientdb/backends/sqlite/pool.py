"""The SQLite adapter's pool: connections to one database file (or the one ``:memory:``
connection), handed to leases (design: ``backend.py``).

A ``SQLiteConnection`` (one aiosqlite connection, one worker thread) belongs to one lease at a
time: an idle one, else a new one while there is room, else the caller queues (first come,
first served) and a connection given back goes straight to the first in the queue. A
connection goes back to idle only in a known clean state: nothing of its last lease running,
no transaction open. The mechanics shared with the MySQL pool (connect gate, generations,
waiters, drain, idle expiry) are the kit's (``_kit/pool.py``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections import deque
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import aiosqlite

from .._kit.pool import CLOSE_TIMEOUT, PoolCore, close_stale, trim_oldest
from ..base import PoolClosed, PoolStats
from .connection import BUSY_SLICE, SQLiteConnection, dispose, prepare
from .lease import SQLiteLease

if TYPE_CHECKING:
    from ..._dsn import DSN
    from ...config import Options
    from .settings import SQLiteSettings

__all__ = ["SQLitePool"]

logger = logging.getLogger("resilientdb")


class SQLitePool(PoolCore[SQLiteConnection | None]):
    """Connections to one database file (or the one ``:memory:`` connection) and their leases.

    A waiter is handed a connection, or ``None``: "there is room now: open one, or look again".
    """

    def __init__(self, dsn: DSN, options: Options, settings: SQLiteSettings) -> None:
        memory = dsn.path == ":memory:"
        super().__init__(
            options,
            min_size=1 if memory else options.min_size,
            max_size=1 if memory else options.max_size,
        )
        self.dsn = dsn
        self.memory = memory
        self._settings = settings
        self._kwargs = dict(settings.kwargs)
        self._path = None if memory else os.path.abspath(cast(str, dsn.path))
        self._may_create = settings.mode == "rwc"  # until the first open has succeeded
        self._reopened = False  # :memory: only: a first connection existed
        self._opened = False
        self._closed = False
        self._opening = 0  # connections being opened, counted against max_size
        self._idle: deque[SQLiteConnection] = deque()  # no lease on them; clean
        self._all: set[SQLiteConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def opened(self) -> bool:
        """True once ``open()`` has succeeded."""
        return self._opened

    def acquire(self, timeout: float | None) -> SQLiteLease:
        """A lease for the ``async with`` block; ``timeout`` bounds waiting and opening."""
        return SQLiteLease(self, timeout)

    def raw_connections(self) -> list[aiosqlite.Connection]:
        """Every open aiosqlite connection of the pool, idle or in use (for tests)."""
        return [conn.aconn for conn in self._all]

    # -- lifecycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        """Open ``min_size`` connections (at least one), one after the other: the first is
        the one that may create the file."""
        conns: list[SQLiteConnection] = []
        try:
            for _ in range(max(self.min_size, 1)):
                conns.append(await self._open())
        except BaseException:
            for conn in conns:
                self._retire(conn)
            raise
        now = time.monotonic()
        for conn in conns:
            conn.idle_since = now
        self._idle.extend(conns)
        self._opened = True

    async def probe(self) -> None:
        """Open a fresh connection outside the pool and read from the file."""
        if self.memory and any(not conn.is_closed() for conn in self._all):
            return  # the shared connection is the database; nothing else to reach
        conn = await self._open(hook=False, pooled=False)
        try:
            lease = SQLiteLease(self, None, conn)
            bound = self.options.connect_timeout
            await lease.fetchval("SELECT count(*) FROM sqlite_master", timeout=bound)
        finally:
            await asyncio.shield(self._spawn(dispose(conn.aconn)))

    async def refresh(self) -> None:
        """Retire the current generation (:memory:'s connection is the database: it stays)."""
        self.generation += 1
        keep = deque(conn for conn in self._idle if self.memory and not conn.is_closed())
        for conn in self._idle:
            if conn in keep:
                conn.generation = self.generation
            else:
                self._retire(conn)
        self._idle = keep
        for conn in self._all:
            if self.memory and not conn.is_closed():
                conn.generation = self.generation  # in use: the database itself stays
        await self._wait_tasks(CLOSE_TIMEOUT)

    async def close(self) -> None:
        """Turn waiters away, retire idle connections, wait a while for those in use."""
        self._closed = True
        self._waiting.hand_all(None)
        for conn in self._idle:
            self._retire(conn)
        self._idle.clear()
        # In use: given back (and retired) by their callers, or interrupted.
        await self.drain(lambda: bool(self._all))
        for conn in list(self._all):
            self._retire(conn)
        await self._wait_tasks(CLOSE_TIMEOUT)

    async def trim_idle(self) -> int:
        """Close idle connections beyond ``min_size`` (never :memory:'s); how many."""
        if self.memory:
            return 0
        return trim_oldest(self._idle, len(self._all), self.min_size, self._retire)

    def stats(self) -> PoolStats:
        """Open, idle and in-use connection counts, with the bounds."""
        idle = len(self._idle)
        return self.gauges(idle, len(self._all) - idle)

    # -- handing out --------------------------------------------------------------------------

    def checkout_now(self) -> SQLiteConnection | None:
        """The hot path: an idle connection; None: ``checkout`` decides (and may wait)."""
        idle = self._idle
        while idle and not self._closed:
            conn = idle.pop()
            if self._usable(conn):
                return conn
            self._retire(conn)
        return None

    async def checkout(self, timeout: float | None) -> SQLiteConnection:
        """A connection for one lease: idle, new while there is room, else one given back."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed or not self._opened:
                raise PoolClosed("the SQLite connection pool is closed")
            conn = self.checkout_now()
            if conn is not None:
                return conn
            if len(self._all) + self._opening < self.max_size:
                if deadline is None:
                    return await self._open_pooled()
                # The caller's bound covers opening too (on_connect included).
                async with asyncio.timeout_at(deadline):
                    return await self._open_pooled()
            conn = await self._wait(deadline)
            if conn is not None:
                if self._usable(conn) and not self._closed:
                    return conn
                self._retire(conn)

    async def _open_pooled(self) -> SQLiteConnection:
        self.may_connect.check()
        self._opening += 1
        try:
            conn = await self._open()
        except BaseException:
            self._waiting.hand(None)  # the room is free again
            raise
        finally:
            self._opening -= 1
        if self._closed:
            self._retire(conn)
            raise PoolClosed("the SQLite connection pool is closed")
        return conn

    async def _wait(self, deadline: float | None) -> SQLiteConnection | None:
        """Queue for a connection: one handed over, or None when there is room to open one."""
        timeout = None if deadline is None else deadline - asyncio.get_running_loop().time()
        # Timed out or cancelled: what was handed over meanwhile goes to the next one.
        return await self.wait_turn(timeout, self._pass_on)

    def _pass_on(self, conn: SQLiteConnection | None) -> None:
        if conn is None:
            self._waiting.hand(None)
        else:
            self._give(conn)

    # -- giving back ---------------------------------------------------------------------------

    def checkin_now(self, conn: SQLiteConnection, lease: SQLiteLease) -> bool:
        """The hot path of giving a connection back; False: ``checkin`` must do it."""
        if not lease.clean(conn):
            return False
        self._release(conn)
        return True

    async def checkin(self, conn: SQLiteConnection, lease: SQLiteLease) -> None:
        """Settle what the lease left running and roll back what it left open; a connection
        whose state is not certain afterwards is retired, never handed out again."""
        clean = False
        try:
            if lease.interrupted and not await lease.settle(conn):
                return  # an interrupted statement would not end: replace the connection
            if self._fit(conn):
                clean = await lease.reset(conn)
        finally:
            if not clean:
                conn.discarded = True
            self._release(conn)

    def _release(self, conn: SQLiteConnection) -> None:
        if self._fit(conn):
            self._give(conn)
        else:
            self._retire(conn)

    def _give(self, conn: SQLiteConnection) -> None:
        """A clean connection to the first caller waiting, else to the idle list."""
        if self._waiting.hand(conn):
            return
        conn.idle_since = now = time.monotonic()
        self._idle.append(conn)
        if not self.memory:
            close_stale(self._idle, now, self.options, len(self._all), self.min_size, self._retire)

    def _usable(self, conn: SQLiteConnection) -> bool:
        """May be handed out: not discarded, of the current generation (:memory:'s one
        connection is the database: any generation). A connection closed underneath is handed
        out all the same: its closed error is what tells the supervisor to reconnect."""
        return not conn.discarded and (self.memory or conn.generation == self.generation)

    def _fit(self, conn: SQLiteConnection) -> bool:
        """May go back to the pool."""
        return not (self._closed or conn.is_closed()) and self._usable(conn)

    # -- opening and closing -------------------------------------------------------------------

    async def _open(self, *, hook: bool = True, pooled: bool = True) -> SQLiteConnection:
        """A new connection, bounded by ``connect_timeout`` (on_connect hook included)."""
        if self.memory:
            target, uri = ":memory:", False
            if pooled and self._reopened:
                logger.warning("resilientdb: %s reopened as a new, empty database", self.dsn)
        else:
            settings = self._settings
            mode = "rwc" if self._may_create else "ro" if settings.mode == "ro" else "rw"
            cache = f"&cache={settings.cache}" if settings.cache else ""
            target, uri = f"file:{quote(cast(str, self._path))}?mode={mode}{cache}", True
        aconn = aiosqlite.connect(
            target, uri=uri, isolation_level=None, timeout=self._settings.busy, **self._kwargs
        )
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await aconn
                db = cast(sqlite3.Connection, cast(Any, aconn)._conn)
                ident = await cast(Any, aconn)._execute(self._setup, db)
                if hook and self.options.on_connect is not None:
                    await self.options.on_connect(aconn)
                busy = self._settings.busy
                conn = SQLiteConnection(
                    aconn, ident, self._path, busy, self.options.command_timeout, self.generation
                )
                # Busy slices; a transaction the hook left open would swallow the next lease.
                await cast(Any, aconn)._execute(prepare, conn, min(BUSY_SLICE, busy))
        except BaseException:
            await asyncio.shield(self._spawn(dispose(aconn)))
            raise
        self._may_create = False
        self._reopened = self._reopened or pooled
        if pooled:
            self._all.add(conn)
        return conn

    def _setup(self, db: sqlite3.Connection) -> tuple[int, int] | None:
        """Worker thread of a new connection: journal mode; the file's identity."""
        if self.memory:
            return None
        if self._settings.mode == "ro":
            db.execute("PRAGMA schema_version").close()  # reads the header: NOTADB now
        else:
            db.execute(f"PRAGMA journal_mode = {self._settings.journal}").close()
        st = os.stat(cast(str, self._path))
        return (st.st_dev, st.st_ino)

    def _retire(self, conn: SQLiteConnection) -> None:
        conn.discarded = True
        if conn in self._all:
            self._all.discard(conn)
            self._spawn(dispose(conn.aconn))
            if not self._all:
                self.note_drained()
            if self._waiting:
                self._waiting.hand(None)  # room for a new connection

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name="resilientdb-sqlite-close")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_tasks(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
