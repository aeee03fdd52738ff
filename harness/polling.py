"""Polling: wait until a condition holds, or give up after a bounded time.

``until`` / ``until_async`` are for async tests and benchmarks (the predicate is a plain or an
async callable); they raise ``AssertionError`` when the time runs out, so a test fails with a
clear message. ``wait_for`` is the synchronous form the throwaway servers use; it returns
whether the condition was reached.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["until", "until_async", "wait_for"]


async def until(
    predicate: Callable[[], object], timeout: float = 10.0, *, interval: float = 0.005
) -> None:
    """Poll ``predicate`` every ``interval`` seconds until it is true; ``AssertionError`` once
    ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


async def until_async(
    predicate: Callable[[], Awaitable[object]], timeout: float = 10.0, *, interval: float = 0.01
) -> None:
    """``until`` for a predicate that must be awaited (a query, say)."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() >= deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed (blocking)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
