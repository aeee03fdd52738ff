"""Audit regressions, deadlines: a call's ``timeout=`` and a caller's cancellation hold
whatever the pool is doing underneath, and ``on_connect`` runs once per new connection
(items 9, 10, 11).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from harness.polling import until
from harness.servers import MariaDBServer, PostgresServer
from resilientdb import DatabaseUnavailable, Supervisor
from resilientdb.testing import FaultProxy
from tests.audit_support import (
    outcome_of,
    settle_task,
    via,
)

NETWORK_BACKENDS = ["postgres", "mysql"]


def server_for(request: pytest.FixtureRequest, backend: str) -> PostgresServer | MariaDBServer:
    server: PostgresServer | MariaDBServer = request.getfixturevalue(
        "pg" if backend == "postgres" else "mariadb"
    )
    return server


async def timed(call: Any) -> tuple[Any, float]:
    """(what ``call`` returned or raised, seconds it took)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    outcome = await outcome_of(call)
    return outcome, loop.time() - started


# -- item 9: the call's deadline holds while the pool opens a connection ---------------------------


@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
async def test_deadline_holds_while_the_pool_connects_into_a_partition(
    request: pytest.FixtureRequest, backend: str
) -> None:
    """Two warm connections, 20 callers: 18 need a new connection, and the network is silent.
    Every call is over by its 1 s deadline (+0.3 s), not by connect_timeout (5 s)."""
    server = server_for(request, backend)
    async with FaultProxy(server.host, server.port) as proxy:
        sup = Supervisor(via(proxy, server.dsn()), min_size=2, max_size=6, connect_timeout=5)
        async with sup:
            assert await sup.db.fetchval("SELECT 1") == 1
            proxy.blackhole()
            attempts = proxy.stats.connection_attempts
            calls = [timed(sup.db.fetchval("SELECT 1", timeout=1.0)) for _ in range(20)]
            results = await asyncio.wait_for(asyncio.gather(*calls), 30)
            assert proxy.stats.connection_attempts > attempts  # the pool did try to connect
            proxy.pass_through()
    late = sorted(round(took, 2) for _, took in results if took > 1.3)
    assert late == [], f"{len(late)} of 20 calls took longer than 1.3 s: {late}"
    assert all(isinstance(outcome, DatabaseUnavailable) for outcome, _ in results)


async def test_sqlite_deadline_holds_while_the_pool_opens_a_connection(tmp_path: Path) -> None:
    """SQLite: opening a connection (here: an on_connect hook that takes 3 s) is bounded by
    the call's deadline too."""
    opened = 0

    async def slow_open(conn: Any) -> None:
        nonlocal opened
        opened += 1
        if opened > 1:  # the warm connection opens at once; every new one takes 3 s
            await asyncio.sleep(3)

    sup = Supervisor(
        f"sqlite:///{tmp_path / 'deadline.db'}",
        min_size=1,
        max_size=6,
        connect_timeout=5,
        on_connect=slow_open,
    )
    async with sup, sup.db.acquire():  # the warm connection is busy: every call opens one
        calls = [timed(sup.db.fetchval("SELECT 1", timeout=1.0)) for _ in range(5)]
        results = await asyncio.wait_for(asyncio.gather(*calls), 30)
    assert opened > 1  # new connections were being opened
    late = sorted(round(took, 2) for _, took in results if took > 1.3)
    assert late == [], f"{len(late)} of 5 calls took longer than 1.3 s: {late}"
    assert all(isinstance(outcome, DatabaseUnavailable) for outcome, _ in results)


# -- item 10: a cancelled caller returns promptly ------------------------------------------------


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
@pytest.mark.parametrize("backend", NETWORK_BACKENDS)
async def test_cancelled_call_in_a_partition_returns_promptly(
    request: pytest.FixtureRequest, backend: str, how: str
) -> None:
    """A statement sent into a partition, then its caller cancelled (``task.cancel()``, or
    ``asyncio.wait_for``'s timeout): the task is done within 0.5 s of the cancellation, and
    once the network heals no connection is left checked out and calls go through."""
    server = server_for(request, backend)
    loop = asyncio.get_running_loop()
    async with FaultProxy(server.host, server.port) as proxy:
        sup = Supervisor(via(proxy, server.dsn()), min_size=1, max_size=2)
        async with sup:
            db = sup.db
            assert await db.fetchval("SELECT 1") == 1  # warm: the next call sends at once
            proxy.blackhole()
            if how == "cancel":
                task = asyncio.create_task(db.fetchval("SELECT 1"))
                await asyncio.sleep(0.3)  # the request is in the partition, the caller waits
                assert not task.done()
                task.cancel()
                cancelled_at = loop.time()
            else:
                task = asyncio.create_task(asyncio.wait_for(db.fetchval("SELECT 1"), 2))
                cancelled_at = loop.time() + 2
            try:
                await asyncio.wait({task}, timeout=cancelled_at + 0.5 - loop.time())
                pending_for = None if task.done() else loop.time() - cancelled_at
            finally:
                proxy.pass_through()
                await settle_task(task, timeout=10)
            assert pending_for is None, f"still pending {pending_for:.2f} s after the cancel"
            if how == "cancel":
                assert task.cancelled()
            else:
                assert isinstance(task.exception(), TimeoutError)
            await until(lambda: db.statistics().pool.in_use == 0, timeout=5)  # nothing leaked
            assert await db.fetchval("SELECT 1", timeout=10) == 1


# -- item 11: on_connect on PostgreSQL -------------------------------------------------------------


async def test_pg_hanging_on_connect_hook_fails_the_call_in_time(pg: PostgresServer) -> None:
    """The hook hangs on a connection the pool opens lazily: the call fails within the
    acquire / connect timeouts (2 s), not after the hook's 60 s."""
    first: list[Any] = []
    hung: list[Any] = []
    release = asyncio.Event()

    async def hook(conn: Any) -> None:
        if not first or conn is first[0]:
            first.append(conn)  # the warm connection (asyncpg's reset may call again on it)
            return
        hung.append(conn)
        async with asyncio.timeout(60):
            await release.wait()

    sup = Supervisor(
        pg.dsn(), min_size=1, max_size=2, acquire_timeout=2, connect_timeout=2, on_connect=hook
    )
    try:
        # The warm connection is in use: the call needs a new one.
        async with sup, sup.db.acquire():
            outcome, took = await timed(asyncio.wait_for(sup.db.fetchval("SELECT 1"), 8))
            release.set()
    finally:
        release.set()
    assert hung  # the hook did hang on a new connection
    assert took < 2.5, f"the call took {took:.1f} s ({outcome!r})"
    assert isinstance(outcome, DatabaseUnavailable), repr(outcome)


async def test_pg_on_connect_runs_once_per_new_connection(pg: PostgresServer) -> None:
    """Ten calls on one warm connection: the hook ran once, not once per release."""
    runs = 0

    async def hook(conn: Any) -> None:
        nonlocal runs
        runs += 1
        await conn.execute("SET application_name = 'hooked'")

    async with Supervisor(pg.dsn(), min_size=1, max_size=1, on_connect=hook) as sup:
        pids = {await sup.db.fetchval("SELECT pg_backend_pid()") for _ in range(10)}
        assert len(pids) == 1  # ten calls on one warm connection
        assert runs == 1


async def test_pg_on_connect_settings_hold_and_plain_sets_do_not_leak(pg: PostgresServer) -> None:
    """What the hook set holds on every call; what a call SETs itself is gone at the next."""

    async def hook(conn: Any) -> None:
        await conn.execute("SET application_name = 'hooked'")

    async with Supervisor(pg.dsn(), min_size=1, max_size=1, on_connect=hook) as sup:
        db = sup.db
        pid = await db.fetchval("SELECT pg_backend_pid()")
        assert await db.execute("SET statement_timeout = 1234") == "SET"
        assert await db.fetchval("SHOW statement_timeout") == "0"  # the default again
        assert await db.fetchval("SHOW application_name") == "hooked"
        assert await db.fetchval("SELECT pg_backend_pid()") == pid  # the same connection
