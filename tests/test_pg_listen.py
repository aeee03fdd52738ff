"""LISTEN/NOTIFY on a real PostgreSQL (the suite's throwaway server): subscriptions survive a
server restart and a connection reset, the gap is reported (a marker in each stream and an
event), slow subscribers are bounded, and leaving leaves nothing behind."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness.servers import PostgresServer
from resilientdb import (
    DatabaseUnavailable,
    Notification,
    Subscription,
    Supervisor,
    SupervisorClosed,
)
from resilientdb.config import parse_dsn, with_host
from resilientdb.events import NotificationsMissed
from resilientdb.testing import FaultProxy
from tests.handles import Recorder


@pytest.fixture
async def proxy(pg: PostgresServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(pg.host, pg.port) as p:
        yield p


def via(proxy: FaultProxy, dsn: str) -> str:
    return with_host(parse_dsn(dsn), proxy.host, proxy.port)


async def next_item(sub: Subscription, timeout: float = 10.0) -> Any:
    async with asyncio.timeout(timeout):
        return await anext(sub)


def listen_tasks() -> list[asyncio.Task[Any]]:
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith("resilientdb-listen") and not t.done()
    ]


async def backend_alive(pg: PostgresServer, pid: int) -> bool:
    sql = f"SELECT count(*) FROM pg_stat_activity WHERE pid = {int(pid)}"
    return int(await asyncio.to_thread(pg.admin_query, sql)) == 1


async def test_notifications_reach_every_subscriber_and_leaving_closes(pg: PostgresServer) -> None:
    async with Supervisor(pg.dsn(), min_size=1, max_size=2) as sup:
        db = sup.db
        before = sup._tasks.running  # the supervisor's own tasks (its task group)
        async with db.listen("a", "b") as both, db.listen("b") as only_b:
            assert sup._tasks.running == before + 1  # one listener task, however many subscribe
            pid = db._listener.connection.get_server_pid()
            assert sup.db.statistics().pool.size <= 2  # not taken from the pool
            await db.notify("a", "one")
            await db.notify("b", "two")
            await db.notify("c", "nobody")
            first, second = await next_item(both), await next_item(both)
            assert (first.channel, first.payload) == ("a", "one")
            assert (second.channel, second.payload) == ("b", "two")
            assert isinstance(first, Notification) and first.pid > 0
            got = await next_item(only_b)
            assert (got.channel, got.payload) == ("b", "two")
            async with db.transaction() as tx:  # delivered at COMMIT
                await db.notify("b", "in tx")
                await tx.execute("SELECT 1")
            assert (await next_item(only_b)).payload == "in tx"
            await both.aclose()  # "a" is nobody's any more: UNLISTENed, the connection stays
            await db.notify("b", "still")
            assert (await next_item(only_b)).payload == "still"
            for _ in range(100):  # the listener's task UNLISTENs in the background
                if db._listener._listening == {"b"}:
                    break
                await asyncio.sleep(0.02)
            assert db._listener._listening == {"b"}
            assert db._listener.connection.get_server_pid() == pid
        # The last subscriber left: the task ended and the connection is closed.
        await asyncio.sleep(0.1)
        assert not listen_tasks() and sup._tasks.running == before
        assert db._listener.connection is None
        assert not await backend_alive(pg, pid)
        # And a new subscriber starts it again.
        async with db.listen("a") as again:
            await db.notify("a", "back")
            assert (await next_item(again)).payload == "back"


async def test_listen_survives_a_server_restart(pg: PostgresServer) -> None:
    sup = Supervisor(pg.dsn(), connect_timeout=2.0, keepalive_interval=1.0)
    rec = Recorder(sup)
    async with sup, sup.db.listen("jobs") as jobs, sup.db.listen("jobs", "other") as both:
        db = sup.db
        await db.notify("jobs", "before")
        assert (await next_item(jobs)).payload == "before"
        assert (await next_item(both)).payload == "before"
        old_server, old_conn = pg.pid, db._listener.connection.get_server_pid()
        await asyncio.to_thread(pg.restart)
        assert pg.pid != old_server
        for sub in (jobs, both):
            marker = await next_item(sub, timeout=30)
            assert isinstance(marker, NotificationsMissed), marker
            assert marker.reason == "reconnected"
            assert set(marker.channels) == sub.channels
        assert db._listener.connection.get_server_pid() != old_conn
        await db.notify("jobs", "after")
        await db.notify("other", "after too")
        assert (await next_item(jobs)).payload == "after"
        assert [(await next_item(both)).payload for _ in range(2)] == ["after", "after too"]
        await rec.settle()
        events = rec.of(NotificationsMissed)
        assert len(events) == 1 and events[0].channels == ("jobs", "other")


async def test_listen_survives_a_connection_reset(pg: PostgresServer, proxy: FaultProxy) -> None:
    sup = Supervisor(via(proxy, pg.dsn()), connect_timeout=2.0)
    rec = Recorder(sup)
    async with sup, sup.db.listen("orders") as orders:
        await sup.db.notify("orders", "1")
        assert (await next_item(orders)).payload == "1"
        assert proxy.reset() >= 1
        marker = await next_item(orders)
        assert isinstance(marker, NotificationsMissed) and marker.channels == ("orders",)
        await sup.db.notify("orders", "2")
        assert (await next_item(orders)).payload == "2"
        assert proxy.stats.resets >= 1
        await rec.settle()
        assert [e.reason for e in rec.of(NotificationsMissed)] == ["reconnected"]


async def test_a_slow_subscriber_is_told_what_it_lost(pg: PostgresServer) -> None:
    sup = Supervisor(pg.dsn())
    rec = Recorder(sup)
    async with sup, sup.db.listen("fast") as fast, sup.db.listen("fast", max_queued=3) as slow:
        async with sup.db.transaction() as tx:
            for i in range(10):
                await tx.execute("SELECT pg_notify('fast', $1)", str(i))
        assert [(await next_item(fast)).payload for _ in range(10)] == [str(i) for i in range(10)]
        assert [(await next_item(slow)).payload for _ in range(3)] == ["0", "1", "2"]
        marker = await next_item(slow)
        assert isinstance(marker, NotificationsMissed)
        assert (marker.reason, marker.dropped) == ("overflow", 7)
        await sup.db.notify("fast", "next")
        assert (await next_item(slow)).payload == "next"
        await rec.settle()
        assert [e.dropped for e in rec.of(NotificationsMissed)] == [7]


async def test_break_cancel_and_close_leave_nothing(pg: PostgresServer) -> None:
    sup = Supervisor(pg.dsn())
    await sup.start()
    db = sup.db
    try:
        # break out of the loop
        async with db.listen("x") as sub:
            await db.notify("x", "1")
            async for _item in sub:
                break
        # a cancelled subscriber task
        entered = asyncio.Event()

        async def consume() -> None:
            async with db.listen("x") as sub:
                entered.set()
                async for _item in sub:
                    pass

        task = asyncio.create_task(consume())
        await entered.wait()
        pid = db._listener.connection.get_server_pid()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.2)
        assert not listen_tasks() and db._listener.connection is None
        assert not await backend_alive(pg, pid)
        # the supervisor closing under a subscriber
        outcome: list[BaseException] = []

        async def waiting() -> None:
            try:
                async with db.listen("y") as sub:
                    entered.set()
                    await anext(sub)
            except BaseException as exc:
                outcome.append(exc)

        entered.clear()
        task = asyncio.create_task(waiting())
        await entered.wait()
    finally:
        await sup.aclose()
    await asyncio.wait_for(task, 5)
    assert isinstance(outcome[0], SupervisorClosed)
    assert not listen_tasks() and sup._tasks.running == 0
    with pytest.raises(SupervisorClosed):
        async with db.listen("z"):
            pass


async def test_entering_waits_for_listen_within_timeout(
    pg: PostgresServer, proxy: FaultProxy
) -> None:
    async with Supervisor(via(proxy, pg.dsn()), connect_timeout=1.0, min_size=1) as sup:
        proxy.refuse()
        proxy.reset()
        with pytest.raises(DatabaseUnavailable, match="LISTEN"):
            async with sup.db.listen("late", timeout=0.5):
                pass
        assert proxy.stats.refused >= 1
        await asyncio.sleep(0.3)
        assert not listen_tasks()
        proxy.pass_through()
        async with sup.db.listen("late", timeout=15) as sub:
            await sup.db.notify("late", "ok", timeout=15)
            assert (await next_item(sub)).payload == "ok"


async def test_bad_arguments_are_refused_at_once(pg: PostgresServer) -> None:
    async with Supervisor(pg.dsn()) as sup:
        db = sup.db
        for bad in ("", "x" * 64, "a\x00b"):
            with pytest.raises(ValueError, match="channel name"):
                db.listen(bad)
        with pytest.raises(TypeError):
            db.listen(3)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="at least one"):
            db.listen()
        with pytest.raises(ValueError, match="max_queued"):
            db.listen("a", max_queued=0)
        with pytest.raises(TypeError, match="payload"):
            await db.notify("a", 5)  # type: ignore[arg-type]
        sub = db.listen("a")
        with pytest.raises(RuntimeError, match="async with"):
            await anext(sub)


async def test_a_silent_partition_is_found_by_the_ping(
    pg: PostgresServer, proxy: FaultProxy
) -> None:
    """A blackhole: nothing errors, the socket just goes quiet. The listener's ping finds it,
    and once the partition heals the subscriber gets the marker and what follows."""
    sup = Supervisor(via(proxy, pg.dsn()), connect_timeout=1.0, keepalive_interval=0.5)
    async with sup, sup.db.listen("quiet") as sub:
        first = sup.db._listener.connects
        proxy.blackhole()
        await asyncio.sleep(2.5)  # the ping (0.5 s + up to 1 s) gave the connection up
        proxy.pass_through()
        marker = await next_item(sub, timeout=20)
        assert isinstance(marker, NotificationsMissed) and marker.reason == "reconnected"
        assert sup.db._listener.connects > first
        await sup.db.notify("quiet", "healed", timeout=15)
        assert (await next_item(sub)).payload == "healed"


def test_notify_is_a_write_for_the_replay_rules() -> None:
    from resilientdb._replay import verdict

    assert not verdict("SELECT pg_notify($1, $2)", "postgresql").read_only


async def test_churn_with_resets_leaves_nothing(pg: PostgresServer, proxy: FaultProxy) -> None:
    """Subscribers come and go concurrently (bounded: 5 tasks x 15 rounds) while the proxy
    resets connections: every subscriber that entered receives what it was sent after
    entering (or a marker first), and at the end no task and no connection is left."""
    sup = Supervisor(via(proxy, pg.dsn()), connect_timeout=2.0)
    async with sup:
        db = sup.db

        async def churn(k: int) -> None:
            for r in range(15):
                async with db.listen(f"c{k}", "shared", timeout=10) as sub:
                    await db.notify(f"c{k}", str(r), timeout=10, idempotent=True)
                    while True:
                        item = await next_item(sub)
                        if isinstance(item, NotificationsMissed):
                            # Told it may have missed it: resynchronise (send it again).
                            await db.notify(f"c{k}", str(r), timeout=10, idempotent=True)
                        elif item.channel == f"c{k}":
                            assert item.payload == str(r)
                            break

        async def resets() -> None:
            for _ in range(3):
                await asyncio.sleep(0.15)
                proxy.reset()

        await asyncio.wait_for(asyncio.gather(*(churn(k) for k in range(5)), resets()), 60)
        await asyncio.sleep(0.2)
        assert not listen_tasks() and db._listener.connection is None
        assert proxy.stats.resets >= 1
    listening = await asyncio.to_thread(
        pg.admin_query, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'"
    )
    assert int(listening) == 0


async def test_closing_or_cancelling_during_an_outage(
    pg: PostgresServer, proxy: FaultProxy
) -> None:
    """While the listener cannot reconnect: a subscriber cancelled while entering leaves no
    trace, and closing the supervisor ends the others promptly with SupervisorClosed."""
    sup = Supervisor(via(proxy, pg.dsn()), connect_timeout=1.0)
    await sup.start()
    db = sup.db
    outcome: list[BaseException] = []
    try:
        async with db.listen("held") as held:
            proxy.refuse()
            proxy.reset()
            entering = asyncio.create_task(db.listen("other", timeout=30).__aenter__())
            await asyncio.sleep(0.5)
            assert not entering.done()
            entering.cancel()
            with pytest.raises(asyncio.CancelledError):
                await entering
            assert db._listener._subs == [held]

            async def consume() -> None:
                try:
                    async for _ in held:
                        pass
                except BaseException as exc:
                    outcome.append(exc)

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.2)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await sup.aclose()
            assert loop.time() - started < 5.0
            await asyncio.wait_for(task, 5)
    finally:
        await sup.aclose()
    assert isinstance(outcome[0], SupervisorClosed)
    assert proxy.stats.refused >= 1
    assert not listen_tasks()
