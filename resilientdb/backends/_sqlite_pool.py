"""The SQLite adapter's pool: the mechanics under ``SQLiteBackend`` (design: ``sqlite.py``).

A ``Link`` (one aiosqlite connection, one worker thread) belongs to one lease at a time: an idle
one, else a new one while there is room, else the caller queues (first come, first served) and
a connection given back goes straight to the first in the queue. A connection goes back to
idle only in a known clean state: nothing of its last lease running, no transaction open.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import quote

import aiosqlite

from .._wheel import TimeoutWheel
from ..config import DSN, Options
from ._sqlite_connection import BUSY_SLICE, CLOSE_TIMEOUT, Link, SQLiteConnection, prepare
from .base import ConnectPaused

__all__ = ["PoolClosed", "SQLitePool", "dispose"]

logger = logging.getLogger("resilientdb")


class PoolClosed(ConnectionError):
    """The adapter's pool is closed (or not open yet): nothing was sent."""


class SQLitePool:
    """Connections to one database file (or the one ``:memory:`` connection) and their leases."""

    def __init__(
        self,
        dsn: DSN,
        options: Options,
        *,
        mode: str,
        cache: str | None,
        journal: str,
        busy: float,
        kwargs: Mapping[str, Any],
    ) -> None:
        self.dsn = dsn
        self.options = options
        self.memory = dsn.path == ":memory:"
        self._mode = mode
        self._cache = cache
        self._journal = journal
        self._busy = busy
        self._kwargs = dict(kwargs)
        self._path = None if self.memory else os.path.abspath(cast(str, dsn.path))
        self._max = 1 if self.memory else options.max_size
        self._min = 1 if self.memory else options.min_size
        self._may_create = mode == "rwc"  # until the first open has succeeded
        self._reopened = False  # :memory: only: a first connection existed
        self._may_connect: Callable[[], bool] = lambda: True
        self._wheel = TimeoutWheel()
        self._opened = False
        self._closed = False
        self._generation = 0
        self._opening = 0  # connections being opened, counted against max_size
        self._idle: list[Link] = []  # no lease on them; clean
        self._all: set[Link] = set()
        # Callers waiting for a connection, in order: each gets a Link handed over, or None
        # ("there is room now: open one, or look again").
        self._waiters: collections.deque[asyncio.Future[Link | None]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Event | None = None  # set by close(): every connection retired

    # -- handing out --------------------------------------------------------------------------

    def _checkout_now(self) -> Link | None:
        """The hot path: an idle connection; None: ``_checkout`` decides (and may wait)."""
        idle = self._idle
        while idle and not self._closed:
            link = idle.pop()
            if self._usable(link):
                return link
            self._retire(link)
        return None

    async def _checkout(self, timeout: float | None) -> Link:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed or not self._opened:
                raise PoolClosed("the SQLite connection pool is closed")
            link = self._checkout_now()
            if link is not None:
                return link
            if len(self._all) + self._opening < self._max:
                if deadline is None:
                    return await self._open_pooled()
                # The caller's bound covers opening too (on_connect included).
                async with asyncio.timeout_at(deadline):
                    return await self._open_pooled()
            link = await self._wait(deadline)
            if link is not None:
                if self._usable(link) and not self._closed:
                    return link
                self._retire(link)

    async def _open_pooled(self) -> Link:
        if not self._may_connect():
            raise ConnectPaused("the supervisor is reconnecting; no new connections now")
        self._opening += 1
        try:
            link = await self._open()
        except BaseException:
            self._wake_one()  # the room is free again
            raise
        finally:
            self._opening -= 1
        if self._closed:
            self._retire(link)
            raise PoolClosed("the SQLite connection pool is closed")
        return link

    async def _wait(self, deadline: float | None) -> Link | None:
        """Queue for a connection: one handed over, or None when there is room to open one."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Link | None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            if deadline is None:
                return await waiter
            return await self._wheel.wait(waiter, max(deadline - loop.time(), 0.0))
        except BaseException:
            # Timed out or cancelled: what was handed over meanwhile goes to the next one.
            if waiter.done() and not waiter.cancelled():
                link = waiter.result()
                if link is None:
                    self._wake_one()
                else:
                    self._give(link)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    # -- giving back ---------------------------------------------------------------------------

    def _checkin_now(self, link: Link, lease: SQLiteConnection) -> bool:
        """The hot path of giving a connection back; False: ``_checkin`` must do it."""
        if not lease.clean(link):
            return False
        self._release(link)
        return True

    async def _checkin(self, link: Link, lease: SQLiteConnection) -> None:
        """Settle what the lease left running and roll back what it left open; a connection
        whose state is not certain afterwards is retired, never handed out again."""
        clean = False
        try:
            if lease._abandoned and not await lease.settle(link):
                return  # an interrupted statement would not end: replace the connection
            if self._fit(link):
                clean = await lease.reset(link)
        finally:
            if not clean:
                link.discarded = True
            self._release(link)

    def _release(self, link: Link) -> None:
        if self._fit(link):
            self._give(link)
        else:
            self._retire(link)

    def _give(self, link: Link) -> None:
        """A clean connection to the first caller waiting, else to the idle list."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(link)
                return
        link.idle_since = now = time.monotonic()
        self._idle.append(link)
        self._trim_stale(now)

    def _wake_one(self) -> None:
        """There is room for one more connection: tell the first caller waiting."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def _usable(self, link: Link) -> bool:
        """May be handed out: not discarded, of the current generation (:memory:'s one
        connection is the database: any generation). A connection closed underneath is handed
        out all the same: its closed error is what tells the supervisor to reconnect."""
        return not link.discarded and (self.memory or link.generation == self._generation)

    def _fit(self, link: Link) -> bool:
        """May go back to the pool."""
        return not (self._closed or link.is_closed()) and self._usable(link)

    def _trim_stale(self, now: float) -> None:
        max_idle, idle = self.options.max_idle, self._idle
        if max_idle is None or self.memory:
            return
        while idle and len(self._all) > self._min and now - idle[0].idle_since > max_idle:
            self._retire(idle.pop(0))

    # -- opening and closing -------------------------------------------------------------------

    async def _open(self, *, hook: bool = True, pooled: bool = True) -> Link:
        """A new connection, bounded by ``connect_timeout`` (on_connect hook included)."""
        if self.memory:
            target, uri = ":memory:", False
            if pooled and self._reopened:
                logger.warning("resilientdb: %s reopened as a new, empty database", self.dsn)
        else:
            mode = "rwc" if self._may_create else "ro" if self._mode == "ro" else "rw"
            cache = f"&cache={self._cache}" if self._cache else ""
            target, uri = f"file:{quote(cast(str, self._path))}?mode={mode}{cache}", True
        aconn = aiosqlite.connect(
            target, uri=uri, isolation_level=None, timeout=self._busy, **self._kwargs
        )
        try:
            async with asyncio.timeout(self.options.connect_timeout):
                await aconn
                db = cast(sqlite3.Connection, cast(Any, aconn)._conn)
                ident = await cast(Any, aconn)._execute(self._setup, db)
                if hook and self.options.on_connect is not None:
                    await self.options.on_connect(aconn)
                link = Link(
                    aconn, ident, self._path, self._busy, self.options.command_timeout,
                    self._generation,
                )  # fmt: skip
                # Busy slices; a transaction the hook left open would swallow the next lease.
                await cast(Any, aconn)._execute(prepare, link, min(BUSY_SLICE, self._busy))
        except BaseException:
            await asyncio.shield(self._spawn(dispose(aconn)))
            raise
        self._may_create = False
        self._reopened = self._reopened or pooled
        if pooled:
            self._all.add(link)
        return link

    def _setup(self, db: sqlite3.Connection) -> tuple[int, int] | None:
        """Worker thread of a new connection: journal mode; the file's identity."""
        if self.memory:
            return None
        if self._mode == "ro":
            db.execute("PRAGMA schema_version").close()  # reads the header: NOTADB now
        else:
            db.execute(f"PRAGMA journal_mode = {self._journal}").close()
        st = os.stat(cast(str, self._path))
        return (st.st_dev, st.st_ino)

    def _retire(self, link: Link) -> None:
        link.discarded = True
        if link in self._all:
            self._all.discard(link)
            self._spawn(dispose(link.aconn))
            if not self._all and self._drained is not None:
                self._drained.set()
            if self._waiters:
                self._wake_one()  # room for a new connection

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name="resilientdb-sqlite-close")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_tasks(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def _worker(aconn: aiosqlite.Connection) -> threading.Thread | None:
    thread = getattr(aconn, "_thread", None)
    return thread if isinstance(thread, threading.Thread) else None


async def dispose(aconn: aiosqlite.Connection) -> None:
    """Close ``aconn`` and join its thread, bounded; safe in any state, idempotent.

    aiosqlite's own ``close()`` is not safe against a second closer: whichever stops the thread
    second waits forever for a thread that has gone. So the connection is marked closed at
    once (a later ``aconn.close()`` returns immediately), the sqlite3 connection is closed on
    its thread behind whatever is queued, and the thread is stopped only if a ``close()``
    already in flight did not stop it meanwhile."""
    a = cast(Any, aconn)
    db, a._connection = a._connection, None
    if db is not None:
        with contextlib.suppress(Exception):
            db.interrupt()  # a statement still running would hold the close up
    thread = _worker(aconn)
    if thread is None or thread.ident is None:
        return  # never started
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_TIMEOUT
    if a._running and db is not None:
        closed = loop.create_future()
        a._tx.put_nowait((closed, db.close))
        await asyncio.wait({closed}, timeout=CLOSE_TIMEOUT)
        # A close() queued before ours has had its result first: its stop() runs now.
        await asyncio.sleep(0)
    if a._running:
        aconn.stop()  # finds no connection left: only ends the thread
    while thread.is_alive():
        if loop.time() >= deadline:
            logger.warning("resilientdb: an aiosqlite worker thread did not end in time")
            return
        await asyncio.sleep(0.001)
