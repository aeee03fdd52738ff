"""Fault behaviours every backend shares, one test each over the targets where they apply:
readers ride out a restart and a reset, a write cut off mid-flight is OutcomeUnknown, a killed
idle connection is replaced unseen, refused connects fail fast, a query error is raised
unchanged after one attempt, a blackhole never hangs past the deadline, and cancellation
leaks neither a connection nor a task.

``server_target`` runs over PostgreSQL and MariaDB (the throwaway servers, which these tests
restart and kill freely), ``target`` over SQLite too; what differs per backend is in
``Target.faults`` (``conftest.py``). What only one driver does stays in its own file
(``tests/test_<backend>_faults.py``).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from harness.polling import until, until_async
from harness.servers import SECURE_PASSWORD, SECURE_USER
from resilientdb import Backoff, DatabaseUnavailable, OutcomeUnknown, State, events
from resilientdb.testing import FaultProxy
from tests.backends.conftest import Target
from tests.handles import Recorder, adapter, supervised


@pytest.mark.slow
async def test_readers_ride_out_restart_and_reset(server_target: Target, proxy: FaultProxy) -> None:
    """50 readers loop through a fast server restart and a reset of every connection."""
    f, server = server_target.faults, server_target.throwaway
    raw_execute = f.raw_execute
    assert raw_execute is not None
    hooks = 0

    async def on_connect(raw: Any) -> None:
        nonlocal hooks
        hooks += 1
        await raw_execute(raw, f.tag_session)

    sup = supervised(server_target.via(proxy), max_size=10, on_connect=on_connect)
    rec = Recorder(sup)
    errors: list[BaseException] = []
    tags: set[Any] = set()
    done = 0
    stop = asyncio.Event()

    async def reader() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                tags.add(await sup.db.fetchval(f.read_tag))
                done += 1
            except Exception as exc:  # any error reaching a reader fails the test
                errors.append(exc)
            await asyncio.sleep(0.005)

    async with sup:
        readers = [asyncio.create_task(reader()) for _ in range(50)]
        await until(lambda: done > 200)
        old_pid, hooks_before = server.pid, hooks
        await asyncio.to_thread(server.restart, "fast")
        assert server.pid != old_pid  # the server really restarted
        mark = done
        await until(lambda: done > mark + 200)
        assert sup.db.statistics().reconnects >= 1
        assert hooks > hooks_before  # on_connect ran on the new generation
        # Readers between calls leave idle connections, which the pool replaces silently; a
        # query in flight when every connection is reset must be seen failing and replayed.
        slow = asyncio.create_task(sup.db.fetchval(f.slow_read_tag))
        slow_prefix = f.slow_read_tag[:20]

        async def slow_running() -> bool:
            return await server_target.app_connections(running=slow_prefix) == 1

        await until_async(slow_running)
        reconnects = sup.db.statistics().reconnects
        resets = proxy.reset()
        assert resets >= 1 and proxy.stats.resets >= resets
        assert await slow == f.tag_value
        mark = done
        await until(lambda: done > mark + 200)
        stop.set()
        await asyncio.gather(*readers)
        assert sup.state is State.CONNECTED
        # Connections reset while the server is up are replaced one by one: no outage.
        assert sup.db.statistics().reconnects == reconnects
    assert errors == []
    assert tags == {f.tag_value}  # every connection ran on_connect before serving a call
    states = rec.states()
    assert states[:2] == ["connecting", "connected"]
    assert states.count("reconnecting") == 1 and states[-2:] == ["connected", "closed"]
    assert len(rec.of(events.Disconnected)) == 1
    assert len(rec.of(events.Reconnected)) == 1
    assert rec.of(events.OperationReplayed)  # readers in flight were replayed, not failed


async def test_killed_during_insert_is_outcome_unknown(server_target: Target) -> None:
    """The app's connection killed mid-INSERT: OutcomeUnknown, never replayed."""
    f = server_target.faults
    await server_target.admin(f.ledger, "app")
    async with supervised(server_target.dsn, max_size=2) as sup:
        insert = asyncio.create_task(sup.db.execute(f.slow_insert, "op-1"))
        await asyncio.sleep(0.2)
        assert await server_target.kill_running("INSERT INTO ledger") == 1
        with pytest.raises(OutcomeUnknown) as info:
            await insert
        assert f.killed_mid_query(info.value.__cause__), info.value.__cause__
        assert sup.db.statistics().outcome_unknown == 1
        assert await sup.db.fetchval("SELECT COUNT(*) FROM ledger WHERE id = 'op-1'") <= 1


async def test_killed_idle_connection_is_replaced_before_writing(server_target: Target) -> None:
    """The idle connections killed: the next write goes through exactly once, unreplayed."""
    f = server_target.faults
    await server_target.admin(f.ledger, "app")
    async with supervised(server_target.dsn, min_size=2, max_size=2) as sup:
        before = await sup.db.fetchval(f.session_id)
        assert await server_target.kill_connections() == 2
        await asyncio.sleep(0.2)
        assert await sup.db.execute("INSERT INTO ledger VALUES ('op-2')") == f.inserted_one
        assert await sup.db.fetchval(f.session_id) != before
        assert await sup.db.fetchval("SELECT COUNT(*) FROM ledger WHERE id = 'op-2'") == 1
        st = sup.db.statistics()
        # The dead connections were dropped at acquire: nothing failed, nothing was replayed.
        assert (st.replays, st.outcome_unknown, st.reconnects) == (0, 0, 0)
        assert sup.state is State.CONNECTED


async def test_wrong_password_and_unknown_database_fail_fast(server_target: Target) -> None:
    """FAILED quickly, with the server's own error as the cause and no password in sight."""
    f, server = server_target.faults, server_target.throwaway
    if f.refusal_setup:
        await server_target.admin(f.refusal_setup)
    for dsn_args, is_cause in f.refusals:
        sup = supervised(server.dsn(**dsn_args), failed_probe_interval=60)
        started = time.monotonic()
        async with sup:
            assert sup.state is State.FAILED
            assert time.monotonic() - started < 2
            with pytest.raises(DatabaseUnavailable) as info:
                await sup.db.fetchval("SELECT 1")
            assert is_cause(info.value.__cause__), (dsn_args, info.value.__cause__)
            assert "wrong-pw" not in str(info.value)
    async with supervised(server.dsn(user=SECURE_USER, password=SECURE_PASSWORD)) as good:
        assert await good.db.fetchval(f.current_user) == f.secure_user


async def test_query_error_raised_unchanged_once(target: Target) -> None:
    """A statement's error reaches the caller as the driver's own, after one attempt, and the
    connection survives it."""
    threads = threading.active_count()
    f = target.faults
    counted = f.counted_failure()
    async with supervised(target.dsn, on_connect=counted.on_connect) as sup:
        for sql in counted.setup:
            await sup.db.execute(sql)
        with pytest.raises(Exception) as info:
            await sup.db.fetch("SELEC 1")
        assert f.syntax_error(info.value), info.value
        with pytest.raises(Exception) as info:
            await getattr(sup.db, counted.method)(counted.statement)
        assert counted.error(info.value), info.value
        assert await counted.attempts(sup) == 1
        assert sup.state is State.CONNECTED
        st = sup.db.statistics()
        assert (st.reconnects, st.replays) == (0, 0)
        assert st.pool.size == 1  # the connection survived every error
    await until(lambda: threading.active_count() <= threads, timeout=5)  # no worker left


async def test_blackhole_never_hangs_past_deadline(
    server_target: Target, proxy: FaultProxy
) -> None:
    """A silent partition: every call returns by its deadline; recovery after it heals."""
    sup = supervised(
        server_target.via(proxy),
        min_size=4,  # every call gets an established connection, so the write is sent
        max_size=4,
        connect_timeout=0.5,
        command_timeout=0.5,
        backoff=Backoff(initial=0.05, maximum=0.2),
    )
    async with sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        proxy.blackhole()
        started = time.monotonic()
        calls = [
            sup.db.fetchval("SELECT 1", timeout=1.5),
            sup.db.execute("SELECT 1", timeout=1.5),
            sup.db.execute("INSERT INTO nowhere VALUES (1)", timeout=1.5),
        ]
        results = await asyncio.gather(*calls, return_exceptions=True)
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, elapsed
        assert isinstance(results[0], DatabaseUnavailable)
        assert isinstance(results[1], DatabaseUnavailable)
        assert isinstance(results[2], OutcomeUnknown)
        assert isinstance(results[2].__cause__, TimeoutError)
        await until(lambda: sup.state is State.RECONNECTING, timeout=3)
        proxy.pass_through()
        assert await sup.db.fetchval("SELECT 1", timeout=5) == 1
        assert sup.state is State.CONNECTED


async def test_cancellation_leaks_no_connection_and_no_task(server_target: Target) -> None:
    """Cancel callers at many points: the server sees only the pool's connections."""
    f = server_target.faults
    sup = supervised(server_target.dsn, min_size=1, max_size=5, max_idle=None)
    async with sup:
        tasks_before = asyncio.all_tasks()
        for delay in [0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05]:
            calls = [asyncio.create_task(sup.db.fetchval(f.sleep)) for _ in range(15)]
            await asyncio.sleep(delay)
            for c in calls:
                c.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        # Cancelled callers hand their connections back in the background: bounded.
        await until(lambda: sup.db.statistics().pool.in_use == 0, timeout=5)
        await until(lambda: asyncio.all_tasks() <= tasks_before | {asyncio.current_task()})
        assert f.pool_quiet(adapter(sup))
        assert sup.db.statistics().waiting == 0
        size = sup.db.statistics().pool.size
        assert size <= 5

        # A cancelled caller's connection may be closed; its server session ends with its
        # statement.
        async def server_matches() -> bool:
            return await server_target.app_connections() == size

        await until_async(server_matches, timeout=5, interval=0.05)
        assert await sup.db.fetchval("SELECT 1") == 1

    async def all_closed() -> bool:
        return await server_target.app_connections() == 0

    await until_async(all_closed, timeout=5, interval=0.05)
