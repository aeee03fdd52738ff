"""The MySQL adapter's pool: idle connections, slots, waiters, checkout and checkin, and the
keepalive / trim work the monitor and the memory watchdog ask of it.

Split from ``mysql.py`` (the error table and the backend facade, which owns one ``Pool``) to
keep modules small; why the adapter has a pool of its own instead of ``aiomysql.create_pool``
is in ``mysql.py``'s docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Any

from pymysql import err as myerr

from .._wheel import TimeoutWheel
from ..config import Options
from ._mysql_connection import MySQLConnection, alive, connect, quit_raw
from .base import ConnectPaused, PoolStats

__all__ = ["CLOSE_TIMEOUT", "Pool"]

CLOSE_TIMEOUT = 5.0


class _Acquire:
    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: MySQLConnection | None = None

    async def __aenter__(self) -> MySQLConnection:
        self._conn = await self._pool._acquire(self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._release(conn)


class Pool:
    """At most ``max_size`` open connections, served LIFO, waiters in order (see ``mysql.py``).

    ``kwargs`` are aiomysql's connect arguments, already validated by the backend.
    """

    def __init__(self, kwargs: dict[str, Any], options: Options) -> None:
        self.options = options
        self._kwargs = kwargs
        self._may_connect: Callable[[], bool] = lambda: True
        self._opened = False
        self._generation = 0
        self._idle: deque[MySQLConnection] = deque()  # oldest left, most recently used right
        self._wheel = TimeoutWheel()
        self._in_use: set[MySQLConnection] = set()
        self._slots = 0  # callers holding a slot: connecting, or holding a connection
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._drained: asyncio.Event | None = None

    @property
    def opened(self) -> bool:
        """True between a successful ``open()`` and ``close()``."""
        return self._opened

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        """New connections open only while ``may_connect()`` is true (else ``ConnectPaused``)."""
        self._may_connect = may_connect

    async def connect(self, *, hook: bool = True) -> MySQLConnection:
        """A new connection of the current generation (not counted in the pool)."""
        return await connect(self._kwargs, self.options, self._generation, hook=hook)

    async def open(self) -> None:
        """Open ``min_size`` connections, all or none, then hand connections out."""
        n = self.options.min_size
        if n:
            opened: list[MySQLConnection] = []

            async def one() -> None:
                opened.append(await self.connect())

            try:
                results = await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)
            except BaseException:  # cancelled: gather has let every connect finish or fail
                for conn in opened:
                    quit_raw(conn.raw)
                raise
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                for conn in opened:
                    quit_raw(conn.raw)
                raise errors[0]
            now = time.monotonic()
            for conn in opened:
                conn.idle_since = now
            self._idle.extend(opened)
        self._opened = True

    def refresh(self) -> None:
        """Retire the current generation: idle connections now, those in use when released."""
        self._generation += 1
        idle, self._idle = self._idle, deque()
        for conn in idle:
            quit_raw(conn.raw)

    async def close(self) -> None:
        """Close idle connections, turn waiters away, wait a while for those in use."""
        if not self._opened:
            return
        self._opened = False
        idle, self._idle = self._idle, deque()
        for conn in idle:
            quit_raw(conn.raw)
        while self._waiters:  # hand them a slot: they find the pool closed and leave
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._slots += 1
                waiter.set_result(None)
        if self._in_use:
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._drained.wait()
            for conn in list(self._in_use):
                conn.raw.close()
            self._drained = None

    def acquire(self, timeout: float | None) -> _Acquire:
        """A connection for the ``async with`` block; ``timeout`` bounds wait and connect."""
        return _Acquire(self, timeout)

    async def _acquire(self, timeout: float | None) -> MySQLConnection:
        if self._opened and self._slots < self.options.max_size and not self._waiters:
            conn = self._pop_idle()
            if conn is not None:  # the hot path: no await, no timer
                self._slots += 1
                self._in_use.add(conn)
                return conn
        slot = [False]
        try:
            waiting = self._wait_for_connection(slot)
            # Most calls wait here when the pool is saturated: the shared wheel bounds them
            # without one event-loop timer each (see resilientdb/_wheel.py).
            conn = await (waiting if timeout is None else self._wheel.wait(waiting, timeout))
        except BaseException:
            if slot[0]:
                self._free_slot()
            raise
        self._in_use.add(conn)
        return conn

    async def _wait_for_connection(self, slot: list[bool]) -> MySQLConnection:
        await self._take_slot()
        slot[0] = True
        if not self._opened:
            raise myerr.InterfaceError(0, "pool is closed")
        conn = self._pop_idle()
        if conn is None:
            if not self._may_connect():
                raise ConnectPaused("the supervisor is reconnecting; no new connection")
            conn = await self.connect()
        return conn

    def _pop_idle(self) -> MySQLConnection | None:
        idle = self._idle
        if not idle:
            return None
        now, max_idle = time.monotonic(), self.options.max_idle
        if max_idle is not None:
            while (
                idle
                and idle[0].idle_since < now - max_idle
                and self._size() > self.options.min_size
            ):
                quit_raw(idle.popleft().raw)
        while idle:
            conn = idle.pop()
            if self._reusable(conn, now):
                return conn
            quit_raw(conn.raw)  # the server hung up while it sat idle, or it is retired
        return None

    def _reusable(self, conn: MySQLConnection, now: float) -> bool:
        return conn.generation == self._generation and now < conn.expires and alive(conn.raw)

    async def _take_slot(self) -> None:
        if self._slots < self.options.max_size and not self._waiters:
            self._slots += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # _free_slot hands its slot over: self._slots is unchanged
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._free_slot()  # granted just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._slots -= 1

    def _release(self, conn: MySQLConnection) -> None:
        self._in_use.discard(conn)
        raw, now = conn.raw, time.monotonic()
        if (
            self._opened
            and self._reusable(conn, now)
            and raw.get_autocommit()
            and not raw.get_transaction_status()
        ):
            conn.idle_since = now
            self._idle.append(conn)
        else:
            # Closed, retired, or left in a transaction / without autocommit: the server
            # rolls back what is open when the connection goes.
            quit_raw(raw)
        self._free_slot()
        if self._drained is not None and not self._in_use:
            self._drained.set()

    def _size(self) -> int:
        return len(self._idle) + len(self._in_use)

    async def maintain(self) -> int:
        """Keepalive and lifetime, on idle connections only; returns how many were dead.

        The idle connections are taken out of the pool, each with a slot (so they are ours
        alone and ``max_size`` holds), retired when past their lifetime, else pinged with
        ``ping(reconnect=False)``; then the pool is topped up to ``min_size``.
        """
        if not self._opened or not self._may_connect():
            return 0
        grabbed: list[MySQLConnection] = []
        while self._idle and self._slots < self.options.max_size and not self._waiters:
            conn = self._idle.popleft()
            self._slots += 1
            self._in_use.add(conn)
            grabbed.append(conn)
        try:
            now = time.monotonic()
            alive = await asyncio.gather(*(self._ping(conn, now) for conn in grabbed))
        finally:
            for conn in grabbed:
                self._release(conn)
        dead = alive.count(False)
        try:
            while not dead and self._opened and self._size() < self.options.min_size:
                if self._slots >= self.options.max_size or not self._may_connect():
                    break
                self._slots += 1
                try:
                    conn = await self.connect()
                except BaseException:
                    self._free_slot()
                    raise
                self._in_use.add(conn)
                self._release(conn)
        except Exception:
            dead += 1  # the server did not take a new connection: let the monitor check
        return dead

    async def _ping(self, conn: MySQLConnection, now: float) -> bool:
        raw = conn.raw
        if now >= conn.expires:
            quit_raw(raw)  # retired, not dead
            return True
        try:
            if not alive(raw):
                raise ConnectionError("the server closed the connection")
            async with asyncio.timeout(min(self.options.connect_timeout, 5.0)):
                await raw.ping(reconnect=False)  # never reconnect: that loses session state
        except Exception:
            raw.close()
            return False
        return True

    async def trim_idle(self) -> int:
        """Close idle connections beyond ``min_size``, oldest first (memory watchdog)."""
        closed = 0
        while self._idle and self._size() > self.options.min_size:
            quit_raw(self._idle.popleft().raw)
            closed += 1
        return closed

    def stats(self) -> PoolStats:
        """Open, idle and in-use connection counts, with the configured bounds."""
        opts = self.options
        idle, in_use = len(self._idle), len(self._in_use)
        return PoolStats(idle + in_use, idle, in_use, opts.min_size, opts.max_size)
