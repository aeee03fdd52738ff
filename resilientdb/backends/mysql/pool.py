"""The MySQL adapter's pool: idle connections, slots, waiters, checkout and checkin, and the
keepalive / trim work the monitor and the memory watchdog ask of it.

Why the adapter has a pool of its own instead of ``aiomysql.create_pool`` is in
``backend.py``'s docstring; the mechanics shared with the SQLite pool (connect gate,
generations, waiters, drain, idle expiry) are the kit's (``_kit/pool.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ..._credentials import current_password
from .._kit.pool import PoolCore, close_stale, keepalive, ping_bound, trim_oldest
from .._kit.roles import fits, role_name
from ..base import PoolClosed, PoolStats
from .connection import MySQLConnection, alive, quit_raw
from .hosts import connect_first, read_only

if TYPE_CHECKING:
    from ...config import Options

__all__ = ["MySQLPool"]


def _quit(conn: MySQLConnection) -> None:
    quit_raw(conn.raw)


class _Acquire:
    __slots__ = ("_conn", "_pool", "_timeout")

    def __init__(self, pool: MySQLPool, timeout: float | None) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: MySQLConnection | None = None

    async def __aenter__(self) -> MySQLConnection:
        self._conn = await self._pool.checkout(self._timeout)
        return self._conn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.checkin(conn)


class MySQLPool(PoolCore[None]):
    """At most ``max_size`` open connections, served LIFO, waiters in order (``backend.py``).

    A waiter is handed a slot (``None``): the right to hold or open one connection.
    ``kwargs`` are aiomysql's connect arguments, already validated by the registry's spec.
    """

    def __init__(
        self,
        kwargs: dict[str, Any],
        options: Options,
        hosts: tuple[tuple[str, int | None], ...] = (),
        attrs: str = "any",
    ) -> None:
        super().__init__(options, min_size=options.min_size, max_size=options.max_size)
        self._kwargs = kwargs
        self._hosts = hosts  # a host list of the DSN, tried in order (hosts.py)
        self._attrs = attrs
        self.role: str | None = None  # the role of the node last seen (health reports it)
        self._opened = False
        self._idle: deque[MySQLConnection] = deque()  # oldest left, most recently used right
        self._in_use: set[MySQLConnection] = set()
        self._slots = 0  # callers holding a slot: connecting, or holding a connection

    @property
    def opened(self) -> bool:
        """True between a successful ``open()`` and ``close()``."""
        return self._opened

    async def connect(self, *, hook: bool = True) -> MySQLConnection:
        """A new connection of the current generation (not counted in the pool)."""
        kwargs, source = self._kwargs, self.options.password
        if source is not None:
            # Asked on every connect: a rotated password is picked up without a restart.
            kwargs = {**kwargs, "password": await current_password(source)}
        return await connect_first(
            kwargs, self.options, self.generation, self._hosts, self._attrs, hook=hook
        )

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
                    _quit(conn)
                raise
            errors = [r for r in results if isinstance(r, BaseException)]
            if errors:
                for conn in opened:
                    _quit(conn)
                raise errors[0]
            now = time.monotonic()
            for conn in opened:
                conn.idle_since = now
            self._idle.extend(opened)
        self._opened = True

    def refresh(self) -> None:
        """Retire the current generation: idle connections now, those in use when released."""
        self.generation += 1
        idle, self._idle = self._idle, deque()
        for conn in idle:
            _quit(conn)

    async def close(self) -> None:
        """Close idle connections, turn waiters away, wait a while for those in use."""
        if not self._opened:
            return
        self._opened = False
        idle, self._idle = self._idle, deque()
        for conn in idle:
            _quit(conn)
        # Each waiter is handed a slot: it finds the pool closed and leaves, freeing it.
        self._slots += self._waiting.hand_all(None)
        await self.drain(lambda: bool(self._in_use))
        for conn in list(self._in_use):
            conn.raw.close()

    def acquire(self, timeout: float | None) -> _Acquire:
        """A connection for the ``async with`` block; ``timeout`` bounds wait and connect."""
        return _Acquire(self, timeout)

    async def checkout(self, timeout: float | None) -> MySQLConnection:
        """A connection of this pool, ours until ``checkin``; ``timeout`` bounds the wait for
        a slot and the connect together."""
        if self._opened and self._slots < self.max_size and not self._waiting:
            conn = self._pop_idle()
            if conn is not None:  # the hot path: no await, no timer
                self._slots += 1
                self._in_use.add(conn)
                return conn
        slot = [False]
        try:
            waiting = self._wait_for_connection(slot)
            # Most calls wait here when the pool is saturated: the shared wheel bounds them
            # without one event-loop timer each (see _kit/wheel.py).
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
            raise PoolClosed("the MySQL connection pool is closed")
        conn = self._pop_idle()
        if conn is None:
            self.may_connect.check()
            conn = await self.connect()
        return conn

    def _pop_idle(self) -> MySQLConnection | None:
        idle = self._idle
        if not idle:
            return None
        now = time.monotonic()
        close_stale(idle, now, self.options, self._size(), self.min_size, _quit)
        while idle:
            conn = idle.pop()
            if self._reusable(conn, now):
                return conn
            _quit(conn)  # the server hung up while it sat idle, or it is retired
        return None

    def _reusable(self, conn: MySQLConnection, now: float) -> bool:
        return conn.generation == self.generation and now < conn.expires and alive(conn.raw)

    async def _take_slot(self) -> None:
        if self._slots < self.max_size and not self._waiting:
            self._slots += 1
            return
        # _free_slot hands its slot over (self._slots is unchanged); one handed over just as
        # this caller gave up is passed on.
        await self._waiting.wait(lambda _slot: self._free_slot())

    def _free_slot(self) -> None:
        if not self._waiting.hand(None):
            self._slots -= 1

    def checkin(self, conn: MySQLConnection) -> None:
        """Give back a connection from ``checkout``: pooled if reusable, else closed."""
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
        if not self._in_use:
            self.note_drained()

    def _size(self) -> int:
        return len(self._idle) + len(self._in_use)

    async def maintain(self) -> int:
        """Keepalive and lifetime, on idle connections only; returns how many were dead.

        The idle connections are taken out of the pool, each with a slot (so they are ours
        alone and ``max_size`` holds), retired when past their lifetime, else pinged with
        ``ping(reconnect=False)``; then the pool is topped up to ``min_size``.
        """
        if not self._opened or not self.may_connect():
            return 0
        grabbed: list[MySQLConnection] = []
        while self._idle and self._slots < self.max_size and not self._waiting:
            conn = self._idle.popleft()
            self._slots += 1
            self._in_use.add(conn)
            grabbed.append(conn)

        async def ping(conn: MySQLConnection) -> None:
            if not alive(conn.raw):
                raise ConnectionError("the server closed the connection")
            async with asyncio.timeout(ping_bound(self.options)):
                if self._attrs in ("any", "prefer-standby"):
                    await conn.raw.ping(reconnect=False)  # never reconnect: loses the session
                    return
                ro = await read_only(conn, ping_bound(self.options))
            self.role = role_name(False, ro)
            if not fits(self._attrs, ro, ro):
                raise ConnectionError(f"the node is no longer {self._attrs}")

        async def give_back(conn: MySQLConnection) -> None:
            self.checkin(conn)

        return await keepalive(
            grabbed,
            expires=lambda conn: conn.expires,
            ping=ping,
            retire=_quit,
            kill=lambda conn: conn.raw.close(),
            give_back=give_back,
            fill=self._fill,
        )

    async def _fill(self) -> None:
        """Open connections up to ``min_size`` (as room and the connect gate allow)."""
        while self._opened and self._size() < self.min_size:
            if self._slots >= self.max_size or not self.may_connect():
                break
            self._slots += 1
            try:
                conn = await self.connect()
            except BaseException:
                self._free_slot()
                raise
            self._in_use.add(conn)
            self.checkin(conn)

    async def trim_idle(self) -> int:
        """Close idle connections beyond ``min_size``, oldest first (memory watchdog)."""
        return trim_oldest(self._idle, self._size(), self.min_size, _quit)

    def stats(self) -> PoolStats:
        """Open, idle and in-use connection counts, with the configured bounds."""
        return self.gauges(len(self._idle), len(self._in_use))
