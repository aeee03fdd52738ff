"""Attack round 2: the supervisor's start and close, under load and in odd orders."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from harness.polling import until
from harness.servers import PostgresServer
from resilientdb import (
    DatabaseUnavailable,
    OutcomeUnknown,
    State,
    Supervisor,
    SupervisorClosed,
    TransactionLost,
    TransactionRolledBack,
)
from resilientdb.testing import FaultProxy
from tests.audit_support import outcome_of, pg_connect, settle_task, via


@pytest.fixture
async def observer(pg: PostgresServer) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await pg_connect(pg, user="postgres")
    try:
        yield conn
    finally:
        await conn.close()


async def app_connections(observer: asyncpg.Connection[Any]) -> int:
    """Server-side connections of user ``app`` (the supervisor's)."""
    return int(
        await observer.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
            "AND pid <> pg_backend_pid()"
        )
    )


def resilientdb_tasks() -> list[asyncio.Task[Any]]:
    me = asyncio.current_task()
    return [
        t
        for t in asyncio.all_tasks()
        if t is not me
        and not t.done()
        and ("resilientdb" in t.get_name() or "_guarded" in repr(t.get_coro()))
    ]


async def test_lc2_second_concurrent_aclose_waits_for_the_close(
    pg: PostgresServer, observer: asyncpg.Connection[Any]
) -> None:
    """Two closers at once (a lifespan hook and an explicit close): the second ``aclose()``
    returns at once, while the first is still closing: connections and tasks are still
    there. Promised: closing the supervisor leaves no task or connection behind."""
    sup = Supervisor(pg.dsn(), min_size=3, max_size=3)
    await sup.start()
    await until(lambda: sup.db.statistics().pool.size >= 3)
    # A caller holds a connection inside a block: the first close waits for it (bounded).
    held = asyncio.Event()

    async def holder() -> None:
        with contextlib.suppress(Exception):
            async with sup.db.transaction() as tx:
                await tx.execute("SELECT 1")
                held.set()
                await asyncio.sleep(1.0)

    h = asyncio.create_task(holder())
    await held.wait()
    first = asyncio.create_task(sup.aclose())
    await asyncio.sleep(0.05)
    await sup.aclose()  # the second closer
    leftover_conns = await app_connections(observer)
    leftover_tasks = resilientdb_tasks()
    first_done = first.done()
    await settle_task(first)
    await settle_task(h)
    assert first_done or (leftover_conns == 0 and not leftover_tasks), (
        f"second aclose() returned while the first was still closing: "
        f"{leftover_conns} server connections, {len(leftover_tasks)} tasks left"
    )


async def test_lc2_aclose_racing_start_leaves_nothing_running(
    pg: PostgresServer, observer: asyncpg.Connection[Any]
) -> None:
    """``aclose()`` while ``start()`` is still under way (shutdown during startup): start()
    carries on after the close, puts the backend back into CONNECTING (its loop exits at
    once, being stopped), waits ~2x connect_timeout and returns normally. The supervisor is
    left a zombie: calls wait at the gate until their deadline and raise
    DatabaseUnavailable instead of SupervisorClosed. Promised: a closed supervisor answers
    SupervisorClosed; closing leaves nothing behind (state CLOSED)."""
    sup = Supervisor(pg.dsn(), min_size=2, max_size=2)
    starting = asyncio.create_task(sup.start())
    await asyncio.sleep(0)  # start() has begun: the task group is opening
    await sup.aclose()
    outcome = await outcome_of(starting)
    await asyncio.sleep(1.0)
    after = await outcome_of(sup.db.fetchval("SELECT 1", timeout=2))
    conns = await app_connections(observer)
    tasks = resilientdb_tasks()
    state = sup.db.state
    for t in tasks:
        t.cancel()
    assert (state, conns, len(tasks)) == (State.CLOSED, 0, 0), (
        f"1 s after aclose() returned: state {state.value}, {conns} server connections, "
        f"tasks {[t.get_name() for t in tasks]} (start() gave {outcome!r}; a call after "
        f"the close gave {after!r})"
    )


async def test_lc2_cancelled_aclose_leaves_no_connection(
    pg: PostgresServer, observer: asyncpg.Connection[Any]
) -> None:
    """The closer is cancelled (a shutdown timeout) while CLOSE waits for a connection being
    given back: the state is already CLOSED, the pool's close never runs, and a second
    ``aclose()`` is a no-op: an idle pool connection stays open on the server for good.
    Promised: closing the supervisor leaves no task or connection behind."""
    async with FaultProxy(pg.host, pg.port) as proxy:
        sup = Supervisor(via(proxy, pg.dsn()), min_size=2, max_size=2, connect_timeout=2)
        await sup.start()
        await until(lambda: sup.db.statistics().pool.size >= 2)
        # A caller cancelled mid-statement through a partition: its release runs in the
        # background (the driver waits for its cancel request).
        call = asyncio.create_task(sup.db.fetchval("SELECT pg_sleep(2)"))
        await asyncio.sleep(0.3)
        proxy.blackhole()
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        closer = asyncio.create_task(sup.aclose())
        await asyncio.sleep(0.3)
        closer.cancel()
        await asyncio.gather(closer, return_exceptions=True)
        proxy.pass_through()
        await sup.aclose()  # again: must finish the job
        await asyncio.sleep(6.0)  # past every grace period
        conns = await app_connections(observer)
        detail = await observer.fetch(
            "SELECT pid, state, query, now() - state_change AS idle_for FROM pg_stat_activity "
            "WHERE usename = 'app'"
        )
        tasks = resilientdb_tasks()
        state = sup.db.state
        for t in tasks:
            t.cancel()
        assert state is State.CLOSED, state
        assert not tasks, f"tasks left after aclose(): {tasks}"
        assert conns == 0, f"{conns} server connections left after aclose(): {detail}"


async def test_lc2_close_while_reconnecting_is_bounded(pg: PostgresServer) -> None:
    """Close while the backend is reconnecting through a blackhole, with callers waiting
    at the gate: they get SupervisorClosed at once and the close ends in a bounded time."""
    async with FaultProxy(pg.host, pg.port) as proxy:
        sup = Supervisor(via(proxy, pg.dsn()), min_size=1, max_size=2, connect_timeout=3)
        await sup.start()
        proxy.blackhole()
        proxy.reset()
        probe = await outcome_of(sup.db.fetchval("SELECT 1", timeout=1))
        callers = [asyncio.create_task(sup.db.fetchval("SELECT 1")) for _ in range(20)]
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        await sup.aclose()
        took = time.monotonic() - t0
        results = await asyncio.gather(*callers, return_exceptions=True)
        assert took < 3.0, f"aclose() took {took:.1f}s (first call: {probe!r})"
        assert all(isinstance(r, SupervisorClosed | DatabaseUnavailable) for r in results), results
        assert not resilientdb_tasks()


async def test_lc2_close_under_load_ends_every_call(
    pg: PostgresServer, observer: asyncpg.Connection[Any]
) -> None:
    """100 callers running (reads, writes, blocks) when aclose() is called: every call ends
    (with a result or an error), and nothing stays open on the server."""
    sup = Supervisor(pg.dsn(), min_size=2, max_size=5)
    await sup.start()

    async def worker(i: int) -> Any:
        if i % 3 == 0:
            return await sup.db.fetchval("SELECT pg_sleep(0.05)")
        if i % 3 == 1:
            async with sup.db.transaction() as tx:
                await tx.fetchval("SELECT pg_sleep(0.05)")
                return await tx.fetchval("SELECT 1")
        return await sup.db.execute("SELECT pg_sleep(0.02)")

    calls = [asyncio.create_task(worker(i)) for i in range(100)]
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    await sup.aclose()
    took = time.monotonic() - t0
    done, pending = await asyncio.wait(calls, timeout=5)
    for t in pending:
        t.cancel()
    errors = [t.exception() for t in done if t.exception() is not None]
    nothing_or_unknown = (
        SupervisorClosed,
        DatabaseUnavailable,
        OutcomeUnknown,
        TransactionLost,
        TransactionRolledBack,
    )
    odd = [e for e in errors if not isinstance(e, nothing_or_unknown)]
    for _ in range(30):  # the server notices closed sockets within moments
        conns = await app_connections(observer)
        if not conns:
            break
        await asyncio.sleep(0.1)
    assert not pending, f"{len(pending)} calls still pending after aclose()"
    assert took < 7, took
    assert conns == 0, conns
    assert not resilientdb_tasks()
    assert not odd, odd[:3]


async def test_lc2_health_during_close_never_raises(pg: PostgresServer) -> None:
    """health() concurrently with aclose(): it never raises for a database problem."""
    sup = Supervisor(pg.dsn(), min_size=1, max_size=2)
    await sup.start()
    checks = [asyncio.create_task(sup.health(timeout=1)) for _ in range(10)]
    closing = asyncio.create_task(sup.aclose())
    more = [asyncio.create_task(sup.health(timeout=1)) for _ in range(10)]
    results = await asyncio.gather(*checks, *more, return_exceptions=True)
    await closing
    bad = [r for r in results if isinstance(r, BaseException)]
    assert not bad, bad[:3]


async def test_lc2_start_after_close_and_close_before_start(pg: PostgresServer) -> None:
    sup = Supervisor(pg.dsn())
    await sup.aclose()  # never started
    with pytest.raises(SupervisorClosed):
        await sup.start()
    with pytest.raises(SupervisorClosed):
        await sup.db.fetchval("SELECT 1")
    assert not resilientdb_tasks()


async def test_lc2_close_with_a_release_stuck_in_a_partition_is_bounded(
    pg: PostgresServer, observer: asyncpg.Connection[Any]
) -> None:
    """A caller cancelled mid-statement through a partition leaves its release to the
    background; aclose() then gives it 5 s and closes the pool (5 s more at most): the
    close is bounded and leaves nothing behind once the network heals."""
    async with FaultProxy(pg.host, pg.port) as proxy:
        sup = Supervisor(via(proxy, pg.dsn()), min_size=2, max_size=2, connect_timeout=2)
        await sup.start()
        call = asyncio.create_task(sup.db.fetchval("SELECT pg_sleep(2)"))
        await asyncio.sleep(0.3)
        proxy.blackhole()
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
        assert sup.db.statistics().releasing >= 0
        t0 = time.monotonic()
        await sup.aclose()
        took = time.monotonic() - t0
        proxy.pass_through()
        tasks = resilientdb_tasks()
        for t in tasks:
            t.cancel()
        assert took < 11.5, f"aclose() took {took:.1f}s"
        assert not tasks, tasks
    for _ in range(50):
        if not await app_connections(observer):
            break
        await asyncio.sleep(0.1)
    assert await app_connections(observer) == 0


def test_lc2_backend_factory_returning_junk_is_a_configuration_error(pg: PostgresServer) -> None:
    """A backend_factory that returns None (or any non-adapter) crashes construction with
    AttributeError deep in Monitor. Documented: construction raises ConfigurationError for a
    bad value (backend_factory's callability is checked, its result is not)."""
    from resilientdb import ConfigurationError

    for junk in (None, object(), "postgres"):
        with pytest.raises(ConfigurationError):
            Supervisor(pg.dsn(), backend_factory=lambda name, dsn, options, j=junk: j)
