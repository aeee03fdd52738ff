"""Attack on issue 14's API: ``timeout=`` bounds the whole call, on the real PostgreSQL.

asyncpg prepares statements of its own inside some calls without passing them the caller's
timeout: ``copy_records_to_table`` reads the table's column types first, and
``copy_from_query`` with arguments renders them through a prepared statement. A lock on the
table (another session's ``LOCK TABLE``) holds those for as long as the lock is held. And a
stream's first batch is several round trips (``BEGIN READ ONLY``, the cursor, the first
fetch): each must not get the whole ``timeout`` again.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import asyncpg
import pytest

from harness.polling import until
from harness.servers import PostgresServer
from resilientdb import OutcomeUnknown, Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

SAFETY = 10.0  # the test's own bound: a call still running then has ignored its deadline


@pytest.fixture
async def sup(pg: PostgresServer) -> AsyncIterator[Supervisor]:
    async with Supervisor(pg.dsn(), min_size=1, max_size=2) as s:
        await s.db.execute("DROP TABLE IF EXISTS attack14_locked")
        await s.db.execute("CREATE TABLE attack14_locked (id int PRIMARY KEY)")
        yield s


@pytest.fixture
async def locked(pg: PostgresServer, sup: Supervisor) -> AsyncIterator[None]:
    """Another session holds an exclusive lock on the table for the test's duration."""
    conn = await asyncpg.connect(pg.dsn())
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("LOCK TABLE attack14_locked IN ACCESS EXCLUSIVE MODE")
        yield
        await tx.rollback()
    finally:
        await conn.close()


async def timed(coro: object) -> tuple[float, BaseException | None]:
    """Seconds the call took (cut at SAFETY), and what it raised."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        await asyncio.wait_for(coro, SAFETY)  # type: ignore[arg-type]
    except BaseException as exc:
        return loop.time() - start, exc
    return loop.time() - start, None


async def test_copy_records_timeout_bounds_the_column_type_lookup(
    sup: Supervisor, locked: None
) -> None:
    elapsed, err = await timed(
        sup.db.copy_records_to_table("attack14_locked", records=[(1,), (2,)], timeout=1.0)
    )
    assert elapsed < 2.5, f"timeout=1.0 but the call took {elapsed:.1f} s ({err!r})"
    assert err is not None and not isinstance(err, OutcomeUnknown), err  # nothing was sent
    await until(lambda: sup.db.statistics().pool.in_use == 0, timeout=5)


async def test_copy_from_query_timeout_bounds_rendering_its_arguments(
    sup: Supervisor, locked: None
) -> None:
    out = io.BytesIO()
    elapsed, err = await timed(
        sup.db.copy_from_query(
            "SELECT id FROM attack14_locked WHERE id > $1", 0, output=out, timeout=1.0
        )
    )
    assert elapsed < 2.5, f"timeout=1.0 but the call took {elapsed:.1f} s ({err!r})"
    assert err is not None and out.getvalue() == b""
    await until(lambda: sup.db.statistics().pool.in_use == 0, timeout=5)


async def test_copy_still_works_once_the_lock_is_gone(sup: Supervisor) -> None:
    """The bound is a backstop: a call within its time is untouched."""
    assert await sup.db.copy_records_to_table("attack14_locked", records=[(1,)], timeout=5)
    out = io.BytesIO()
    await sup.db.copy_from_query("SELECT id FROM attack14_locked WHERE id > $1", 0, output=out)
    assert out.getvalue() == b"1\n"


async def test_stream_timeout_bounds_the_whole_first_batch(pg: PostgresServer) -> None:
    """0.3 s added each way: every round trip of the first batch is 0.6 s, well within
    ``timeout=1.0`` one by one, but not all of them together."""
    async with FaultProxy(pg.host, pg.port) as proxy:
        dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
        async with Supervisor(dsn, min_size=1, max_size=1, connect_timeout=5.0) as s:
            proxy.set_latency(0.3)

            async def read() -> list[int]:
                return [
                    r[0] async for r in s.db.iterate("SELECT generate_series(1, 3)", timeout=1.0)
                ]

            elapsed, err = await timed(read())
            assert elapsed < 1.6, f"timeout=1.0 but the first batch took {elapsed:.1f} s ({err!r})"
            assert err is not None
            proxy.set_latency(0)
            await until(lambda: s.db.statistics().pool.in_use == 0, timeout=5)
            rows = [r[0] async for r in s.db.iterate("SELECT generate_series(1, 3)", timeout=5)]
            assert rows == [1, 2, 3]


async def test_copy_in_a_transaction_timeout_bounds_the_column_type_lookup(
    sup: Supervisor, locked: None
) -> None:
    """Inside a transaction too; a COPY past its timeout loses the transaction there, as any
    statement cut off by its timeout does."""

    async def load() -> None:
        async with sup.db.transaction() as tx:
            await tx.copy_records_to_table("attack14_locked", records=[(1,)], timeout=1.0)

    elapsed, err = await timed(load())
    assert elapsed < 2.5, f"timeout=1.0 but the call took {elapsed:.1f} s ({err!r})"
    assert err is not None
    await until(lambda: sup.db.statistics().pool.in_use == 0, timeout=5)
