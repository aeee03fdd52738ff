"""A MariaDB primary and a semi-synchronous replica (``harness/mariadb_replication.py``)
behind one host list with ``target_session_attrs=read-write``: the read-only replica is
skipped while the primary runs; the primary stopped and the replica made writable, writes
resume there with no error for reads and idempotent writes, plain writes in flight raise
``OutcomeUnknown`` and nothing else, and nothing acknowledged is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from harness.mariadb_replication import ReplicatedMariaDB
from harness.servers import MariaDBServer, require
from resilientdb import OutcomeUnknown, State, Supervisor

pytestmark = [pytest.mark.slow, pytest.mark.mysql]

INSERT = "INSERT IGNORE INTO repl_items VALUES (%s)"


@pytest.fixture
async def cluster() -> AsyncIterator[ReplicatedMariaDB]:
    require(MariaDBServer.BINARIES, "MariaDB")
    c = ReplicatedMariaDB()
    try:
        await asyncio.to_thread(c.start)
        await asyncio.to_thread(
            c.primary.admin_query, "CREATE TABLE app.repl_items (id INT PRIMARY KEY)"
        )
        yield c
    finally:
        await asyncio.to_thread(c.cleanup)


async def test_primary_stopped_replica_promoted(cluster: ReplicatedMariaDB) -> None:
    acked: list[int] = []
    unknown: list[BaseException] = []
    errors: list[BaseException] = []
    stop = asyncio.Event()
    ids = iter(range(1, 10_000_000))
    sup = Supervisor(cluster.dsn(), max_size=10, command_timeout=10, keepalive_interval=None)

    async def write(idempotent: bool) -> None:
        while not stop.is_set():
            n = next(ids)
            try:
                await sup.db.execute(INSERT, n, idempotent=idempotent, timeout=20)
                acked.append(n)
            except OutcomeUnknown as exc:
                (errors if idempotent else unknown).append(exc)
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.005)

    async def read() -> None:
        while not stop.is_set():
            try:
                await sup.db.fetchval("SELECT COUNT(*) FROM repl_items", timeout=20)
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.005)

    async with sup:
        assert await sup.db.fetchval("SELECT @@port") == cluster.primary.port
        plan = [read] * 4 + [lambda: write(True)] * 4 + [lambda: write(False)] * 2
        tasks = [asyncio.create_task(f()) for f in plan]
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.primary.stop)
        for _ in range(50):  # bounded: 5 s
            await asyncio.sleep(0.1)
            if sup.state is State.RECONNECTING:
                break
        assert sup.state is State.RECONNECTING  # the replica is read-only: skipped
        await asyncio.to_thread(cluster.promote)
        before = len(acked)
        await asyncio.sleep(1.5)
        stop.set()
        await asyncio.gather(*tasks)
        port = await sup.db.fetchval("SELECT @@port")
    assert errors == []
    assert all(isinstance(e, OutcomeUnknown) for e in unknown)
    assert len(acked) > before and port == cluster.replica.port
    rows = await asyncio.to_thread(cluster.replica.admin_query, "SELECT id FROM app.repl_items")
    assert set(acked) <= {int(x) for x in rows.split()}  # nothing acknowledged lost
