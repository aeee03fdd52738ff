"""Attack on issue 14's streams, on the real MariaDB: a MySQL connection carries one result at
a time, and any other statement on it first reads the rest of an open unbuffered result away.
A statement run in the transaction (or a second ``tx.iterate``) inside a ``tx.iterate`` loop
did so, and the stream then ended quietly as if its result had no more rows: rows went
missing without a word. The stream must raise ``StreamInterrupted`` at its next read, with the
count; the statement and the transaction are unharmed."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator

import pytest

from harness.polling import until
from harness.servers import MariaDBServer
from resilientdb import StreamInterrupted, Supervisor

ROWS = 50


@pytest.fixture
async def sup(mariadb: MariaDBServer) -> AsyncIterator[Supervisor]:
    async with Supervisor(mariadb.dsn(), min_size=1, max_size=2) as s:
        await s.db.execute("DROP TABLE IF EXISTS attack14_stream")
        await s.db.execute("CREATE TABLE attack14_stream (id int PRIMARY KEY, v text)")
        await s.db.executemany(
            "INSERT INTO attack14_stream VALUES (%s, %s)", [(i, "v") for i in range(1, ROWS + 1)]
        )
        yield s


@pytest.mark.filterwarnings("ignore:Previous unbuffered result")
async def test_a_statement_inside_the_loop_does_not_end_the_stream_quietly(
    sup: Supervisor,
) -> None:
    seen: list[int] = []
    async with sup.db.transaction() as tx:
        with pytest.raises(StreamInterrupted) as info:
            async for row in tx.iterate("SELECT id FROM attack14_stream ORDER BY id", batch=5):
                seen.append(row["id"])
                if len(seen) == 3:
                    await tx.execute("UPDATE attack14_stream SET v = 'x' WHERE id = 1")
        assert info.value.rows_delivered == len(seen) == 5
        assert "another statement" in str(info.value)
        # The transaction goes on: its statement stands, and it commits.
        assert await tx.fetchval("SELECT v FROM attack14_stream WHERE id = 1") == "x"
    assert await sup.db.fetchval("SELECT v FROM attack14_stream WHERE id = 1") == "x"
    assert sup.db.statistics().pool.in_use == 0


@pytest.mark.filterwarnings("ignore:Previous unbuffered result")
async def test_a_nested_stream_does_not_end_the_outer_one_quietly(sup: Supervisor) -> None:
    outer: list[int] = []
    inner: list[int] = []
    async with sup.db.transaction() as tx:
        with pytest.raises(StreamInterrupted):
            async for row in tx.iterate("SELECT id FROM attack14_stream ORDER BY id", batch=5):
                outer.append(row["id"])
                if len(outer) == 1:
                    async for r in tx.iterate("SELECT id FROM attack14_stream WHERE id < 4"):
                        inner.append(r["id"])
    assert inner == [1, 2, 3] and outer == [1, 2, 3, 4, 5]


async def test_a_stream_read_to_its_end_in_a_transaction_still_ends_normally(
    sup: Supervisor,
) -> None:
    """Exactly a whole number of batches: the end is found by an empty read, not an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        async with sup.db.transaction() as tx:
            ids = [r["id"] async for r in tx.iterate("SELECT id FROM attack14_stream", batch=10)]
            await tx.execute("UPDATE attack14_stream SET v = 'y' WHERE id = 2")
        assert len(ids) == ROWS
        ids = [r["id"] async for r in sup.db.iterate("SELECT id FROM attack14_stream", batch=10)]
        assert len(ids) == ROWS


async def test_a_write_streamed_and_cut_off_is_outcome_unknown(mariadb: MariaDBServer) -> None:
    """``DELETE ... RETURNING`` streamed (a queue drained), the connection reset after the
    first rows: whether the server applied the statement is unknown (autocommit ends it after
    the last row is sent), so the caller gets ``OutcomeUnknown``, not the read's
    ``StreamInterrupted`` ("run the query again"), with the count in a note. A read cut off
    the same way is still ``StreamInterrupted``."""
    from resilientdb import OutcomeUnknown
    from resilientdb.config import parse_dsn, with_host
    from resilientdb.testing import FaultProxy

    async with FaultProxy(mariadb.host, mariadb.port) as proxy:
        dsn = with_host(parse_dsn(mariadb.dsn()), proxy.host, proxy.port)
        async with Supervisor(dsn, min_size=1, max_size=2, connect_timeout=2.0) as s:
            db = s.db
            await db.execute("DROP TABLE IF EXISTS attack14_queue")
            await db.execute("CREATE TABLE attack14_queue (id int PRIMARY KEY, pad text)")
            await db.execute(
                "INSERT INTO attack14_queue SELECT seq, REPEAT('x', 300) FROM seq_1_to_20000"
            )
            for query, expected in [
                ("SELECT id, pad FROM attack14_queue", StreamInterrupted),
                ("DELETE FROM attack14_queue RETURNING id, pad", OutcomeUnknown),
            ]:
                resets = proxy.stats.resets
                seen = 0
                with pytest.raises(expected) as info:
                    async for _row in db.iterate(query, batch=10):
                        seen += 1
                        if seen == 1:
                            proxy.reset()
                assert proxy.stats.resets > resets  # the fault happened
                assert (
                    not isinstance(info.value, StreamInterrupted) or expected is StreamInterrupted
                )
                assert str(seen) in str(info.value) + " ".join(getattr(info.value, "__notes__", []))


@pytest.mark.parametrize("how", ["break", "aclose"])
async def test_a_write_streamed_and_left_early_runs_to_its_end(
    mariadb: MariaDBServer, how: str
) -> None:
    """Leaving a ``DELETE ... RETURNING`` stream early closed its connection, which killed the
    statement on the server: the rows the caller had received (a queue's jobs, processed)
    were not deleted after all, silently, and would come again. Whether it was rolled back or
    not depended on how much of the result the network had buffered. A write streamed runs to
    its end, as ``execute`` would run it: leaving early stops the reading, not the
    statement."""
    async with Supervisor(mariadb.dsn(), min_size=1, max_size=2) as s:
        db = s.db
        await db.execute("DROP TABLE IF EXISTS attack14_queue2")
        await db.execute("CREATE TABLE attack14_queue2 (id int PRIMARY KEY, pad text)")
        await db.execute(
            "INSERT INTO attack14_queue2 SELECT seq, REPEAT('x', 500) FROM seq_1_to_20000"
        )
        seen = 0
        stream = db.iterate("DELETE FROM attack14_queue2 RETURNING id, pad", batch=10)
        async for _row in stream:
            seen += 1
            if seen == 15:
                if how == "aclose":
                    await stream.aclose()
                break
        del stream, _row
        await until(lambda: db.statistics().pool.in_use == 0, timeout=10)
        assert await db.fetchval("SELECT count(*) FROM attack14_queue2") == 0
