"""Coarse deadlines for many waiters, at the cost of a dict lookup and a set insert each.

``asyncio.timeout`` pushes one timer per waiter onto the event loop's heap; on a saturated
pool (every call waits for a connection) that heap work alone cost 10 % of throughput in
``benchmarks/overhead.py``. Here waiters whose deadlines fall in the same slot share one timer.
A deadline fires up to ``resolution`` seconds late, which is fine for acquire timeouts measured
in seconds.

Cancellation follows ``asyncio.timeout``: the wheel cancels the waiting task, and the waiter
turns that cancellation (and only that one, checked with ``Task.uncancel``) into
``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from typing import TypeVar

__all__ = ["TimeoutWheel"]

T = TypeVar("T")


class TimeoutWheel:
    """Shared timers in slots of ``resolution`` seconds. Loop-free until first used."""

    __slots__ = ("_expired", "_resolution", "_slots")

    def __init__(self, resolution: float = 0.05) -> None:
        self._resolution = resolution
        self._slots: dict[int, set[asyncio.Task[object]]] = {}
        self._expired: set[asyncio.Task[object]] = set()

    async def wait(self, awaitable: Awaitable[T], timeout: float) -> T:
        """``await awaitable``, raising ``TimeoutError`` about ``timeout`` seconds later."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        key = math.ceil((loop.time() + timeout) / self._resolution)
        slot = self._slots.get(key)
        if slot is None:
            slot = self._slots[key] = set()
            loop.call_at(key * self._resolution, self._fire, key)
        slot.add(task)
        try:
            return await awaitable
        except asyncio.CancelledError:
            if task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:
                    raise TimeoutError from None
            raise
        finally:
            slot.discard(task)

    def _fire(self, key: int) -> None:
        for task in self._slots.pop(key, ()):
            if task.cancel():
                self._expired.add(task)
