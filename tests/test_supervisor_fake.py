"""The supervisor, the gate and the replay rules, driven by the scripted fake backend."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import resilientdb.testing.fake  # noqa: F401  (registers fake://)
from harness.polling import until
from resilientdb import (
    Backoff,
    DatabaseUnavailable,
    Options,
    OutcomeUnknown,
    Overloaded,
    State,
    Supervisor,
    SupervisorClosed,
    events,
)
from resilientdb._monitor import Monitor
from resilientdb.config import parse_dsn
from resilientdb.events import EventBus
from resilientdb.testing.fake import (
    FakeBackend,
    FakeConnectionLost,
    FakeNotSent,
    FakePermanent,
    FakeRetryable,
)
from tests.handles import Recorder, adapter, supervised

FAST = Backoff(initial=0.005, maximum=0.02, jitter=0.0)


def make(**options: Any) -> tuple[Supervisor, FakeBackend]:
    options.setdefault("backoff", FAST)
    options.setdefault("failed_probe_interval", 0.05)
    sup = supervised("fake://db", **options)
    backend = adapter(sup)
    assert isinstance(backend, FakeBackend)
    return sup, backend


async def test_start_connects_and_calls_pass() -> None:
    sup, backend = make()
    rec = Recorder(sup)
    async with sup:
        assert sup.state is State.CONNECTED
        assert await sup.db.fetchval("SELECT 1") == 1
        assert await sup.db.execute("UPDATE t SET x = 1") == "OK"
    assert sup.state is State.CLOSED and backend.closed
    assert rec.states() == ["connecting", "connected", "closed"]
    assert len(rec.of(events.Connected)) == 1


async def test_calls_before_start_and_after_close_fail_fast() -> None:
    sup, _ = make()
    with pytest.raises(SupervisorClosed, match="not started"):
        await sup.db.fetchval("SELECT 1")
    async with sup:
        pass
    with pytest.raises(SupervisorClosed, match="closed"):
        await sup.db.fetchval("SELECT 1")
    with pytest.raises(SupervisorClosed):
        await sup.start()


async def test_starting_while_down_waits_at_the_gate_then_succeeds() -> None:
    sup, backend = make()
    backend.up = False
    async with sup:
        assert sup.state is State.RECONNECTING
        call = asyncio.create_task(sup.db.fetchval("SELECT 1"))
        await until(lambda: sup.db.statistics().waiting == 1)
        await asyncio.sleep(0.05)
        backend.up = True
        assert await call == 1
        assert sup.state is State.CONNECTED
        waited = sup.stats()["default"]["db.client.connection.wait_time"]
        assert waited["count"] == 1 and waited["sum"] >= 0.04


async def test_read_replayed_after_connection_lost_once_reconnected() -> None:
    sup, backend = make()
    rec = Recorder(sup)
    async with sup:
        backend.fail_next(FakeConnectionLost("closed in the middle"), sent=True)
        backend.connect_outcomes.append(ConnectionRefusedError("down"))  # the check's probe
        assert await sup.db.fetch("SELECT * FROM t") == [1]
        assert backend.refreshes == 1  # the old pool generation was retired
        await asyncio.sleep(0.01)
    assert rec.states() == ["connecting", "connected", "reconnecting", "connected", "closed"]
    [replayed] = rec.of(events.OperationReplayed)
    assert replayed.operation == "fetch" and replayed.replay == 1
    assert len(rec.of(events.Disconnected)) == 1 and len(rec.of(events.Reconnected)) == 1
    assert sup.stats()["default"]["replays"] == 1


async def test_one_lost_connection_is_no_outage_when_the_server_answers() -> None:
    sup, backend = make()
    rec = Recorder(sup)
    async with sup:
        backend.fail_next(FakeConnectionLost("closed in the middle"), sent=True)
        assert await sup.db.fetch("SELECT * FROM t") == [1]
        assert backend.probes == 1  # the check: the server answers, so nothing is retired
        assert backend.refreshes == 0 and sup.db.statistics().reconnects == 0
        await asyncio.sleep(0.01)
    assert rec.states() == ["connecting", "connected", "closed"]
    assert not rec.of(events.Disconnected)
    [replayed] = rec.of(events.OperationReplayed)
    assert replayed.operation == "fetch"


@pytest.mark.parametrize(
    ("query", "idempotent", "sent", "replayed"),
    [
        ("INSERT INTO t VALUES (1)", None, True, False),
        ("INSERT INTO t VALUES (1)", True, True, True),
        ("SELECT nextval('s')", False, True, False),
        ("SELECT 1", None, True, True),
        ("INSERT INTO t VALUES (1)", None, False, True),  # never reached the wire
        ("INSERT INTO t VALUES (1)", False, False, True),
    ],
)
async def test_replay_rules(
    query: str, idempotent: bool | None, sent: bool, replayed: bool
) -> None:
    sup, backend = make()
    async with sup:
        exc = FakeConnectionLost("lost") if sent else FakeNotSent("connection is closed")
        backend.fail_next(exc, sent=sent)
        if replayed:
            await sup.db.execute(query, idempotent=idempotent)
        else:
            with pytest.raises(OutcomeUnknown) as info:
                await sup.db.execute(query, idempotent=idempotent)
            assert info.value.__cause__ is exc
        runs = [q for _, q in backend.executed if q == query]
        assert len(runs) == (2 if replayed and sent else 1)
        assert sup.stats()["default"]["outcome_unknown"] == (0 if replayed else 1)


async def test_executemany_replayed_only_if_unsent_or_idempotent() -> None:
    sup, backend = make()
    async with sup:
        backend.fail_next(FakeConnectionLost("lost"))
        with pytest.raises(OutcomeUnknown):
            await sup.db.executemany("SELECT 1", [(1,), (2,)])  # batch: never judged by keyword
        backend.fail_next(FakeNotSent("connection is closed"), sent=False)
        await sup.db.executemany("INSERT INTO t VALUES ($1)", [(1,)])
        backend.fail_next(FakeConnectionLost("lost"))
        await sup.db.executemany("INSERT INTO t VALUES ($1)", [(1,)], idempotent=True)


async def test_query_error_raised_unchanged_after_one_attempt() -> None:
    sup, backend = make()
    async with sup:
        err = SyntaxError("syntax error at or near SELEC")
        backend.fail_next(err)
        with pytest.raises(SyntaxError) as info:
            await sup.db.fetch("SELEC 1")
        assert info.value is err
        assert backend.executed == [("fetch", "SELEC 1")]
        assert sup.state is State.CONNECTED and backend.refreshes == 0


async def test_retryable_error_replays_even_a_write() -> None:
    sup, backend = make()
    async with sup:
        backend.fail_next(FakeRetryable("deadlock detected"))
        assert await sup.db.execute("UPDATE t SET x = 1") == "OK"
        assert sup.state is State.CONNECTED


async def test_replays_are_bounded() -> None:
    sup, backend = make(max_replays=2)
    async with sup:
        for _ in range(5):
            backend.fail_next(FakeRetryable("deadlock detected"))
        with pytest.raises(DatabaseUnavailable, match="2 replays") as info:
            await sup.db.fetch("SELECT 1")
        assert isinstance(info.value.__cause__, FakeRetryable)
        assert len(backend.executed) == 3


async def test_gate_deadline_raises_database_unavailable_on_time() -> None:
    sup, backend = make(gate_timeout=0.3)
    backend.up = False
    async with sup:
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="deadline") as info:
            await sup.db.fetchval("SELECT 1")
        assert 0.28 <= time.monotonic() - t0 < 0.6
        assert isinstance(info.value.__cause__, ConnectionRefusedError)
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            await sup.db.fetchval("SELECT 1", timeout=0.1)  # the call's own timeout wins
        assert time.monotonic() - t0 < 0.25
        backend.up = True
        await sup.wait_until_connected(timeout=1)
        assert await sup.db.fetchval("SELECT 1") == 1


async def test_permanent_error_fails_fast_and_heals_with_slow_probe() -> None:
    sup, backend = make(failed_probe_interval=0.1)
    backend.permanent = True
    rec = Recorder(sup)
    async with sup:
        assert sup.state is State.FAILED
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="failed") as info:
            await sup.db.fetchval("SELECT 1")
        assert time.monotonic() - t0 < 0.05
        assert isinstance(info.value.__cause__, FakePermanent)
        probes = backend.opens
        await asyncio.sleep(0.35)
        assert 2 <= backend.opens - probes <= 5  # slow probing, not a hot loop
        backend.permanent = False
        await sup.wait_until_connected(timeout=1)
        assert await sup.db.fetchval("SELECT 1") == 1
    [failed] = rec.of(events.ReconnectFailed)
    assert failed.permanent


async def test_max_attempts_gives_up_into_failed() -> None:
    sup, backend = make(max_attempts=3, failed_probe_interval=10)
    async with sup:
        backend.up = False
        backend.fail_next(FakeConnectionLost("lost"))
        with pytest.raises(DatabaseUnavailable):
            await sup.db.fetchval("SELECT 1")
        assert sup.state is State.FAILED
        assert backend.probes == 3


async def test_max_downtime_gives_up_into_failed() -> None:
    sup, backend = make(max_downtime=0.1, failed_probe_interval=10)
    async with sup:
        backend.up = False
        backend.fail_next(FakeConnectionLost("lost"))
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            await sup.db.fetchval("SELECT 1")
        assert 0.09 <= time.monotonic() - t0 < 0.5
        assert sup.state is State.FAILED


async def test_overloaded_past_max_waiters() -> None:
    sup, backend = make(max_waiters=2)
    backend.up = False
    async with sup:
        waiting = [asyncio.create_task(sup.db.fetchval("SELECT 1")) for _ in range(2)]
        await until(lambda: sup.db.statistics().waiting == 2)
        with pytest.raises(Overloaded):
            await sup.db.fetchval("SELECT 1")
        backend.up = True
        assert await asyncio.gather(*waiting) == [1, 1]


async def test_close_wakes_waiters_with_supervisor_closed() -> None:
    sup, backend = make()
    backend.up = False
    await sup.start()
    waiting = [asyncio.create_task(sup.db.fetchval("SELECT 1")) for _ in range(5)]
    await until(lambda: sup.db.statistics().waiting == 5)
    await sup.aclose()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, SupervisorClosed) for r in results)


async def test_one_reconnect_loop_however_many_callers() -> None:
    sup, backend = make(backoff=Backoff(initial=0.02, maximum=0.05, jitter=0))
    async with sup:
        backend.up = False
        for _ in range(200):
            backend.fail_next(FakeNotSent("connection is closed"), sent=False)
        calls = [asyncio.create_task(sup.db.fetchval("SELECT 1")) for _ in range(200)]
        await asyncio.sleep(0.3)
        backend.failures.clear()
        backend.up = True
        assert await asyncio.gather(*calls) == [1] * 200
        # 0.3 s of outage at 20 ms doubling to 50 ms: a handful of probes, not 200.
        assert 3 <= backend.probes <= 10
        assert backend.refreshes == 1


async def test_stale_generation_does_not_start_a_second_outage() -> None:
    # The monitor alone (the unit under test): reports carry the generation they saw.
    options = Options.build(backoff=FAST, failed_probe_interval=0.05)
    backend = FakeBackend(parse_dsn("fake://db"), options)
    monitor = Monitor("default", backend, options, EventBus())
    monitor.start()
    try:
        await monitor.wait_first_attempt(1.0)
        old = monitor.generation
        backend.connect_outcomes.append(ConnectionRefusedError("down"))  # the check fails
        monitor.report_lost(old, FakeConnectionLost("x"), "fetch")
        assert monitor.checking
        await monitor.settled(None)
        assert monitor.state is State.RECONNECTING
        await until(lambda: monitor.state is State.CONNECTED)
        assert monitor.generation == old + 1
        monitor.report_lost(old, FakeConnectionLost("late"), "fetch")
        await asyncio.sleep(0.01)
        assert monitor.state is State.CONNECTED and backend.refreshes == 1
        assert backend.probes == 2  # the check and the reconnect: the late report made none
    finally:
        await monitor.aclose()


async def test_cancelling_waiters_leaves_nothing_behind() -> None:
    sup, backend = make()
    backend.up = False
    async with sup:
        before = asyncio.all_tasks()
        for delay in (0, 0.001, 0.005, 0.02):
            tasks = [asyncio.create_task(sup.db.fetchval("SELECT 1")) for _ in range(20)]
            await asyncio.sleep(delay)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            assert sup.db.statistics().waiting == 0
        assert asyncio.all_tasks() == before
        backend.up = True
        backend.delay = 0.05
        await sup.wait_until_connected(timeout=1)
        task = asyncio.create_task(sup.db.fetchval("SELECT pg_sleep(1)"))
        await until(lambda: backend.in_use == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert backend.in_use == 0  # the connection went back


async def test_statement_timeout_is_suspect_not_an_outage() -> None:
    sup, backend = make()
    async with sup:
        backend.delay = 0.2
        with pytest.raises(OutcomeUnknown):
            await sup.db.execute("UPDATE t SET x = 1", timeout=0.05)
        with pytest.raises(DatabaseUnavailable, match="deadline"):
            await sup.db.fetchval("SELECT 1", timeout=0.05)
        await until(lambda: backend.probes >= 1)  # checked in the background
        assert sup.state is State.CONNECTED and backend.refreshes == 0
        assert sup.stats()["default"]["db.client.connection.timeouts"] == 2


async def test_event_handlers_sync_async_and_failing_are_isolated() -> None:
    sup, _backend = make()
    got: list[str] = []

    def broken(e: events.Event) -> None:
        raise RuntimeError("handler bug")

    async def slow(e: events.StateChanged) -> None:
        await asyncio.sleep(0)
        got.append("async:" + e.new.value)

    sup.on(events.StateChanged, broken)
    sup.on(events.StateChanged, slow)
    sup.on(events.StateChanged, lambda e: got.append("sync:" + e.new.value))
    async with sup:
        assert await sup.db.fetchval("SELECT 1") == 1
    assert got == [
        "async:connecting",
        "sync:connecting",
        "async:connected",
        "sync:connected",
        "async:closed",
        "sync:closed",
    ]


async def test_on_error_receives_handled_errors() -> None:
    seen: list[events.ErrorOccurred] = []
    sup = supervised("fake://db", backoff=FAST, on_error=seen.append)
    backend = adapter(sup)
    assert isinstance(backend, FakeBackend)
    async with sup:
        backend.fail_next(FakeConnectionLost("lost mid-flight"))
        await sup.db.fetch("SELECT 1")
        await asyncio.sleep(0.01)
    assert [e.error_type for e in seen] == ["FakeConnectionLost"]
    assert isinstance(seen[0].error, FakeConnectionLost)


async def test_commit_lost_before_or_after_sending() -> None:
    sup, backend = make()
    async with sup:
        runs = 0

        async def unsent_commit(tx: Any) -> None:
            nonlocal runs
            runs += 1
            await tx.execute("UPDATE t SET x = 1")
            if runs == 1:  # the next statement is COMMIT: found closed before it was written
                backend.fail_next(FakeNotSent("connection is closed"), sent=False)

        await sup.db.run_in_transaction(unsent_commit)
        assert runs == 2  # rolled back for sure, so the whole callable ran again

        async def lost_commit(tx: Any) -> None:
            await tx.execute("UPDATE t SET x = 2")
            backend.fail_next(FakeConnectionLost("closed in the middle of COMMIT"))

        with pytest.raises(OutcomeUnknown):
            await sup.db.run_in_transaction(lost_commit)
        assert sup.stats()["default"]["outcome_unknown"] == 1


async def test_failed_probes_ramp_up_to_the_slow_interval() -> None:
    sup, backend = make(failed_probe_interval=0.4, backoff=Backoff(initial=0.02, maximum=0.05))
    backend.permanent = True
    async with sup:
        assert sup.state is State.FAILED
        await asyncio.sleep(0.45)
        early = backend.opens  # after 100 and 200 ms: a short glitch heals fast
        assert early >= 3
        await asyncio.sleep(0.8)
        assert backend.opens - early <= 3  # ...then no more often than every 0.4 s
        backend.permanent = False
        await sup.wait_until_connected(timeout=1)


async def test_downtime_counts_from_the_first_failed_call() -> None:
    # The check's probe hangs 0.3 s before failing (a server gone quiet): the outage began
    # when the call failed, not when the probe's verdict came in.
    sup, backend = make()
    rec = Recorder(sup)
    async with sup:
        backend.connect_delay = 0.3
        backend.fail_next(FakeConnectionLost("closed in the middle"), sent=True)
        backend.connect_outcomes.append(ConnectionRefusedError("down"))
        started = time.monotonic()
        assert await sup.db.fetch("SELECT * FROM t") == [1]
        elapsed = time.monotonic() - started
        await asyncio.sleep(0.01)
    [back] = rec.of(events.Reconnected)
    assert 0.58 <= back.downtime <= elapsed + 0.01
