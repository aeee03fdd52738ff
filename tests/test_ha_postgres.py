"""High availability on PostgreSQL: a multi-host URL with ``target_session_attrs`` against two
throwaway servers, the first one fenced read-only (``default_transaction_read_only``) while
the application runs: writes move to the second with no error and nothing acknowledged lost.

The two servers do not replicate (a fenced primary and a promoted standby would): what each
acknowledged stays on it, so "nothing lost" is checked against the union of both.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from harness.servers import PostgresServer, require_postgres
from resilientdb import DatabaseUnavailable, State, Supervisor

pytestmark = pytest.mark.slow

TABLE = "CREATE TABLE IF NOT EXISTS ha_items (id int PRIMARY KEY)"
INSERT = "INSERT INTO ha_items VALUES ($1) ON CONFLICT DO NOTHING"


@pytest.fixture(scope="module")
def second_pg() -> Iterator[PostgresServer]:
    require_postgres()
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def fence(server: PostgresServer, on: bool) -> None:
    """A primary fenced the way failover tools do it: every new transaction read-only."""
    if on:
        server.admin_query("ALTER SYSTEM SET default_transaction_read_only = on")
    else:
        server.admin_query("ALTER SYSTEM RESET default_transaction_read_only")
    server.admin_query("SELECT pg_reload_conf()")


async def ids(server: PostgresServer) -> set[int]:
    conn = await asyncpg.connect(server.dsn())
    try:
        return {r[0] for r in await conn.fetch("SELECT id FROM ha_items")}
    finally:
        await conn.close()


@pytest.fixture
async def pair(
    pg: PostgresServer, second_pg: PostgresServer
) -> AsyncIterator[tuple[PostgresServer, PostgresServer]]:
    second_pg.ensure_running()
    for server in (pg, second_pg):
        conn = await asyncpg.connect(server.dsn())
        try:
            await conn.execute(TABLE)
            await conn.execute("TRUNCATE ha_items")
        finally:
            await conn.close()
    try:
        yield pg, second_pg
    finally:
        for server in (pg, second_pg):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(fence, server, False)


def both(first: PostgresServer, second: PostgresServer, attrs: str = "read-write") -> str:
    return (
        f"postgresql://app@{first.host}:{first.port},{second.host}:{second.port}/app"
        f"?target_session_attrs={attrs}"
    )


async def test_fenced_primary_mid_load_moves_writes(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    first, second = pair
    acked: list[int] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()
    counter = iter(range(1, 1_000_000))
    sup = Supervisor(both(first, second), max_size=8, keepalive_interval=None)

    async def writer() -> None:
        while not stop.is_set():
            n = next(counter)
            try:
                await sup.db.execute(INSERT, n, idempotent=True, timeout=10)
                acked.append(n)
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.005)

    async def reader() -> None:
        while not stop.is_set():
            try:
                await sup.db.fetchval("SELECT count(*) FROM ha_items", timeout=10)
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.005)

    async with sup:
        assert await sup.db.fetchval("SELECT inet_server_port()") == first.port
        tasks = [asyncio.create_task(w()) for w in [writer] * 4 + [reader] * 4]
        await asyncio.sleep(0.7)
        await asyncio.to_thread(fence, first, True)
        fenced_at = len(acked)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*tasks)
        port = await sup.db.fetchval("SELECT inet_server_port()")
        assert sup.state is State.CONNECTED
    assert errors == []
    on_first, on_second = await ids(first), await ids(second)
    assert set(acked) <= on_first | on_second  # nothing acknowledged lost
    assert on_first and on_second  # the fence happened mid-load, and writes moved
    assert len(acked) > fenced_at
    assert port == second.port


async def test_keepalive_moves_idle_connections(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    first, second = pair
    sup = Supervisor(both(first, second), min_size=2, keepalive_interval=0.2)
    async with sup:
        assert await sup.db.fetchval("SELECT inet_server_port()") == first.port
        await asyncio.to_thread(fence, first, True)
        for _ in range(50):  # bounded: 5 s
            await asyncio.sleep(0.1)
            if await sup.db.fetchval("SELECT inet_server_port()") == second.port:
                break
        # Reads alone would still run on the fenced node: the keepalive found the role.
        assert await sup.db.fetchval("SELECT inet_server_port()") == second.port
        await sup.db.execute(INSERT, 1)  # a write, not replayed: the pool is on the writer
    assert 1 in await ids(second)


async def test_callers_own_read_only_transaction_is_their_error(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    first, second = pair
    sup = Supervisor(both(first, second), max_replays=0)
    async with sup:
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await sup.db.execute("SET TRANSACTION READ ONLY; INSERT INTO ha_items VALUES (7)")
        assert await sup.db.fetchval("SELECT inet_server_port()") == first.port
        assert sup.state is State.CONNECTED


async def test_no_writable_node_waits_then_recovers(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    first, _ = pair
    dsn = f"{first.dsn()}?target_session_attrs=read-write"
    sup = Supervisor(dsn, gate_timeout=0.8)
    async with sup:
        await sup.db.execute(INSERT, 1)
        await asyncio.to_thread(fence, first, True)
        with pytest.raises(DatabaseUnavailable):
            await sup.db.execute(INSERT, 2, idempotent=True)
        assert sup.state is State.RECONNECTING
        write = asyncio.create_task(sup.db.execute(INSERT, 3, idempotent=True, timeout=10))
        await asyncio.sleep(0.3)
        await asyncio.to_thread(fence, first, False)
        await write
    assert {1, 3} <= await ids(first) and 2 not in await ids(first)


async def test_health_reports_the_role_and_fails_on_a_fenced_writer(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    first, second = pair
    sup = Supervisor(both(first, second), keepalive_interval=None)
    async with sup:
        report = await sup.health()
        assert report.ok and report.backends["default"].role == "primary"
        assert report.to_dict()["checks"]["default:connections"][0]["role"] == "primary"
        await asyncio.to_thread(fence, first, True)
        for _ in range(20):  # bounded: the reload reaches the session within moments
            report = await sup.health()
            if not report.ok:
                break
            await asyncio.sleep(0.1)
        assert not report.readiness().ok
        assert report.backends["default"].role == "read-only"
        assert "target_session_attrs=read-write" in (report.output or "")
        # The failed check retired the pool: once the supervisor's own check is done, the
        # next one is on the writable node.
        for _ in range(20):  # bounded: 2 s
            await asyncio.sleep(0.1)
            report = await sup.health()
            if report.ok:
                break
        assert report.ok and report.backends["default"].role == "primary", report.output
        assert await sup.db.fetchval("SELECT inet_server_port()") == second.port


async def test_transactions_on_a_fenced_primary_run_again_on_the_writer(
    pair: tuple[PostgresServer, PostgresServer],
) -> None:
    first, second = pair
    sup = Supervisor(both(first, second), keepalive_interval=None)

    async def insert(tx: object, n: int) -> None:
        await tx.execute(INSERT, n)  # type: ignore[attr-defined]
        await tx.execute(INSERT, n + 1000)  # type: ignore[attr-defined]

    async with sup:
        await sup.db.run_in_transaction(insert, 1)
        await asyncio.to_thread(fence, first, True)
        await asyncio.sleep(0.2)  # the reload reaches the pooled session
        await sup.db.run_in_transaction(insert, 2)  # refused on the first, run on the second
        assert await sup.db.fetchval("SELECT inet_server_port()") == second.port
    assert {1, 1001} <= await ids(first)
    assert {2, 1002} <= await ids(second) and 2 not in await ids(first)
