"""PgBouncer in transaction mode in front of a throwaway server (the docs' settings): PAUSE /
RESUME, a restart of PgBouncer and of the server behind it, with no error for reads and
idempotent writes; and, with asyncpg's default statement cache, the error that names the fix."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from harness.pgbouncer import PgBouncer
from harness.servers import PostgresServer
from resilientdb import PreparedStatementsUnsupported, Supervisor

pytestmark = pytest.mark.slow

# The documented settings for a transaction-mode pooler.
POOLER = {"connect_kwargs": {"statement_cache_size": 0}}


@pytest.fixture
async def bouncer(pg: PostgresServer) -> AsyncIterator[PgBouncer]:
    b = PgBouncer(pg)
    await asyncio.to_thread(b.start)
    try:
        yield b
    finally:
        await asyncio.to_thread(b.cleanup)


async def test_prepared_statement_error_names_the_fix(bouncer: PgBouncer) -> None:
    sup = Supervisor(bouncer.dsn(), max_size=4, keepalive_interval=None)
    found: list[BaseException] = []

    async def call(i: int) -> None:
        try:
            await sup.db.fetchval(f"SELECT {i % 7}::int + $1", i)
        except PreparedStatementsUnsupported as exc:
            found.append(exc)

    async with sup:
        for _ in range(20):  # bounded; the first rounds nearly always hit it
            await asyncio.gather(*(call(i) for i in range(16)))
            if found:
                break
    assert found, "the pooler never lost a prepared statement"
    message = str(found[0])
    assert "statement_cache_size" in message and "PgBouncer" in message
    assert "does not exist" in message or "already exists" in message


async def test_pause_restart_and_server_restart_cause_no_errors(
    pg: PostgresServer, bouncer: PgBouncer
) -> None:
    errors: list[BaseException] = []
    done = 0
    stop = asyncio.Event()
    sup = Supervisor(bouncer.dsn(), max_size=6, command_timeout=10, **POOLER)  # type: ignore[arg-type]

    async def worker(i: int) -> None:
        nonlocal done
        while not stop.is_set():
            try:
                if i % 2:
                    await sup.db.fetchval("SELECT count(*) FROM pgb_items", timeout=20)
                else:
                    await sup.db.execute(
                        "INSERT INTO pgb_items VALUES ($1) ON CONFLICT DO NOTHING",
                        done + 1000 * i,
                        idempotent=True,
                        timeout=20,
                    )
                done += 1
            except Exception as exc:
                errors.append(exc)
            await asyncio.sleep(0.01)

    async with sup:
        await sup.db.execute("CREATE TABLE IF NOT EXISTS pgb_items (id int PRIMARY KEY)")
        tasks = [asyncio.create_task(worker(i)) for i in range(6)]
        await asyncio.sleep(0.3)
        await asyncio.to_thread(bouncer.admin, "PAUSE")
        await asyncio.sleep(0.5)
        await asyncio.to_thread(bouncer.admin, "RESUME")
        before = done
        await asyncio.sleep(0.3)
        assert done > before  # calls flow again after RESUME
        old_bouncer = bouncer.pid
        await asyncio.to_thread(bouncer.restart)  # SIGTERM: every client connection ends
        assert bouncer.pid is not None and bouncer.pid != old_bouncer
        before = done
        await asyncio.sleep(0.5)
        assert done > before  # calls flow through the new PgBouncer
        old_pid = pg.pid
        await asyncio.to_thread(pg.restart)
        assert pg.pid != old_pid
        before = done
        await asyncio.sleep(1.0)
        stop.set()
        await asyncio.gather(*tasks)
        assert done > before
        await sup.db.execute("DROP TABLE pgb_items")
    assert errors == []
