"""The contract every backend adapter passes: the public API, the Row shape, errors and their
classes, the replay rules, transactions and cancellation without leaks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from harness.polling import until
from resilientdb import (
    DatabaseUnavailable,
    OutcomeUnknown,
    State,
    Supervisor,
    SupervisorClosed,
    TransactionLost,
)
from tests.backends.conftest import Target
from tests.handles import adapter, supervised


@pytest.fixture
async def sup(target: Target) -> AsyncIterator[Supervisor]:
    s = supervised(target.dsn, min_size=1, max_size=4)
    async with s:
        db = s.db
        await db.execute("DROP TABLE IF EXISTS items", idempotent=True)
        await db.execute(
            f"CREATE TABLE items (id {target.dialect.serial}, "
            "name varchar(50) NOT NULL, qty integer)",
            idempotent=True,
        )
        yield s


async def kill_underneath(target: Target, sup: Supervisor) -> None:
    """Make the app's connections die without the supervisor being told."""
    if target.dialect.name == "sqlite":
        backend: Any = adapter(sup)
        for raw in backend.raw_connections():
            await raw.close()
    else:
        assert await target.kill_connections() >= 1
    await asyncio.sleep(0.2)


async def test_api_and_row_shape(target: Target, sup: Supervisor) -> None:
    db = sup.db
    assert sup.state is State.CONNECTED and db.state is State.CONNECTED
    assert sup["default"] is db
    await db.executemany(
        target.dialect.sql("INSERT INTO items (name, qty) VALUES ({1}, {2})"),
        [("apple", 3), ("pear", 5)],
    )
    await db.execute(
        target.dialect.sql("INSERT INTO items (name, qty) VALUES ({1}, {2})"), "fig", None
    )
    rows = await db.fetch("SELECT name, qty FROM items ORDER BY name")
    assert [tuple(r) for r in rows] == [("apple", 3), ("fig", None), ("pear", 5)]
    row = rows[0]
    assert row[0] == "apple" and row["qty"] == 3 and len(row) == 2
    assert dict(row) == {"name": "apple", "qty": 3}
    one = await db.fetchrow(
        target.dialect.sql("SELECT name, qty FROM items WHERE name = {1}"), "pear"
    )
    assert one is not None and one["qty"] == 5
    assert (
        await db.fetchrow(target.dialect.sql("SELECT name FROM items WHERE name = {1}"), "x")
        is None
    )
    assert await db.fetchval("SELECT count(*) FROM items") == 3
    assert await db.fetchval("SELECT name, qty FROM items WHERE qty = 5", column=1) == 5
    assert await db.fetchval("SELECT qty FROM items WHERE qty > 100") is None
    async with db.acquire() as raw:
        assert raw is not None
    await sup.wait_until_connected(timeout=1)


async def test_query_error_unchanged_after_one_attempt(sup: Supervisor) -> None:
    db = sup.db
    with pytest.raises(Exception) as info:
        await db.fetch("SELEC 1")
    assert not isinstance(info.value, DatabaseUnavailable | OutcomeUnknown)
    assert type(info.value).__module__.split(".")[0] in {
        "asyncpg",
        "pymysql",
        "sqlite3",
        "aiomysql",
    }
    assert db.state is State.CONNECTED and db.statistics().replays == 0


async def test_read_is_replayed_after_connections_die(target: Target, sup: Supervisor) -> None:
    db = sup.db
    assert await db.fetchval("SELECT 1") == 1
    await kill_underneath(target, sup)
    assert await db.fetchval("SELECT 2") == 2
    assert await db.fetch("SELECT 3") is not None
    assert db.state is State.CONNECTED


async def test_write_after_idle_kill_goes_through_once(target: Target, sup: Supervisor) -> None:
    db = sup.db
    await kill_underneath(target, sup)
    await db.execute(target.dialect.sql("INSERT INTO items (name) VALUES ({1})"), "once")
    assert await db.fetchval("SELECT count(*) FROM items WHERE name = 'once'") == 1


async def test_transactions(target: Target, sup: Supervisor) -> None:
    db = sup.db
    ins = target.dialect.sql("INSERT INTO items (name) VALUES ({1})")
    async with db.transaction() as tx:
        await tx.execute(ins, "kept")
        try:
            async with tx.transaction():
                await tx.execute(ins, "savepoint-undone")
                raise KeyError
        except KeyError:
            pass
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute(ins, "rolled-back")
            raise RuntimeError
    names = sorted(r[0] for r in await db.fetch("SELECT name FROM items"))
    assert names == ["kept"]

    async def add(tx: Any, name: str) -> int:
        await tx.execute(ins, name)
        n: int = await tx.fetchval("SELECT count(*) FROM items")
        return n

    assert await db.run_in_transaction(add, "via-run") == 2


async def test_transaction_lost_when_connection_dies_inside(
    target: Target, sup: Supervisor
) -> None:
    db = sup.db
    ins = target.dialect.sql("INSERT INTO items (name) VALUES ({1})")
    with pytest.raises(TransactionLost):
        async with db.transaction() as tx:
            await tx.execute(ins, "doomed")
            await kill_underneath(target, sup)
            await tx.execute(ins, "doomed-2")
    assert await db.fetchval("SELECT count(*) FROM items") == 0

    runs = 0

    async def work(tx: Any) -> None:
        nonlocal runs
        runs += 1
        await tx.execute(ins, "rerun")
        if runs == 1:
            await kill_underneath(target, sup)
            await tx.execute("SELECT 1")

    await db.run_in_transaction(work)
    assert runs == 2
    assert await db.fetchval("SELECT count(*) FROM items WHERE name = 'rerun'") == 1


async def test_cancellation_leaks_nothing(sup: Supervisor) -> None:
    db = sup.db
    before = asyncio.all_tasks()
    for delay in (0, 0.0005, 0.002, 0.01):
        calls = [asyncio.create_task(db.fetchval("SELECT count(*) FROM items")) for _ in range(10)]
        await asyncio.sleep(delay)
        for c in calls:
            c.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
    # Cancelled callers hand their connections back in the background: wait for that work.
    await until(lambda: db.statistics().pool.in_use == 0 and db.statistics().releasing == 0)
    assert db.statistics().waiting == 0
    assert asyncio.all_tasks() <= before | {asyncio.current_task()}
    assert await db.fetchval("SELECT 1") == 1


async def test_closed_supervisor_refuses_calls(target: Target) -> None:
    s = Supervisor(target.dsn)
    async with s:
        assert await s.db.fetchval("SELECT 1") == 1
    with pytest.raises(SupervisorClosed):
        await s.db.fetchval("SELECT 1")
