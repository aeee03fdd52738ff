"""Callers waiting in order for something handed over to them: a connection, a slot, a wake-up.

psycopg_pool's ``WaitingClient`` is the model: the giver hands a value to the first caller still
waiting, and learns whether anyone took it; a caller that gives up (cancelled, timed out) just
as a value reached it passes the value on, so nothing handed over is ever lost. One future
per waiter, kept in an ordered dict: first come, first served, and a waiter that leaves removes
exactly its own entry in O(1), however many wait.

Dependency-free (asyncio only), so that the gate and every pool can use it. Timeouts are the
caller's: wrap ``wait()`` in ``asyncio.timeout`` or the pools' timeout wheel.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Waiting"]

T = TypeVar("T")


class Waiting(Generic[T]):
    """A first-come, first-served queue of waiters, each handed one value."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: OrderedDict[asyncio.Future[T], None] = OrderedDict()

    def __len__(self) -> int:
        """Callers waiting now (handed ones have left the queue)."""
        return len(self._waiters)

    async def wait(self, on_orphan: Callable[[T], object] | None = None) -> T:
        """Wait for a value. When the wait ends otherwise (cancelled, timed out) just as a
        value was handed over, ``on_orphan(value)`` passes it on before the error propagates."""
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters[fut] = None
        try:
            return await fut
        except BaseException:
            if on_orphan is not None and fut.done() and not fut.cancelled():
                on_orphan(fut.result())
            raise
        finally:
            # Whatever ended the wait, the entry goes with it.
            self._waiters.pop(fut, None)

    def hand(self, value: T) -> bool:
        """Give ``value`` to the first caller still waiting; False when nobody waits."""
        waiters = self._waiters
        while waiters:
            fut, _ = waiters.popitem(last=False)
            if not fut.done():
                fut.set_result(value)
                return True
        return False

    def hand_all(self, value: T) -> int:
        """Give ``value`` to every caller waiting (a wake-up); how many were waiting."""
        waiters, self._waiters = self._waiters, OrderedDict()
        handed = 0
        for fut in waiters:
            if not fut.done():
                fut.set_result(value)
                handed += 1
        return handed
