"""Streaming results (``db.iterate``) on every backend: every row once, in order, one batch in
memory; a fault before the first row is replayed, after it raises ``StreamInterrupted`` with
the count; an early break, ``aclose()`` or cancellation gives the connection back at once and
closes the server's cursor; inside a transaction it runs there; bad arguments are refused.
The small API items shipped with it are here too: ``executemany``'s return value, ``close()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from harness.polling import until, until_async
from harness.servers import PostgresServer
from resilientdb import Database, Row, State, StreamInterrupted, Supervisor, SupervisorClosed
from resilientdb.testing import FaultProxy
from tests.backends.conftest import Target
from tests.backends.test_contract import kill_underneath
from tests.handles import supervised


def numbers(target: Target, n: int, *, pad: int = 0, sleep: float = 0.0) -> str:
    """A read of the integers 1..n as column ``x`` (and ``pad`` filler characters each),
    that needs no table; ``sleep`` seconds before the first row (server backends)."""
    name = target.dialect.name
    if name == "postgres":
        filler = f", repeat('x', {pad}) AS pad" if pad else ""
        slow = f" CROSS JOIN pg_sleep({sleep})" if sleep else ""
        return f"SELECT g AS x{filler} FROM generate_series(1, {n}) g{slow}"
    if name == "mysql":
        filler = f", REPEAT('x', {pad}) AS pad" if pad else ""
        slow = f" CROSS JOIN (SELECT SLEEP({sleep})) s" if sleep else ""
        where = "" if n else " WHERE seq = 0"  # seq_1_to_0 counts down
        return f"SELECT seq AS x{filler} FROM seq_1_to_{max(n, 1)}{slow}{where}"
    filler = f", substr(hex(zeroblob({pad})), 1, {pad}) AS pad" if pad else ""
    return (
        f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {n}) "
        f"SELECT x{filler} FROM c WHERE x <= {n}"
    )


@pytest.fixture
async def sup(target: Target) -> AsyncIterator[Supervisor]:
    # One connection: what a stream leaves behind is what the next call finds.
    async with supervised(target.dsn, min_size=1, max_size=1) as s:
        yield s


async def released(db: Database) -> None:
    """The pool has its connection back, and no background release is still running."""
    await until(lambda: db.statistics().pool.in_use == 0, timeout=5)


async def server_cursors(target: Target, db: Database) -> int:
    """Server-side cursors / unfinished results the app's connection still has."""
    if target.dialect.name == "postgres":
        # (The unnamed portal is the one running this query.)
        return int(await db.fetchval("SELECT count(*) FROM pg_cursors WHERE name <> ''"))
    if target.dialect.name == "mysql":
        return int(
            await db.fetchval(
                "SELECT COUNT(*) FROM information_schema.processlist "
                "WHERE info LIKE 'SELECT seq AS x%'"
            )
        )
    return 0  # a sqlite3 cursor lives in the process: closed means its statement reset


async def test_every_row_once_in_order(target: Target, sup: Supervisor) -> None:
    db = sup.db
    for n, batch in [(100, 7), (70, 7), (0, 5), (1, 1), (3, 1000)]:
        stream = db.iterate(numbers(target, n), batch=batch)
        got = [(r[0], r["x"], dict(r)) async for r in stream]
        assert [g[0] for g in got] == list(range(1, n + 1)), (n, batch)
        assert all(x == v and d == {"x": v} for v, x, d in got)
        assert stream.rows_delivered == n
        assert db.statistics().pool.in_use == 0  # given back as the last batch arrived
    if target.dialect.name != "postgres":
        row = await db.iterate(numbers(target, 1)).__anext__()
        assert isinstance(row, Row)


async def test_early_break_and_aclose_release_at_once(target: Target, sup: Supervisor) -> None:
    db = sup.db
    tasks_before = asyncio.all_tasks()
    query = numbers(target, 100_000)
    async for row in db.iterate(query, batch=10):
        if row["x"] == 15:
            break
    await released(db)
    assert await server_cursors(target, db) == 0
    stream = db.iterate(query, batch=10)
    assert (await stream.__anext__())["x"] == 1
    assert db.statistics().pool.in_use == 1
    await stream.aclose()
    assert db.statistics().pool.in_use == 0  # no waiting: back when aclose returns
    await stream.aclose()  # idempotent
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    async with db.iterate(query, batch=10) as rows:
        async for row in rows:
            if row["x"] == 3:
                break
    assert db.statistics().pool.in_use == 0
    with pytest.raises(KeyError):
        async for row in db.iterate(query, batch=10):
            raise KeyError(row["x"])
    await released(db)
    assert await server_cursors(target, db) == 0
    assert await db.fetchval("SELECT 1") == 1
    await until(lambda: asyncio.all_tasks() <= tasks_before | {asyncio.current_task()})


async def test_cancellation_leaks_nothing(target: Target, sup: Supervisor) -> None:
    db = sup.db
    tasks_before = asyncio.all_tasks()
    query = numbers(target, 200_000, pad=20)
    seen: list[int] = []

    async def reader() -> None:
        async for row in db.iterate(query, batch=50):
            seen.append(row["x"])
            if row["x"] % 50 == 0:
                await asyncio.sleep(0)  # the body awaits too: cancelled there or in a fetch

    for delay in [0, 0.001, 0.005, 0.02, 0.05, 0.2]:
        task = asyncio.create_task(reader())
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await released(db)

        async def closed() -> bool:  # (a MySQL server ends a closed connection's query soon)
            return await server_cursors(target, db) == 0

        await until_async(closed, timeout=5, interval=0.05)
    assert seen  # some readers were cancelled mid-stream
    seen.clear()

    async def in_transaction() -> None:
        async with db.transaction() as tx:
            async for row in tx.iterate(query, batch=50):
                seen.append(row["x"])
                await asyncio.sleep(0)

    for delay in [0, 0.005, 0.05, 0.2]:
        task = asyncio.create_task(in_transaction())
        await asyncio.sleep(delay)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await released(db)
    assert seen
    assert await db.fetchval("SELECT 1") == 1
    await until(lambda: asyncio.all_tasks() <= tasks_before | {asyncio.current_task()})
    assert db.state is State.CONNECTED


async def test_iterate_inside_a_transaction(target: Target, sup: Supervisor) -> None:
    db = sup.db
    await db.execute("DROP TABLE IF EXISTS streamed", idempotent=True)
    await db.execute("CREATE TABLE streamed (x integer)", idempotent=True)
    ins = target.dialect.sql("INSERT INTO streamed (x) VALUES ({1})")
    async with db.transaction() as tx:
        await tx.executemany(ins, [(i,) for i in range(1, 51)])
        # Uncommitted rows: only the transaction's own connection sees them.
        assert [r["x"] async for r in tx.iterate("SELECT x FROM streamed ORDER BY x", batch=7)] == (
            list(range(1, 51))
        )
        async for row in tx.iterate("SELECT x FROM streamed ORDER BY x", batch=5):
            if row["x"] == 12:
                break
        async with tx.iterate("SELECT x FROM streamed ORDER BY x", batch=5) as rows:
            assert (await rows.__anext__())["x"] == 1
        if target.dialect.name == "postgres":
            assert await tx.fetchval("SELECT count(*) FROM pg_cursors WHERE name <> ''") == 0
        # db.iterate in the block joins the transaction, as db.fetch does.
        joined = [r["x"] async for r in db.iterate("SELECT x FROM streamed", batch=100)]
        assert len(joined) == 50
        await tx.execute(ins, 51)
    assert await db.fetchval("SELECT count(*) FROM streamed") == 51
    assert db.statistics().pool.in_use == 0
    async with db.transaction() as tx:
        stream = tx.iterate("SELECT x FROM streamed", batch=1)
        await stream.__anext__()
    with pytest.raises(Exception, match="block has ended"):
        await stream.__anext__()  # the handle's block ended: nothing is sent
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()
    del stream  # its connection is another caller's now: dropping it touches nothing
    assert db.statistics().pool.in_use == 0 and await db.fetchval("SELECT 1") == 1


async def test_bad_arguments_refused_before_anything_is_sent(
    target: Target, sup: Supervisor
) -> None:
    db = sup.db
    for bad in [0, -1, True, 1.5, "10", None]:
        with pytest.raises(ValueError, match="batch must be"):
            db.iterate("SELECT 1", batch=bad)  # type: ignore[arg-type]
    for timeout in [0, -1, "1", True]:
        with pytest.raises(ValueError, match="timeout must be"):
            db.iterate("SELECT 1", timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idempotent must be"):
        db.iterate("SELECT 1", idempotent="yes")  # type: ignore[arg-type]
    async with db.transaction() as tx:
        with pytest.raises(ValueError, match="batch must be"):
            tx.iterate("SELECT 1", batch=0)
    assert db.statistics().pool.in_use == 0


async def test_query_error_is_the_drivers_own(target: Target, sup: Supervisor) -> None:
    db = sup.db
    with pytest.raises(Exception) as info:
        async for _ in db.iterate("SELEC 1"):
            pass
    assert target.faults.syntax_error(info.value)
    stream = db.iterate("SELEC 1")
    with pytest.raises(Exception, match=r"(?i)syntax"):
        await stream.__anext__()
    with pytest.raises(StopAsyncIteration):  # over: nothing more is sent
        await stream.__anext__()
    assert db.statistics().replays == 0 and db.statistics().pool.in_use == 0


async def test_before_the_first_row_a_lost_connection_is_replayed(
    target: Target, sup: Supervisor
) -> None:
    db = sup.db
    assert await db.fetchval("SELECT 1") == 1
    await kill_underneath(target, sup)
    assert [r["x"] async for r in db.iterate(numbers(target, 30), batch=4)] == list(range(1, 31))


async def test_sqlite_connection_closed_mid_stream(target: Target, sup: Supervisor) -> None:
    if target.dialect.name != "sqlite":
        pytest.skip("the server backends are cut off through a FaultProxy below")
    db = sup.db
    stream = db.iterate(numbers(target, 1000), batch=10)
    for _ in range(15):
        await stream.__anext__()
    await kill_underneath(target, sup)
    with pytest.raises(StreamInterrupted) as info:
        async for _ in stream:
            pass
    assert info.value.rows_delivered == 20 and "20 rows" in str(info.value)
    await released(db)
    assert await db.fetchval("SELECT 1") == 1


async def test_closing_the_supervisor_ends_an_open_stream(target: Target) -> None:
    if target.dialect.name != "sqlite":
        pytest.skip("the same on every backend; the close waits its bound for the stream")
    s = supervised(target.dsn, min_size=1)
    await s.start()
    stream = s.db.iterate(numbers(target, 1000), batch=10)
    await stream.__anext__()
    await s.aclose()  # waits a few seconds for the connection the stream holds, then closes it
    with pytest.raises(SupervisorClosed, match="10 rows had been delivered"):
        async for _ in stream:
            pass


# -- through a FaultProxy (the server backends) ------------------------------------------------


async def test_reset_before_the_first_row_is_replayed(
    server_target: Target, proxy: FaultProxy
) -> None:
    query = numbers(server_target, 500, sleep=0.5)
    async with supervised(server_target.via(proxy), min_size=1, max_size=2) as s:
        db = s.db
        stream = db.iterate(query, batch=100)
        first = asyncio.create_task(stream.__anext__())

        async def running() -> bool:
            return await server_target.app_connections(running=query[:20]) == 1

        await until_async(running)
        resets = proxy.reset()
        assert resets >= 1 and proxy.stats.resets >= resets
        assert (await first)["x"] == 1
        assert [r["x"] async for r in stream] == list(range(2, 501))
        assert db.statistics().replays >= 1
        await released(db)
        # The replay ran in the backend's read-only transaction, ended with the stream.
        async with db.acquire() as raw:
            if server_target.dialect.name == "postgres":
                assert not raw.is_in_transaction()
            else:
                assert not raw.get_transaction_status()


async def test_reset_after_the_first_row_raises_stream_interrupted(
    server_target: Target, proxy: FaultProxy
) -> None:
    total, batch = 100_000, 100
    query = numbers(server_target, total, pad=500)
    async with supervised(server_target.via(proxy), min_size=1, max_size=2) as s:
        db = s.db
        stream = db.iterate(query, batch=batch)
        assert [(await stream.__anext__())["x"] for _ in range(150)] == list(range(1, 151))
        resets = proxy.reset()
        assert resets >= 1 and proxy.stats.resets >= resets
        with pytest.raises(StreamInterrupted) as info:
            async for _ in stream:
                pass
        n = info.value.rows_delivered
        assert n == stream.rows_delivered and f"{n} rows" in str(info.value)
        assert n % batch == 0 and 200 <= n < total  # rows of whole batches, never replayed
        if server_target.dialect.name == "postgres":
            assert n == 200  # each batch is one round trip: nothing was read ahead
        assert info.value.__cause__ is not None
        assert db.statistics().replays == 0
        await released(db)
        assert await db.fetchval("SELECT 1") == 1


async def test_a_later_batch_past_its_timeout_interrupts(server_target: Target) -> None:
    """``timeout`` bounds each batch: one that stalls ends the stream, counted, discarded."""
    if server_target.dialect.name == "postgres":
        slow = "SELECT g AS x, CASE WHEN g = 45 THEN pg_sleep(3) END FROM generate_series(1, 100) g"
    else:
        # Rows larger than the server's network buffer, so each is sent as it is made.
        slow = "SELECT seq AS x, IF(seq = 45, SLEEP(3), REPEAT('x', 20000)) FROM seq_1_to_100"
    async with supervised(server_target.dsn, min_size=1, max_size=2) as s:
        db = s.db
        tasks_before = asyncio.all_tasks()
        stream = db.iterate(slow, batch=10, timeout=1)
        with pytest.raises(StreamInterrupted) as info:
            async for _ in stream:
                pass
        assert info.value.rows_delivered == 40 and isinstance(info.value.__cause__, TimeoutError)
        await released(db)
        assert db.statistics().replays == 0
        assert await db.fetchval("SELECT 1") == 1
        await until(lambda: asyncio.all_tasks() <= tasks_before | {asyncio.current_task()})


# -- the small things shipped with streams -----------------------------------------------------


async def test_executemany_returns_none_everywhere(target: Target, sup: Supervisor) -> None:
    db = sup.db
    await db.execute("DROP TABLE IF EXISTS many", idempotent=True)
    await db.execute("CREATE TABLE many (x integer)", idempotent=True)
    ins = target.dialect.sql("INSERT INTO many (x) VALUES ({1})")
    assert await db.executemany(ins, [(1,), (2,)]) is None
    async with db.transaction() as tx:
        assert await tx.executemany(ins, [(3,)]) is None
    assert await db.fetchval("SELECT count(*) FROM many") == 3


async def test_close_is_an_alias_of_aclose(target: Target) -> None:
    s = supervised(target.dsn, min_size=1)
    await s.start()
    await s.close()
    assert s.state is State.CLOSED
    s = supervised(target.dsn, min_size=1)
    await s.start()
    db = s.db
    await db.close()  # closes the supervisor it belongs to
    assert s.state is State.CLOSED
    await db.aclose()  # idempotent


async def test_asyncpg_record_class_reaches_every_row(pg: PostgresServer) -> None:
    """PostgreSQL rows are asyncpg Records, or the ``record_class`` of ``connect_kwargs``:
    the same class from every method, streams and transactions included."""
    import asyncpg

    class Mine(asyncpg.Record):
        pass

    async with supervised(pg.dsn(), connect_kwargs={"record_class": Mine}) as s:
        db = s.db
        assert type(await db.fetchrow("SELECT 1 AS a")) is Mine
        assert all(type(r) is Mine for r in await db.fetch("SELECT 1 AS a"))
        assert [type(r) async for r in db.iterate("SELECT 1 AS a")] == [Mine]
        async with db.transaction() as tx:
            assert type(await tx.fetchrow("SELECT 1 AS a")) is Mine
            assert [type(r) async for r in tx.iterate("SELECT 1 AS a")] == [Mine]
