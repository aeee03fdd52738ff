"""Fault scenarios against a real, throwaway PostgreSQL server (the issue's tests 1 to 7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from harness.polling import until
from harness.servers import SECURE_PASSWORD, SECURE_USER, PostgresServer
from resilientdb import (
    Backoff,
    DatabaseUnavailable,
    OutcomeUnknown,
    State,
    Supervisor,
    events,
)
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

pytestmark = pytest.mark.slow


@pytest.fixture
async def proxy(pg: PostgresServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(pg.host, pg.port) as p:
        yield p


def via(proxy: FaultProxy, dsn: str) -> str:
    return with_host(parse_dsn(dsn), proxy.host, proxy.port)


class Recorder:
    def __init__(self, sup: Supervisor) -> None:
        self.events: list[events.Event] = []
        sup.on(events.Event, self.events.append)

    def of(self, kind: type[events.Event]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def states(self) -> list[str]:
        return [e.new.value for e in self.of(events.StateChanged)]


async def test_readers_ride_out_restart_and_reset(pg: PostgresServer, proxy: FaultProxy) -> None:
    """Test 1: 50 readers loop through a fast restart and a reset of every connection."""
    paths: list[str] = []

    async def on_connect(conn: Any) -> None:
        await conn.execute("SET search_path TO app_schema, public")

    sup = Supervisor(via(proxy, pg.dsn()), max_size=10, on_connect=on_connect)
    rec = Recorder(sup)
    errors: list[BaseException] = []
    done = 0
    stop = asyncio.Event()

    async def reader() -> None:
        nonlocal done
        while not stop.is_set():
            try:
                paths.append(await sup.db.fetchval("SHOW search_path"))
                done += 1
            except Exception as exc:  # any error reaching a reader fails the test
                errors.append(exc)
            await asyncio.sleep(0.005)

    async with sup:
        readers = [asyncio.create_task(reader()) for _ in range(50)]
        await until(lambda: done > 200)
        old_pid = pg.pid
        await asyncio.to_thread(pg.restart, "fast")
        assert pg.pid != old_pid  # the server really restarted
        mark = done
        await until(lambda: done > mark + 200)
        assert sup.db.statistics().reconnects >= 1
        reconnects = sup.db.statistics().reconnects
        resets = proxy.reset()
        assert resets >= 1 and proxy.stats.resets >= resets
        mark = done
        await until(lambda: done > mark + 200)
        stop.set()
        await asyncio.gather(*readers)
        assert sup.state is State.CONNECTED
        # Connections reset while the server is up are replaced one by one: no outage.
        assert sup.db.statistics().reconnects == reconnects
    assert errors == []
    assert set(paths) == {"app_schema, public"}  # on_connect ran again on every new connection
    states = rec.states()
    assert states[:2] == ["connecting", "connected"]
    assert states.count("reconnecting") == 1 and states[-2:] == ["connected", "closed"]
    assert len(rec.of(events.Disconnected)) == 1
    assert len(rec.of(events.Reconnected)) == 1
    assert rec.of(events.OperationReplayed)  # readers in flight were replayed, not failed


async def test_outage_longer_than_gate_timeout(pg: PostgresServer) -> None:
    """Test 2: DatabaseUnavailable at the deadline, then the same supervisor recovers."""
    sup = Supervisor(pg.dsn(), gate_timeout=1.0, connect_timeout=1.0)
    async with sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        await asyncio.to_thread(pg.stop, "immediate")
        started = time.monotonic()
        results = await asyncio.gather(
            *(sup.db.fetchval("SELECT 1") for _ in range(10)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        assert 0.9 <= elapsed < 2.0  # at the deadline: not earlier, not hung
        assert all(isinstance(r.__cause__, OSError) for r in results if isinstance(r, Exception))
        await asyncio.to_thread(pg.start)
        assert await sup.db.fetchval("SELECT 1", timeout=10) == 1
        assert sup.state is State.CONNECTED


async def _prepare_ledger(pg: PostgresServer) -> None:
    await asyncio.to_thread(
        pg.admin_query,
        "DROP TABLE IF EXISTS ledger; CREATE TABLE ledger (id text PRIMARY KEY);"
        "ALTER TABLE ledger OWNER TO app;",
        "app",
    )


async def test_terminated_backend_during_insert_is_outcome_unknown(pg: PostgresServer) -> None:
    """Test 3: a write cut off mid-flight raises OutcomeUnknown and is never replayed."""
    await _prepare_ledger(pg)
    sup = Supervisor(pg.dsn(), max_size=2)
    async with sup:
        insert = asyncio.create_task(
            sup.db.execute("INSERT INTO ledger SELECT $1 FROM pg_sleep(0.5)", "op-1")
        )
        await asyncio.sleep(0.2)
        killed = await asyncio.to_thread(
            pg.admin_query,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE usename = 'app' AND query LIKE 'INSERT INTO ledger%'",
        )
        assert killed == "1"
        with pytest.raises(OutcomeUnknown) as info:
            await insert
        assert isinstance(info.value.__cause__, asyncpg.ConnectionDoesNotExistError)
        assert sup.db.statistics().outcome_unknown == 1
        count = await sup.db.fetchval("SELECT count(*) FROM ledger WHERE id = 'op-1'")
        assert count <= 1


async def test_terminated_idle_connection_is_replaced_transparently(pg: PostgresServer) -> None:
    """Test 3, idle half: the next write goes through, exactly once."""
    await _prepare_ledger(pg)
    sup = Supervisor(pg.dsn(), min_size=2, max_size=2)
    async with sup:
        before = await sup.db.fetchval("SELECT pg_backend_pid()")
        await asyncio.to_thread(
            pg.admin_query,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
        )
        await asyncio.sleep(0.2)
        await sup.db.execute("INSERT INTO ledger VALUES ('op-2')")
        after = await sup.db.fetchval("SELECT pg_backend_pid()")
        assert after != before
        assert await sup.db.fetchval("SELECT count(*) FROM ledger WHERE id = 'op-2'") == 1


async def test_wrong_password_and_unknown_database_fail_fast(pg: PostgresServer) -> None:
    """Test 4: FAILED quickly with the server's error as the cause."""
    cases = [
        (pg.dsn(user=SECURE_USER, password="wrong-pw"), asyncpg.InvalidPasswordError),
        (pg.dsn(database="no_such_db"), asyncpg.InvalidCatalogNameError),
    ]
    for dsn, cause in cases:
        sup = Supervisor(dsn, failed_probe_interval=60)
        started = time.monotonic()
        async with sup:
            assert sup.state is State.FAILED
            assert time.monotonic() - started < 2
            with pytest.raises(DatabaseUnavailable) as info:
                await sup.db.fetchval("SELECT 1")
            assert isinstance(info.value.__cause__, cause)
            assert "wrong-pw" not in str(info.value)
    good = Supervisor(pg.dsn(user=SECURE_USER, password=SECURE_PASSWORD))
    async with good:
        assert await good.db.fetchval("SELECT current_user") == SECURE_USER


async def test_query_error_raised_unchanged_once(pg: PostgresServer) -> None:
    """Test 4: a statement error reaches the caller as asyncpg's own, after one attempt."""
    await asyncio.to_thread(
        pg.admin_query,
        "DROP SEQUENCE IF EXISTS attempts; CREATE SEQUENCE attempts; "
        "ALTER SEQUENCE attempts OWNER TO app;",
        "app",
    )
    sup = Supervisor(pg.dsn())
    async with sup:
        with pytest.raises(asyncpg.PostgresSyntaxError):
            await sup.db.fetch("SELEC 1")
        with pytest.raises(asyncpg.DivisionByZeroError):
            # nextval runs, then the division fails: the sequence counts the attempts.
            await sup.db.fetchval("SELECT nextval('attempts') / 0")
        assert await sup.db.fetchval("SELECT last_value FROM attempts") == 1
        assert sup.state is State.CONNECTED
        assert sup.db.statistics().reconnects == 0 and sup.db.statistics().replays == 0


async def test_blackhole_never_hangs_past_deadline(pg: PostgresServer, proxy: FaultProxy) -> None:
    """Test 5: a silent partition; every call returns by its deadline; recovery after."""
    sup = Supervisor(
        via(proxy, pg.dsn()),
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
        await until(lambda: sup.state is State.RECONNECTING, timeout=3)
        proxy.pass_through()
        assert await sup.db.fetchval("SELECT 1", timeout=5) == 1
        assert sup.state is State.CONNECTED


async def test_waiting_callers_do_not_multiply_connection_attempts(
    pg: PostgresServer, proxy: FaultProxy
) -> None:
    """Test 6: 200 callers through a 3 s outage: attempts follow backoff steps, not callers."""
    sup = Supervisor(via(proxy, pg.dsn()), max_size=10)
    async with sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        await asyncio.to_thread(pg.stop, "fast")
        proxy.reset_stats()
        calls = [asyncio.create_task(sup.db.fetchval("SELECT 1")) for _ in range(200)]
        await asyncio.sleep(3.0)
        during_outage = proxy.connection_attempts
        await asyncio.to_thread(pg.start)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results == [1] * 200
    # Backoff 50 ms doubling to 1 s: about 7 probes in 3 s, plus at most the pool's
    # connections (10) that tried before the outage was noticed. 200 callers would be 200+.
    print(f"connection attempts during a 3 s outage with 200 callers: {during_outage}")
    assert 3 <= during_outage <= 20


async def test_cancellation_leaks_no_connection_and_no_task(pg: PostgresServer) -> None:
    """Test 7: cancel callers at many points; the server sees only the pool's connections."""
    sup = Supervisor(pg.dsn(), min_size=1, max_size=5, max_idle=None)
    async with sup:
        tasks_before = asyncio.all_tasks()
        for delay in [0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05]:
            calls = [
                asyncio.create_task(sup.db.fetchval("SELECT pg_sleep(0.03)")) for _ in range(15)
            ]
            await asyncio.sleep(delay)
            for c in calls:
                c.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        # Cancelled callers hand their connections back in the background: bounded.
        await until(lambda: sup.db.statistics().pool.in_use == 0, timeout=5)
        await until(lambda: asyncio.all_tasks() <= tasks_before | {asyncio.current_task()})
        server_side = int(
            await asyncio.to_thread(
                pg.admin_query, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
            )
        )
        assert server_side == sup.db.statistics().pool.size <= 5
        assert sup.db.statistics().waiting == 0
        assert await sup.db.fetchval("SELECT 1") == 1
    await until(
        lambda: (
            pg.admin_query("SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'") == "0"
        ),
        timeout=5,
    )
