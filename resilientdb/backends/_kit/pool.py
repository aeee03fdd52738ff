"""The pools' common mechanics, written once for every driver room.

The MySQL and SQLite pools are our own and share ``PoolCore`` (the supervisor's connect gate,
the generation, the waiters, the wheel, drain on close, the gauges); the PostgreSQL adapter
drives asyncpg's pool and shares the rest: jittered lifetimes, the keepalive pass and its
bounds. docs/design.md ("States and the one reconnect loop") says why a pool must not open a
connection while the supervisor reconnects, and why a recovery retires a whole generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from ..._waiting import Waiting
from ..base import ConnectPaused, PoolStats
from .wheel import TimeoutWheel

if TYPE_CHECKING:
    from ...config import Options

__all__ = [
    "CLOSE_TIMEOUT",
    "ConnectGate",
    "PoolCore",
    "close_stale",
    "expiry",
    "keepalive",
    "ping_bound",
    "trim_oldest",
]

CLOSE_TIMEOUT = 5.0
"""Bound on closing: one connection, a pool's drain, a worker thread's end."""
_PING_CAP = 5.0

C = TypeVar("C")
W = TypeVar("W")


class Idles(Protocol):
    """A pooled connection as the idle bookkeeping sees it."""

    idle_since: float


I = TypeVar("I", bound=Idles)  # noqa: E741


def expiry(options: Options) -> float:
    """When a connection opened now retires (``time.monotonic()``), ``inf`` without a lifetime.

    Each connection gets its own jittered end of life, so that a fleet started together does
    not reconnect together."""
    if options.max_lifetime is None:
        return float("inf")
    life = options.max_lifetime * (1.0 - random.uniform(0.0, options.lifetime_jitter))
    return time.monotonic() + life


class ConnectGate:
    """The supervisor's check, passed before a pool opens any connection: while it says no,
    the pool raises ``ConnectPaused`` instead (only the supervisor's probe connects)."""

    __slots__ = ("_may",)

    def __init__(self) -> None:
        self._may: Callable[[], bool] = lambda: True

    def set(self, may_connect: Callable[[], bool]) -> None:
        """Install the supervisor's check (``Backend.set_connect_gate``)."""
        self._may = may_connect

    def __call__(self) -> bool:
        """Whether the supervisor allows new connections now."""
        return self._may()

    def check(self) -> None:
        """Raise ``ConnectPaused`` unless the supervisor allows new connections now."""
        if not self._may():
            raise ConnectPaused("the supervisor is reconnecting; the pool opens no connection now")


def ping_bound(options: Options) -> float:
    """Bound on one keepalive ping: a server slow to answer is checked again next pass."""
    return min(options.connect_timeout, _PING_CAP)


def close_stale(
    idle: deque[I], now: float, options: Options, size: int, floor: int, close: Callable[[I], None]
) -> None:
    """Close idle connections unused for ``max_idle``, oldest first, down to ``floor`` open
    (``size`` is how many are open now)."""
    max_idle = options.max_idle
    if max_idle is None:
        return
    while idle and size > floor and now - idle[0].idle_since > max_idle:
        close(idle.popleft())
        size -= 1


def trim_oldest(idle: deque[C], size: int, floor: int, close: Callable[[C], None]) -> int:
    """Close idle connections, oldest first, down to ``floor`` open; how many (the memory
    watchdog's trim)."""
    closed = 0
    while idle and size - closed > floor:
        close(idle.popleft())
        closed += 1
    return closed


async def keepalive(
    grabbed: Sequence[C],
    *,
    expires: Callable[[C], float],
    ping: Callable[[C], Awaitable[object]],
    retire: Callable[[C], None],
    kill: Callable[[C], None],
    give_back: Callable[[C], Awaitable[None]],
    fill: Callable[[], Awaitable[None]],
) -> int:
    """The keepalive pass over idle connections taken out of the pool (ours alone meanwhile):
    each is retired when past its lifetime, else pinged and killed when it does not answer;
    all go back; then the pool is topped up (``fill``) unless one was dead. Returns how many
    were dead, counting a failed top-up as one: the monitor then checks the server."""
    now = time.monotonic()

    async def check(conn: C) -> bool:
        if expires(conn) <= now:
            retire(conn)  # retired, not dead: the pool opens a fresh one when needed
            return True
        try:
            await ping(conn)
        except Exception:
            kill(conn)
            return False
        return True

    try:
        alive = await asyncio.gather(*(check(conn) for conn in grabbed))
    finally:
        for conn in grabbed:
            with contextlib.suppress(Exception):
                await give_back(conn)
    dead = alive.count(False)
    if not dead:
        try:
            await fill()
        except Exception:
            dead += 1  # the server did not take a new connection
    return dead


class PoolCore(Generic[W]):
    """What a pool of our own keeps besides its connections.

    ``W`` is what a waiter is handed: a slot (MySQL) or a connection (SQLite).
    """

    def __init__(self, options: Options, *, min_size: int, max_size: int) -> None:
        self.options = options
        self.min_size = min_size
        self.max_size = max_size
        self.generation = 0  # grows with each refresh(); older connections are retired
        self.may_connect = ConnectGate()
        self._waiting: Waiting[W] = Waiting()
        self._wheel = TimeoutWheel()
        self._drained: asyncio.Event | None = None  # set by close(): nothing in use any more

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        """New connections open only while ``may_connect()`` is true (else ``ConnectPaused``)."""
        self.may_connect.set(may_connect)

    async def wait_turn(
        self, timeout: float | None, on_orphan: Callable[[W], object] | None = None
    ) -> W:
        """Queue behind the callers already waiting; ``timeout`` bounds the wait (through the
        shared wheel: a saturated pool takes no event-loop timer per waiter)."""
        waiting = self._waiting.wait(on_orphan)
        if timeout is None:
            return await waiting
        return await self._wheel.wait(waiting, max(timeout, 0.0))

    async def drain(self, in_use: Callable[[], bool]) -> None:
        """On close: wait up to ``CLOSE_TIMEOUT`` for connections in use to come back."""
        if not in_use():
            return
        self._drained = asyncio.Event()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._drained.wait()
        finally:
            self._drained = None

    def note_drained(self) -> None:
        """The last connection in use has come back (or gone)."""
        if self._drained is not None:
            self._drained.set()

    def gauges(self, idle: int, in_use: int) -> PoolStats:
        """The typed gauges from the pool's counts."""
        return PoolStats(idle + in_use, idle, in_use, self.min_size, self.max_size)
