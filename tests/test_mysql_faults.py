"""MariaDB through the supervisor, on a real throwaway server: what only the MySQL adapter
does (its own pool's generations, slots, keepalive and lifetime, command_timeout, transactions,
1040 too many connections, multi-statements). The fault behaviours every server backend shares
(a restart and a reset, KILL mid-INSERT and while idle, refused connects, query errors, a
blackhole, cancellation) are in ``tests/backends/test_faults.py``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiomysql
import pytest
from pymysql import err as myerr

from harness.polling import until
from harness.servers import MariaDBServer
from resilientdb import (
    Backoff,
    DatabaseUnavailable,
    OutcomeUnknown,
    State,
    Supervisor,
    events,
)
from resilientdb.backends.mysql import MySQLBackend
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy
from tests.handles import Recorder, adapter, supervised


@pytest.fixture
async def proxy(mariadb: MariaDBServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(mariadb.host, mariadb.port) as p:
        yield p


def via(proxy: FaultProxy, dsn: str) -> str:
    return with_host(parse_dsn(dsn), proxy.host, proxy.port)


def pool(sup: Supervisor) -> MySQLBackend:
    backend = adapter(sup)
    assert isinstance(backend, MySQLBackend)
    return backend


async def admin(server: MariaDBServer, sql: str, database: str | None = None) -> str:
    return await asyncio.to_thread(server.admin_query, sql, database)


async def test_rows_and_statuses(mariadb: MariaDBServer) -> None:
    """The uniform API on MariaDB: Row shape, rowcounts, %s parameters, multi-statements."""
    await admin(
        mariadb, "DROP TABLE IF EXISTS shape; CREATE TABLE shape (id int, name text)", "app"
    )
    async with supervised(mariadb.dsn()) as sup:
        db = sup.db
        assert (
            await db.executemany("INSERT INTO shape VALUES (%s, %s)", [(1, "a"), (2, "b")]) is None
        )
        assert await db.execute("UPDATE shape SET name = %s WHERE id > %s", "z", 1) == 1
        rows = await db.fetch("SELECT id, name FROM shape ORDER BY id")
        assert [dict(r) for r in rows] == [{"id": 1, "name": "a"}, {"id": 2, "name": "z"}]
        row = await db.fetchrow("SELECT id, name FROM shape WHERE id = %s", 2)
        assert row is not None and (row[0], row["name"], len(row)) == (2, "z", 2)
        assert await db.fetchrow("SELECT id FROM shape WHERE id = 99") is None
        assert await db.fetchval("SELECT id, name FROM shape WHERE id = 1", column=1) == "a"
        assert await db.fetchval("SELECT '100%'") == "100%"  # no formatting without arguments
        assert await db.fetchval("SELECT 1/0") is None  # a warning, not an error
        async with db.acquire() as raw:
            assert isinstance(raw, aiomysql.Connection) and raw.get_autocommit()
            sock = raw._writer.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_USER_TIMEOUT"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 30_000


async def test_pool_retires_generation_and_bounds_acquire(mariadb: MariaDBServer) -> None:
    """refresh() retires live connections too (in use: on release); acquire is bounded."""
    async with supervised(mariadb.dsn(), min_size=2, max_size=2) as sup:
        backend = pool(sup)
        async with sup.db.acquire() as held:
            await backend.refresh()
            assert backend.stats().idle == 0 and backend.stats().in_use == 1
            assert await held.ping(reconnect=False) is None  # still usable until released
        assert held.closed and backend.stats().size == 0
        assert await sup.db.fetchval("SELECT 1") == 1
        async with sup.db.acquire(), sup.db.acquire():
            started = time.monotonic()
            with pytest.raises(DatabaseUnavailable):
                await sup.db.fetchval("SELECT 1", timeout=0.3)
            assert time.monotonic() - started < 1.5
        assert backend.stats().size == 2 and backend._pool._slots == 0
        assert await sup.db.fetchval("SELECT 1") == 1


async def test_command_timeout_bounds_calls_without_timeout(mariadb: MariaDBServer) -> None:
    """A call with no timeout= is still bounded, by the backend's command_timeout."""
    async with supervised(mariadb.dsn(), command_timeout=0.3) as sup:
        started = time.monotonic()
        with pytest.raises(OutcomeUnknown) as info:
            await sup.db.execute("DO SLEEP(3)")
        assert isinstance(info.value.__cause__, TimeoutError)
        assert time.monotonic() - started < 2
        assert await sup.db.fetchval("SELECT 1") == 1


async def test_transactions(mariadb: MariaDBServer) -> None:
    """db.transaction() on MariaDB: commit, rollback, read-only, isolation, pooled after."""
    await _prepare_ledger(mariadb)
    async with supervised(mariadb.dsn(), min_size=1, max_size=1) as sup:
        db = sup.db
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO ledger VALUES (%s)", "t-1")
            assert await tx.fetchval("SELECT COUNT(*) FROM ledger") == 1
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO ledger VALUES (%s)", "t-2")
                raise RuntimeError("abandon")
        with pytest.raises(myerr.OperationalError) as info:
            async with db.transaction(readonly=True) as tx:
                await tx.execute("INSERT INTO ledger VALUES (%s)", "t-3")
        assert info.value.args[0] == 1792  # cannot write in a READ ONLY transaction
        async with db.transaction(isolation="serializable") as tx:
            assert await tx.fetchval("SELECT COUNT(*) FROM ledger") == 1
        # SET TRANSACTION (no SESSION) applied to that transaction only.
        assert await db.fetchval("SELECT @@tx_isolation") == "REPEATABLE-READ"
        async with db.acquire() as raw:  # the escape hatch, left inside a transaction
            await raw.begin()
            async with raw.cursor() as cur:
                await cur.execute("INSERT INTO ledger VALUES ('t-4')")
        assert raw.closed  # not pooled: the server rolled the transaction back
        async with db.acquire() as raw:
            await raw.autocommit(False)
        assert raw.closed  # a pooled statement would otherwise never commit
        assert [r["id"] for r in await db.fetch("SELECT id FROM ledger")] == ["t-1"]
        assert pool(sup).stats().size == 1  # one connection served all of it
        assert (
            await db.run_in_transaction(lambda tx: tx.fetchval("SELECT COUNT(*) FROM ledger")) == 1
        )


async def test_keepalive_trim_and_lifetime(mariadb: MariaDBServer, proxy: FaultProxy) -> None:
    """maintain() finds idle connections killed or cut off; trim_idle; max_lifetime."""
    sup = supervised(
        via(proxy, mariadb.dsn()),
        min_size=2,
        max_size=3,
        connect_timeout=0.3,
        keepalive_interval=None,  # maintain() is called by the test, not the monitor
        max_lifetime=None,
    )
    backend = pool(sup)
    async with sup:
        ids = (
            await admin(mariadb, "SELECT id FROM information_schema.processlist WHERE user = 'app'")
        ).split()
        await admin(mariadb, f"KILL {ids[0]}")
        await asyncio.sleep(0.2)
        assert await backend.maintain() == 1 and backend.stats().size == 1
        assert await backend.maintain() == 0 and backend.stats().size == 2  # topped up
        async with sup.db.acquire(), sup.db.acquire(), sup.db.acquire():
            pass
        assert backend.stats().idle == 3
        assert await backend.trim_idle() == 1 and backend.stats().size == 2
        proxy.blackhole()  # a half-open socket: only a ping can tell
        started = time.monotonic()
        assert await backend.maintain() == 2
        assert time.monotonic() - started < 2 and backend.stats().size == 0
        proxy.pass_through()
    sup = supervised(mariadb.dsn(), min_size=1, max_size=1, max_lifetime=0.3, lifetime_jitter=0)
    async with sup:
        first = await sup.db.fetchval("SELECT CONNECTION_ID()")
        await asyncio.sleep(0.5)  # the monitor's maintenance retires it meanwhile
        assert await sup.db.fetchval("SELECT CONNECTION_ID()") != first
        assert pool(sup).stats().size == 1


async def _prepare_ledger(server: MariaDBServer) -> None:
    await admin(
        server,
        "DROP TABLE IF EXISTS ledger; CREATE TABLE ledger (id varchar(20) PRIMARY KEY)",
        "app",
    )


async def test_sigkill_then_start_callers_wait_and_succeed(mariadb: MariaDBServer) -> None:
    """A crash: callers wait at the gate and succeed once the server is back."""
    async with supervised(mariadb.dsn(), max_size=5) as sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        await asyncio.to_thread(mariadb.kill)
        calls = [asyncio.create_task(sup.db.fetchval("SELECT 1", timeout=60)) for _ in range(20)]
        await until(lambda: sup.state is State.RECONNECTING, timeout=5)
        await asyncio.sleep(0.3)
        assert not any(c.done() for c in calls)
        await asyncio.to_thread(mariadb.start)
        assert await asyncio.gather(*calls) == [1] * 20
        assert sup.state is State.CONNECTED


async def test_too_many_connections_is_transient(mariadb: MariaDBServer) -> None:
    """1040: the supervisor keeps reconnecting (not FAILED) and connects once a slot frees."""
    hogs: list[Any] = []
    await admin(mariadb, "SET GLOBAL max_connections = 10")  # MariaDB's minimum
    try:
        for _ in range(20):
            try:
                hogs.append(
                    await aiomysql.connect(
                        host=mariadb.host, port=mariadb.port, user="app", db="app"
                    )
                )
            except myerr.OperationalError as exc:
                assert exc.args[0] == 1040
                break
        else:
            pytest.fail("max_connections was never reached")
        sup = supervised(mariadb.dsn(), backoff=Backoff(initial=0.05, maximum=0.2))
        rec = Recorder(sup)
        async with sup:
            await asyncio.sleep(0.5)
            assert sup.state is State.RECONNECTING
            assert not rec.of(events.ReconnectFailed)
            seen = [e.error for e in rec.of(events.ErrorOccurred)]
            assert seen and all(getattr(e, "args", [None])[0] == 1040 for e in seen)
            hogs.pop().close()
            assert await sup.db.fetchval("SELECT 1", timeout=10) == 1
            assert sup.state is State.CONNECTED
    finally:
        for hog in hogs:
            hog.close()
        await admin(mariadb, "SET GLOBAL max_connections = 200")


async def test_multi_statement_and_client_errors_raised_once(mariadb: MariaDBServer) -> None:
    """A multi-statement call that failed part way is OutcomeUnknown; a duplicate key and a
    wrong argument count reach the caller as they are, after one attempt. (A syntax error
    and a counted failure on every backend: tests/backends/test_faults.py.)"""
    await admin(
        mariadb,
        "DROP TABLE IF EXISTS attempts; CREATE TABLE attempts (n int AUTO_INCREMENT PRIMARY KEY)",
        "app",
    )
    async with supervised(mariadb.dsn()) as sup:
        # The INSERT runs and commits, then the second statement fails: part of the call
        # was applied, which only OutcomeUnknown says. The table counts the attempts.
        with pytest.raises(OutcomeUnknown) as unknown:
            await sup.db.execute("INSERT INTO attempts VALUES (); SELECT * FROM no_such_table")
        cause = unknown.value.__cause__
        assert isinstance(cause, myerr.ProgrammingError) and cause.args[0] == 1146
        with pytest.raises(myerr.IntegrityError):
            await sup.db.execute("INSERT INTO attempts VALUES (1)")
        with pytest.raises(TypeError):  # wrong argument count: caught before sending
            await sup.db.execute("INSERT INTO attempts VALUES (%s)", 1, 2)
        assert await sup.db.fetchval("SELECT COUNT(*) FROM attempts") == 1
        assert sup.state is State.CONNECTED
        st = sup.db.statistics()
        assert (st.reconnects, st.replays) == (0, 0)
        assert pool(sup).stats().size == 1  # the connection survived every error
