"""Transactions on the real PostgreSQL: never replayed piecemeal, replayed whole when safe."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from harness.servers import PostgresServer
from resilientdb import OutcomeUnknown, Supervisor, TransactionLost, TransactionRolledBack, events
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy


@pytest.fixture
async def sup(pg: PostgresServer) -> AsyncIterator[Supervisor]:
    await asyncio.to_thread(
        pg.admin_query,
        "DROP TABLE IF EXISTS acct, hist; "
        "CREATE TABLE acct (id int PRIMARY KEY, balance int NOT NULL); "
        "CREATE TABLE hist (seq serial PRIMARY KEY, op text NOT NULL); "
        "INSERT INTO acct VALUES (1, 100), (2, 100); "
        "ALTER TABLE acct OWNER TO app; ALTER TABLE hist OWNER TO app;",
        "app",
    )
    s = Supervisor(pg.dsn(), max_size=4)
    async with s:
        yield s


async def test_commit_rollback_and_savepoint(sup: Supervisor) -> None:
    db = sup.db
    async with db.transaction() as tx:
        await tx.execute("UPDATE acct SET balance = balance - 10 WHERE id = 1")
        try:
            async with tx.transaction():
                await tx.execute("UPDATE acct SET balance = 0 WHERE id = 2")
                raise RuntimeError("undo the savepoint only")
        except RuntimeError:
            pass
        assert await tx.fetchval("SELECT balance FROM acct WHERE id = 2") == 100
    assert await db.fetchval("SELECT balance FROM acct WHERE id = 1") == 90
    with pytest.raises(ZeroDivisionError):
        async with db.transaction() as tx:
            await tx.execute("UPDATE acct SET balance = 0 WHERE id = 1")
            raise ZeroDivisionError
    assert await db.fetchval("SELECT balance FROM acct WHERE id = 1") == 90
    with pytest.raises(TransactionRolledBack) as info:
        async with db.transaction(isolation="serializable", readonly=True) as tx:
            assert await tx.fetchval("SHOW transaction_isolation") == "serializable"
            assert await tx.fetchval("SHOW transaction_read_only") == "on"
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await tx.execute("UPDATE acct SET balance = 1")
    # The caught error aborted the transaction: COMMIT was answered ROLLBACK, and said so.
    assert isinstance(info.value.__cause__, asyncpg.ReadOnlySQLTransactionError)
    with pytest.raises(ValueError, match="isolation"):
        async with db.transaction(isolation="chaotic"):
            pass
    assert db.statistics().pool.in_use == 0


async def test_terminated_inside_transaction_is_transaction_lost(
    sup: Supervisor, pg: PostgresServer
) -> None:
    db = sup.db
    with pytest.raises(TransactionLost) as info:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO hist (op) VALUES ('lost')")
            await asyncio.to_thread(
                pg.admin_query,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = 'app' AND state LIKE 'idle in transaction%'",
            )
            await asyncio.sleep(0.1)
            await tx.execute("INSERT INTO hist (op) VALUES ('after')")
    # asyncpg noticed the loss while idle and detached the connection from its proxy.
    assert isinstance(info.value.__cause__, asyncpg.InterfaceError)
    assert await db.fetchval("SELECT count(*) FROM hist") == 0  # rolled back by the server


async def test_lost_commit_is_outcome_unknown(pg: PostgresServer) -> None:
    await asyncio.to_thread(
        pg.admin_query,
        "DROP TABLE IF EXISTS hist; CREATE TABLE hist (seq serial PRIMARY KEY, op text); "
        "ALTER TABLE hist OWNER TO app;",
        "app",
    )
    async with FaultProxy(pg.host, pg.port) as proxy:
        dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
        async with Supervisor(dsn, command_timeout=0.3, connect_timeout=0.5) as sup:
            with pytest.raises(OutcomeUnknown):
                async with sup.db.transaction() as tx:
                    await tx.execute("INSERT INTO hist (op) VALUES ('commit-in-flight')")
                    proxy.blackhole()  # the COMMIT goes into the partition
            proxy.pass_through()
            n = await sup.db.fetchval("SELECT count(*) FROM hist", timeout=10)
            assert n <= 1


async def test_run_in_transaction_retries_serialization_failures(sup: Supervisor) -> None:
    db = sup.db
    replays: list[events.OperationReplayed] = []
    sup.on(events.OperationReplayed, replays.append)
    gate = asyncio.Barrier(2)

    async def bump(tx: Any, who: str) -> int:
        value: int = await tx.fetchval("SELECT balance FROM acct WHERE id = 1")
        if not replays:
            await gate.wait()  # both read before either writes: a guaranteed conflict
        await tx.execute("UPDATE acct SET balance = $1 WHERE id = 1", value + 1)
        await tx.execute("INSERT INTO hist (op) VALUES ($1)", who)
        return value

    await asyncio.gather(
        db.run_in_transaction(bump, "a", isolation="serializable", retries=5),
        db.run_in_transaction(bump, "b", isolation="serializable", retries=5),
    )
    await asyncio.sleep(0.05)
    assert await db.fetchval("SELECT balance FROM acct WHERE id = 1") == 102
    assert await db.fetchval("SELECT count(*) FROM hist") == 2
    assert replays and replays[0].reason == "SerializationError"


async def test_run_in_transaction_retries_deadlocks(sup: Supervisor) -> None:
    db = sup.db
    barrier = asyncio.Barrier(2)
    attempts = {"x": 0, "y": 0}

    async def lock_both(tx: Any, first: int, second: int, who: str) -> None:
        attempts[who] += 1
        await tx.execute("UPDATE acct SET balance = balance + 1 WHERE id = $1", first)
        if attempts[who] == 1:
            await barrier.wait()
        await tx.execute("UPDATE acct SET balance = balance + 1 WHERE id = $1", second)

    await asyncio.gather(
        db.run_in_transaction(lock_both, 1, 2, "x"),
        db.run_in_transaction(lock_both, 2, 1, "y"),
    )
    assert await db.fetchval("SELECT sum(balance) FROM acct") == 204
    assert attempts["x"] + attempts["y"] == 3  # exactly one side was re-run


async def test_run_in_transaction_reruns_after_lost_connection(
    sup: Supervisor, pg: PostgresServer
) -> None:
    db = sup.db
    runs = 0

    async def work(tx: Any) -> str:
        nonlocal runs
        runs += 1
        await tx.execute("INSERT INTO hist (op) VALUES ('once')")
        if runs == 1:
            await asyncio.to_thread(
                pg.admin_query,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE usename = 'app' AND state LIKE 'idle in transaction%'",
            )
            await asyncio.sleep(0.1)
            await tx.execute("SELECT 1")  # the loss surfaces here, before COMMIT
        return "done"

    assert await db.run_in_transaction(work) == "done"
    assert runs == 2
    assert await db.fetchval("SELECT count(*) FROM hist WHERE op = 'once'") == 1


async def test_run_in_transaction_lost_commit(pg: PostgresServer) -> None:
    await asyncio.to_thread(
        pg.admin_query,
        "DROP TABLE IF EXISTS hist; CREATE TABLE hist (seq serial PRIMARY KEY, op text); "
        "ALTER TABLE hist OWNER TO app;",
        "app",
    )
    async with FaultProxy(pg.host, pg.port) as proxy:
        dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
        async with Supervisor(dsn, command_timeout=0.3, connect_timeout=0.5) as sup:
            calls = 0

            async def work(tx: Any, blackhole: bool) -> None:
                nonlocal calls
                calls += 1
                await tx.execute("INSERT INTO hist (op) VALUES ('x')")
                if calls == 1:
                    proxy.blackhole()

                    async def heal() -> None:
                        await asyncio.sleep(1.0)
                        proxy.pass_through()

                    asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(heal()))

            # resolve=False: the paths without asking the server (tests/test_outcomes_pg.py).
            with pytest.raises(OutcomeUnknown):
                await sup.db.run_in_transaction(work, True, resolve=False)
            assert calls == 1  # not idempotent: never re-run after a lost COMMIT
            await asyncio.sleep(1.2)
            calls = 0
            await sup.db.run_in_transaction(work, True, idempotent=True, timeout=20, resolve=False)
            assert calls == 2  # idempotent: re-run after the lost COMMIT
