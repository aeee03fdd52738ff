"""The SQLite adapter's pool: the mechanics under ``SQLiteBackend`` (design: ``sqlite.py``).

A ``Link`` (one aiosqlite connection, one worker thread) is handed to leases: an idle one, else
the last one handed out while it takes more statements, else a new one, else the least busy,
else the caller waits (every connection held whole by a transaction or a raw user).
"""

from __future__ import annotations

import asyncio
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
from ._sqlite_connection import BUSY_SLICE, CLOSE_TIMEOUT, Link, SQLiteConnection, set_busy
from .base import ConnectPaused

__all__ = ["PoolClosed", "SQLitePool", "dispose"]

logger = logging.getLogger("resilientdb")

# A busy connection takes more statements (its worker runs them back to back, cheaper than
# one more thread contending for the GIL) up to this many in flight, unless the one running
# has run for STALLED seconds: then a new connection opens, so readers pass a slow writer.
PIPELINE = 64
STALLED = 0.05


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
        self._idle: list[Link] = []  # no lease on them
        self._all: set[Link] = set()
        self._waiters: list[asyncio.Future[None]] = []  # every connection held whole
        self._hot: Link | None = None  # the last connection handed out
        self._tasks: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Event | None = None  # set by close(): every connection retired

    def _checkout_now(self) -> Link | None:
        """The hot path: an idle connection, else the last one handed out if it can take one
        more statement; None: ``_checkout`` decides (and may wait)."""
        idle = self._idle
        if idle and not self._closed:
            link = idle.pop()
            if link.generation == self._generation:
                link.users = 1
                self._hot = link
                return link
            self._retire(link)
            return None
        hot = self._hot
        if (
            hot is not None
            and hot.users < PIPELINE
            and not (hot.exclusive or hot.discarded or self._closed)
            and hot.generation == self._generation
            and not _stalled(hot)
        ):
            hot.users += 1
            return hot
        return None

    async def _checkout(self, timeout: float | None) -> Link:
        link = await self._checkout_busy(timeout)
        self._hot = link
        return link

    async def _checkout_busy(self, timeout: float | None) -> Link:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if self._closed or not self._opened:
                raise PoolClosed("the SQLite connection pool is closed")
            shared = min(
                (k for k in self._all if not (k.exclusive or k.discarded) and self._fit(k)),
                key=_users,
                default=None,
            )
            room = len(self._all) + self._opening < self._max
            if room and (shared is None or shared.users >= PIPELINE or _stalled(shared)):
                if not self._may_connect():
                    raise ConnectPaused("the supervisor is reconnecting; no new connections now")
                self._opening += 1
                try:
                    link = await self._open()
                finally:
                    self._opening -= 1
                link.users = 1
                return link
            if shared is not None:
                shared.users += 1
                return shared
            # Every connection is held whole (transactions, raw use): wait for one.
            waiter = loop.create_future()
            self._waiters.append(waiter)
            try:
                if deadline is None:
                    await waiter
                else:
                    await self._wheel.wait(waiter, max(deadline - loop.time(), 0.0))
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _checkin_now(self, link: Link, lease: SQLiteConnection) -> bool:
        """The hot path of giving a connection back; False: ``_checkin`` must do it."""
        if lease._abandoned or lease._whole:
            return False
        self._release(link)
        return True

    async def _checkin(self, link: Link, lease: SQLiteConnection) -> None:
        fit = False
        try:
            if lease._abandoned and not await lease.settle(link):
                link.discarded = True  # an interrupted statement would not end: replace it
            fit = self._fit(link)
            if fit and lease._whole:
                try:
                    await lease.reset(link)
                except Exception:
                    fit = False  # rolled back or not, it is not fit for the next caller
        finally:
            if lease._whole:
                link.exclusive = False
                self._wake()
            if not fit:
                link.discarded = True
            self._release(link)

    def _release(self, link: Link) -> None:
        link.users -= 1
        if link.users == 0:
            if self._fit(link):
                link.idle_since = now = time.monotonic()
                self._idle.append(link)
                self._trim_stale(now)
            else:
                self._retire(link)
            if self._waiters:
                self._wake()

    def _fit(self, link: Link) -> bool:
        if self._closed or link.is_closed():
            return False
        # :memory:'s one connection is the database: it stays while it is open.
        return self.memory or (not link.discarded and link.generation == self._generation)

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    def _trim_stale(self, now: float) -> None:
        max_idle, idle = self.options.max_idle, self._idle
        if max_idle is None or self.memory:
            return
        while idle and len(self._all) > self._min and now - idle[0].idle_since > max_idle:
            self._retire(idle.pop(0))

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
                await cast(Any, aconn)._execute(set_busy, db, min(BUSY_SLICE, self._busy))
        except BaseException:
            await asyncio.shield(self._spawn(dispose(aconn)))
            raise
        self._may_create = False
        self._reopened = self._reopened or pooled
        link = Link(
            aconn, ident, self._path, self._busy, self.options.command_timeout, self._generation
        )
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
                self._wake()  # room for a new connection

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(coro, name="resilientdb-sqlite-close")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _wait_tasks(self, timeout: float) -> None:
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


def _users(link: Link) -> int:
    return link.users


def _stalled(link: Link) -> bool:
    since = link.since
    return bool(since) and time.monotonic() - since >= STALLED


def _worker(aconn: aiosqlite.Connection) -> threading.Thread | None:
    thread = getattr(aconn, "_thread", None)
    return thread if isinstance(thread, threading.Thread) else None


async def dispose(aconn: aiosqlite.Connection) -> None:
    """Close ``aconn`` and join its thread, bounded; safe in any state, idempotent."""
    a = cast(Any, aconn)
    db = a._connection
    if db is not None:
        with contextlib.suppress(Exception):
            db.interrupt()  # a statement still running would hold the close up
    if a._running:
        stopped = aconn.stop()  # closes the sqlite3 connection on its thread, then ends it
        if stopped is not None:
            await asyncio.wait({stopped}, timeout=CLOSE_TIMEOUT)
    thread = _worker(aconn)
    if thread is None or thread.ident is None:
        return  # never started
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_TIMEOUT
    while thread.is_alive():
        if loop.time() >= deadline:
            logger.warning("resilientdb: an aiosqlite worker thread did not end in time")
            return
        await asyncio.sleep(0.001)
