"""Attack on issue 14's streams, on the real PostgreSQL: ``aclose()`` (or a second reader)
from another task while a batch is in flight. It raised an internal AssertionError in the
reading task and asyncpg's "connection has been released back to the pool" from aclose(),
with the connection given back while the driver was still reading on it. Like an async
generator, a stream is read by one task at a time: the other call raises a RuntimeError that
says what to do, before touching anything, and the reading task carries on."""

from __future__ import annotations

import asyncio

import pytest

from harness.polling import until
from harness.servers import PostgresServer
from resilientdb import Supervisor

SLOW = "SELECT g, pg_sleep(0.1) FROM generate_series(1, 12) g"  # 0.2 s a batch of 2


async def test_aclose_from_another_task_mid_batch(pg: PostgresServer) -> None:
    async with Supervisor(pg.dsn(), min_size=1, max_size=2) as sup:
        stream = sup.db.iterate(SLOW, batch=2)
        got: list[int] = []

        async def consume() -> None:
            async for row in stream:
                got.append(row[0])

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)  # the second batch is in flight
        with pytest.raises(RuntimeError, match="another task"):
            await stream.aclose()
        second = sup.db.iterate(SLOW, batch=2)  # (a different stream reads independently)
        with pytest.raises(RuntimeError, match="another task"):
            await stream.__anext__()
        await asyncio.wait_for(task, 10)  # the reader was not disturbed
        assert got == list(range(1, 13))
        await stream.aclose()  # idempotent once over
        assert [r[0] async for r in second] == list(range(1, 13))
        await until(lambda: sup.db.statistics().pool.in_use == 0, timeout=5)


async def test_cancelling_the_reader_closes_the_stream(pg: PostgresServer) -> None:
    """What to do instead of aclose() from outside: cancel the reading task."""
    async with Supervisor(pg.dsn(), min_size=1, max_size=2) as sup:
        stream = sup.db.iterate(SLOW, batch=2)

        async def consume() -> None:
            async for _row in stream:
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()
        await until(lambda: sup.db.statistics().pool.in_use == 0, timeout=5)
        assert await sup.db.fetchval("SELECT 1") == 1
