"""The shared-slot timeout wheel behaves like asyncio.timeout, only coarser."""

from __future__ import annotations

import asyncio
import time

import pytest

from resilientdb.backends._kit.wheel import TimeoutWheel


async def test_times_out_about_on_time() -> None:
    wheel = TimeoutWheel(resolution=0.02)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await wheel.wait(asyncio.sleep(5), 0.1)
    assert 0.09 <= time.monotonic() - started < 0.5


async def test_result_passes_through_and_nothing_fires_later() -> None:
    wheel = TimeoutWheel(resolution=0.01)

    async def quick() -> int:
        await asyncio.sleep(0)
        return 7

    assert await wheel.wait(quick(), 0.05) == 7
    await asyncio.sleep(0.1)  # the slot's timer fires with nobody left in it
    assert wheel._slots == {} and wheel._expired == set()


async def test_outside_cancellation_stays_a_cancellation() -> None:
    wheel = TimeoutWheel()
    task = asyncio.create_task(wheel.wait(asyncio.sleep(5), 1.0))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(not slot for slot in wheel._slots.values())


async def test_many_waiters_share_few_timers() -> None:
    wheel = TimeoutWheel(resolution=0.05)
    waiters = [asyncio.create_task(wheel.wait(asyncio.sleep(5), 0.1)) for _ in range(500)]
    await asyncio.sleep(0)
    assert len(wheel._slots) <= 2  # 500 waiters, one or two shared timers
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(r, TimeoutError) for r in results)
    assert wheel._expired == set()
