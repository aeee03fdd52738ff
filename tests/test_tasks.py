"""The supervisor owns its background tasks: one group, nothing outlives it, one child's
failure never stops the others; every action of the transition table is carried out."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from resilientdb import Backoff, State
from resilientdb._states import TRANSITIONS, Action
from resilientdb._tasks import TaskGroup, finish
from resilientdb.testing.fake import FakeConnectionLost
from tests.handles import adapter, supervised

FAST = Backoff(initial=0.005, maximum=0.02, jitter=0.0)


def ours() -> set[asyncio.Task[Any]]:
    return {t for t in asyncio.all_tasks() if t.get_name().startswith("resilientdb")}


async def test_a_failing_child_is_logged_and_its_siblings_run_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    group = TaskGroup("test")
    await group.start()
    ticks: list[int] = []

    async def ticker() -> None:
        while True:
            ticks.append(1)
            await asyncio.sleep(0.001)

    async def broken() -> None:
        raise RuntimeError("a bug in one part")

    with caplog.at_level(logging.ERROR, logger="resilientdb"):
        group.spawn(ticker(), "resilientdb-ticker")
        group.spawn(broken(), "resilientdb-broken")
        await asyncio.sleep(0.02)
        seen = len(ticks)
        await asyncio.sleep(0.02)
        assert len(ticks) > seen  # still ticking after its sibling failed
    assert "a bug in one part" in caplog.text
    await group.aclose(grace=0.01)
    assert group.running == 0 and not ours()


async def test_children_get_their_grace_then_are_cancelled() -> None:
    group = TaskGroup("test")
    await group.start()
    finished: list[str] = []

    async def quick() -> None:
        await asyncio.sleep(0.01)
        finished.append("quick")

    async def forever() -> None:
        await asyncio.sleep(3600)
        finished.append("forever")

    group.spawn(quick(), "resilientdb-quick")
    slow = group.spawn(forever(), "resilientdb-forever")
    await group.aclose(grace=0.1)
    assert finished == ["quick"] and slow.cancelled()
    assert group.running == 0 and not ours()


async def test_finish_never_raises_the_tasks_error_but_keeps_the_callers_cancel() -> None:
    async def fails() -> None:
        raise ValueError("inside")

    task = asyncio.create_task(fails())
    await finish(task)  # logged, not raised
    stuck = asyncio.create_task(asyncio.sleep(3600))
    closer = asyncio.create_task(finish(stuck, grace=10))
    await asyncio.sleep(0.01)
    closer.cancel()  # the closer's own cancellation propagates
    with pytest.raises(asyncio.CancelledError):
        await closer
    stuck.cancel()


async def test_nothing_outlives_the_supervisor_even_with_releases_in_flight() -> None:
    sup = supervised("fake://db", backoff=FAST, memory_interval=0.01)
    backend = adapter(sup)
    before = ours()
    async with sup:
        assert len(ours() - before) >= 3  # the loop, the events, the watchdog
        backend.delay = 0.05  # every statement is slow: cancel callers mid-statement
        callers = [asyncio.create_task(sup.db.fetchval("SELECT 1")) for _ in range(5)]
        await asyncio.sleep(0.01)
        for c in callers:
            c.cancel()
        await asyncio.gather(*callers, return_exceptions=True)
    assert ours() == before
    assert sup.db.statistics().releasing == 0


def test_the_table_names_every_action() -> None:
    # Every action exists in the table (no dead Action), and the monitor carries out each:
    # the closes and refreshes the next tests count.
    used = {a for _, actions in TRANSITIONS.values() for a in actions}
    assert used == set(Action)


async def test_close_pool_is_carried_out_once_by_the_transition() -> None:
    sup = supervised("fake://db", backoff=FAST, memory_watchdog=False)
    backend = adapter(sup)
    async with sup:
        assert not backend.closed
    assert backend.closed and sup.state is State.CLOSED
    await sup.aclose()  # idempotent: CLOSE from CLOSED is no transition, no second close


async def test_retire_pool_is_carried_out_before_the_gate_opens() -> None:
    sup = supervised("fake://db", backoff=FAST, memory_watchdog=False)
    backend = adapter(sup)
    refresh = backend.refresh
    at_refresh: list[State] = []

    async def watched_refresh() -> None:
        at_refresh.append(sup.db.state)  # the state while the old generation is retired
        await refresh()

    backend.refresh = watched_refresh
    async with sup:
        backend.up = False
        backend.fail_next(FakeConnectionLost("gone"))
        caller = asyncio.create_task(sup.db.fetchval("SELECT 1"))
        await asyncio.sleep(0.05)
        assert sup.state is State.RECONNECTING
        backend.up = True
        assert await caller == 1
    # The gate was still closed while the pool was retired: no caller could get an old one.
    assert at_refresh == [State.RECONNECTING]
