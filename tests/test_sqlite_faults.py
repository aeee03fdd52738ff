"""SQLite through the supervisor, on real temp-file databases: the API, another process holding
the write lock, the file moved away and back, connections closed underneath, :memory:,
cancellation of a running statement, and query errors."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from harness.polling import until
from resilientdb import ConfigurationError, DatabaseUnavailable, State, Supervisor, events
from resilientdb.backends.sqlite import SQLiteBackend, SQLiteLease, error_code
from tests.handles import Recorder, adapter, supervised

LONG = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000000) "
    "SELECT count(*) FROM c"
)

# Another OS process takes the write lock, says so, holds it, commits.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO log VALUES ('locker')")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
conn.close()
"""


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "app.db")


@pytest.fixture
async def threads() -> AsyncIterator[None]:
    """Fails the test if it leaves a thread behind (aiosqlite workers, subprocess watchers)."""
    before = threading.active_count()
    yield
    await until(lambda: threading.active_count() <= before, timeout=5)


async def hold_write_lock(path: str, seconds: float) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", LOCKER, path, str(seconds), stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout=10)
    assert line.strip() == b"locked"
    return proc


async def finished(proc: asyncio.subprocess.Process) -> None:
    await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 0


async def make_log(sup: Supervisor) -> None:
    await sup.db.execute("CREATE TABLE log (v TEXT)")


def committed(path: str, sql: str) -> Any:
    """What another connection sees (a local file: instant)."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchone()[0]
    finally:
        conn.close()


def on_disk(path: str) -> bool:
    return os.path.exists(path)  # a local temp file: instant


def backend(sup: Supervisor) -> SQLiteBackend:
    return cast(SQLiteBackend, adapter(sup))


async def test_api_and_row_shape(path: str, threads: None) -> None:
    hooked: list[Any] = []

    async def on_connect(conn: Any) -> None:
        hooked.append(conn)
        await conn.execute("PRAGMA foreign_keys = ON")

    sup = supervised("sqlite:///" + path, on_connect=on_connect)
    async with sup:
        db = sup.db
        assert sup.state is State.CONNECTED
        assert await db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)") == -1
        assert await db.execute("INSERT INTO t (name) VALUES (?), (?)", "a", "b") == 2
        rows = await db.fetch("SELECT id, name FROM t ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "a"), (2, "b")]
        row = rows[1]
        assert row[0] == 2 and row["name"] == "b" and dict(row) == {"id": 2, "name": "b"}
        assert len(row) == 2 and list(row.keys()) == ["id", "name"]
        assert await db.fetchrow("SELECT * FROM t WHERE id = :id", {"id": 1}) == (1, "a")
        assert await db.fetchrow("SELECT * FROM t WHERE id = 99") is None
        assert await db.fetchval("SELECT name, id FROM t WHERE id = 1", column=1) == 1
        assert await db.fetchval("SELECT 1 WHERE 0") is None
        assert await db.executemany("INSERT INTO t (name) VALUES (?)", [("c",), ("d",)]) is None
        with pytest.raises(sqlite3.IntegrityError):  # the batch is atomic: all rows or none
            await db.executemany("INSERT INTO t (id, name) VALUES (?, ?)", [(9, "x"), (1, "y")])
        assert await db.fetchval("SELECT count(*) FROM t") == 4
        assert await db.fetchval("PRAGMA journal_mode") == "wal"
        assert await db.fetchval("PRAGMA foreign_keys") == 1  # on_connect ran on it
        # A BEGIN sent as a single statement does not leave the pooled connection in a
        # transaction: the next statement is committed on its own.
        await db.execute("BEGIN")
        await db.execute("INSERT INTO t (name) VALUES ('e')")
        assert committed(path, "SELECT count(*) FROM t") == 5
        # The escape hatch: aiosqlite's own connection, with SQLite's whole busy timeout.
        async with db.acquire() as raw, raw.execute("PRAGMA busy_timeout") as cur:
            assert await cur.fetchone() == (5000,)
        stats = sup.stats()["default"]
        assert stats["db.client.connection.count"]["used"] == 0
    assert on_disk(path)
    assert hooked and all(not cast(Any, c)._running for c in hooked)  # all closed


async def test_transactions_hold_the_connection_whole(path: str, threads: None) -> None:
    sup = supervised("sqlite:///" + path, max_size=3)
    assert backend(sup).begin_statements(None, False) == ("BEGIN IMMEDIATE",)
    assert backend(sup).begin_statements("SERIALIZABLE", True) == (
        "BEGIN DEFERRED TRANSACTION",
    )  # + query_only
    async with sup:
        await make_log(sup)
        async with sup.db.transaction() as tx:  # BEGIN IMMEDIATE: the write lock is ours now
            await tx.execute("INSERT INTO log VALUES ('tx')")
            other = asyncio.create_task(sup.db.execute("INSERT INTO log VALUES ('other')"))
            # A reader beside the writer (another task: this one's calls join the transaction)
            # sees the last committed state at once (WAL).
            reader = asyncio.create_task(sup.db.fetchval("SELECT count(*) FROM log", timeout=2))
            assert await reader == 0
            assert await sup.db.fetchval("SELECT count(*) FROM log") == 1  # joined
            await asyncio.sleep(0.3)
            assert not other.done()  # the other writer waits for the lock
        assert await asyncio.wait_for(other, timeout=5) == 1
        async with backend(sup).acquire(5) as conn:
            await conn.execute("BEGIN IMMEDIATE")
            assert cast(SQLiteLease, conn).in_transaction
            await conn.execute("INSERT INTO log VALUES ('left open')")
        # A transaction a single statement leaves open is rolled back when its lease ends:
        # the next statement must not end up inside it.
        await sup.db.execute("/* hidden */ BEGIN")
        await sup.db.execute("INSERT INTO log VALUES ('autocommit')")
        assert committed(path, "SELECT count(*) FROM log") == 3
        values = sorted(r[0] for r in await sup.db.fetch("SELECT v FROM log"))
        assert values == ["autocommit", "other", "tx"]  # released in a transaction: rolled back


async def test_statement_never_runs_inside_another_leases_transaction(
    path: str, threads: None
) -> None:
    # Regression: two leases held at once used to share one connection, so a single INSERT
    # ran inside the other lease's open transaction and was then rolled back with it (or by
    # the adapter's own clean-up ROLLBACK) although it had been reported a success.
    sup = supervised("sqlite:///" + path, min_size=1, max_size=2)
    async with sup:
        await make_log(sup)
        pool = backend(sup)
        async with pool.acquire(5) as single, pool.acquire(5) as other:
            await other.execute("BEGIN IMMEDIATE")
            await other.execute("INSERT INTO log VALUES ('rolled back')")
            insert = asyncio.create_task(single.execute("INSERT INTO log VALUES ('single')"))
            await asyncio.sleep(0.3)
            assert not insert.done()  # it waits for the write lock, outside the transaction
            await other.execute("ROLLBACK")
            assert await asyncio.wait_for(insert, timeout=5) == 1
        assert committed(path, "SELECT group_concat(v) FROM log") == "single"
        assert pool.stats().size == 2 and pool.stats().in_use == 0


async def test_acknowledged_writes_survive_concurrent_rolled_back_transactions(
    path: str, threads: None
) -> None:
    # Regression for the ledger's lost writes: single-statement INSERTs that succeeded must all
    # be there, while transactions beside them on the same small pool are rolled back.
    sup = supervised("sqlite:///" + path, max_size=3)
    acknowledged: list[int] = []

    class Abort(Exception):
        pass

    async def doomed(tx: Any) -> None:
        await tx.execute("INSERT INTO log VALUES ('doomed')")
        raise Abort

    async def worker(n: int, stop_at: float) -> None:
        for i in range(100_000):
            if time.monotonic() >= stop_at:
                return
            if (n + i) % 2:
                with pytest.raises(Abort):
                    await sup.db.run_in_transaction(doomed, timeout=10)
            else:
                await sup.db.execute("INSERT INTO log VALUES (?)", str(n * 100_000 + i))
                acknowledged.append(n * 100_000 + i)

    async with sup:
        await make_log(sup)
        stop_at = time.monotonic() + 2.0
        await asyncio.gather(*(worker(n, stop_at) for n in range(8)))
        rows = [r[0] for r in await sup.db.fetch("SELECT v FROM log")]
    assert len(acknowledged) > 50
    assert "doomed" not in rows
    assert sorted(rows) == sorted(str(v) for v in acknowledged)


async def test_writer_waits_for_another_process_then_succeeds(path: str, threads: None) -> None:
    sup = supervised("sqlite:///" + path)
    rec = Recorder(sup)
    async with sup:
        await make_log(sup)
        proc = await hold_write_lock(path, 1.0)
        started = time.monotonic()
        write = asyncio.create_task(sup.db.execute("INSERT INTO log VALUES ('app')"))
        await asyncio.sleep(0.2)
        # Readers are not blocked by the writer (WAL): this opens a second connection,
        # since the first is stuck behind the lock.
        assert await sup.db.fetchval("SELECT count(*) FROM log", timeout=2) == 0
        assert not write.done()
        assert await asyncio.wait_for(write, timeout=10) == 1
        assert time.monotonic() - started >= 0.5  # it really waited for the lock
        await finished(proc)
        values = sorted(r[0] for r in await sup.db.fetch("SELECT v FROM log"))
        assert values == ["app", "locker"]
    assert rec.of(events.ErrorOccurred) == []


async def test_busy_past_the_busy_timeout_is_retried(path: str, threads: None) -> None:
    sup = supervised("sqlite:///" + path + "?timeout=0.1", max_replays=30)
    rec = Recorder(sup)
    async with sup:
        await make_log(sup)
        proc = await hold_write_lock(path, 0.8)
        assert await sup.db.execute("INSERT INTO log VALUES ('app')", timeout=10) == 1
        await finished(proc)
        assert await sup.db.fetchval("SELECT count(*) FROM log WHERE v = 'app'") == 1
        runs = 0

        async def work(tx: Any) -> None:
            nonlocal runs
            runs += 1
            await tx.execute("INSERT INTO log VALUES ('tx')")

        proc = await hold_write_lock(path, 0.6)
        await sup.db.run_in_transaction(work, retries=30, timeout=10)
        await finished(proc)
        assert runs == 1  # BUSY came at BEGIN IMMEDIATE, before the callable ran
        assert await sup.db.fetchval("SELECT count(*) FROM log WHERE v = 'tx'") == 1
    replays = rec.of(events.OperationReplayed)
    assert {r.operation for r in replays} == {"execute", "run_in_transaction"}
    assert {r.reason for r in replays} == {"OperationalError"}  # SQLITE_BUSY
    assert rec.of(events.Disconnected) == []  # a busy database is not an outage


async def test_cancelled_writer_waiting_for_the_lock_never_writes(path: str, threads: None) -> None:
    sup = supervised("sqlite:///" + path, max_size=1)
    async with sup:
        await make_log(sup)
        proc = await hold_write_lock(path, 1.5)
        write = asyncio.create_task(sup.db.execute("INSERT INTO log VALUES ('cancelled')"))
        await asyncio.sleep(0.3)
        started = time.monotonic()
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert time.monotonic() - started < 1.0  # stopped waiting within a busy slice
        await finished(proc)
        assert await sup.db.fetchval("SELECT count(*) FROM log WHERE v = 'cancelled'") == 0
        assert await sup.db.fetchval("SELECT count(*) FROM log") == 1  # the locker's row


async def test_file_moved_away_fails_without_a_new_file_then_heals(
    path: str, threads: None
) -> None:
    sup = supervised("sqlite:///" + path, failed_probe_interval=0.2, max_size=2)
    rec = Recorder(sup)
    async with sup:
        await make_log(sup)
        await sup.db.execute("INSERT INTO log VALUES ('before')")
        os.rename(path, path + ".moved")
        await asyncio.sleep(0.1)  # past the file check interval
        with pytest.raises(DatabaseUnavailable) as info:
            await sup.db.execute("INSERT INTO log VALUES ('while moved')")
        cause = info.value.__cause__
        assert error_code(cast(BaseException, cause)) == sqlite3.SQLITE_CANTOPEN
        assert sup.state is State.FAILED
        with pytest.raises(DatabaseUnavailable):
            await sup.db.fetchval("SELECT 1")  # fails fast while FAILED
        await asyncio.sleep(0.5)  # a few slow probes
        assert not on_disk(path)  # never an empty database in its place
        os.rename(path + ".moved", path)
        await sup.wait_until_connected(timeout=5)
        values = [r[0] for r in await sup.db.fetch("SELECT v FROM log")]
        assert values == ["before"]
        await sup.db.execute("INSERT INTO log VALUES ('after')")
        assert await sup.db.fetchval("SELECT count(*) FROM log") == 2
    assert rec.of(events.ReconnectFailed)[0].permanent
    assert len(rec.of(events.Reconnected)) == 1


async def test_mode_rw_never_creates_the_file(path: str, threads: None) -> None:
    sup = supervised("sqlite:///" + path + "?mode=rw", failed_probe_interval=0.2)
    async with sup:
        assert sup.state is State.FAILED
        with pytest.raises(DatabaseUnavailable):
            await sup.db.fetchval("SELECT 1")
        assert not on_disk(path)
        sqlite3.connect(path).close()  # somebody creates it: healed
        await sup.wait_until_connected(timeout=5)
        assert await sup.db.fetchval("SELECT 1") == 1


async def test_relative_path_is_created_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: None
) -> None:
    monkeypatch.chdir(tmp_path)
    sup = supervised("sqlite:///rel.db")
    async with sup:
        await sup.db.execute("CREATE TABLE t (x)")
        monkeypatch.chdir("/")  # resolved at construction: still the same file
        await sup.db.execute("INSERT INTO t VALUES (1)")
    assert (tmp_path / "rel.db").exists()
    check = sqlite3.connect(tmp_path / "rel.db")
    assert check.execute("SELECT count(*) FROM t").fetchone() == (1,)
    check.close()


async def test_connection_closed_underneath_is_reopened_and_replayed(
    path: str, threads: None
) -> None:
    sup = supervised("sqlite:///" + path, min_size=1, max_size=1)
    rec = Recorder(sup)
    async with sup:
        await make_log(sup)
        async with sup.db.acquire() as raw:
            pass
        await raw.close()  # behind the pool's back, while idle
        # A write: replayed only because aiosqlite refused it before anything ran.
        assert await sup.db.execute("INSERT INTO log VALUES ('one')") == 1
        link = backend(sup)._pool._idle[-1]
        await cast(Any, link.aconn)._execute(link.db.close)  # sqlite3 closed, aiosqlite not
        assert await sup.db.execute("INSERT INTO log VALUES ('two')") == 1
        assert sorted(r[0] for r in await sup.db.fetch("SELECT v FROM log")) == ["one", "two"]
        assert sup.state is State.CONNECTED
    # One connection dying is no outage: the check found the file fine, nothing was retired.
    assert not rec.of(events.Reconnected) and not rec.of(events.Disconnected)
    reasons = [e.reason for e in rec.of(events.OperationReplayed)]
    assert reasons == ["ValueError", "ProgrammingError"]


async def test_closed_underneath_while_the_pool_retires_it_never_hangs(
    path: str, threads: None
) -> None:
    # aiosqlite's close() waits forever if another closer stopped the thread first; the pool
    # retiring a connection that someone is closing (as the ledger's fault does) must not
    # make either side hang.
    sup = supervised("sqlite:///" + path, min_size=2, max_size=2)
    async with sup:
        pool = backend(sup)
        first, second = pool.raw_connections()
        closing = asyncio.create_task(first.close())
        await asyncio.sleep(0)  # its close is queued on the worker thread
        refreshing = asyncio.create_task(pool.refresh())  # retires both idle connections
        await asyncio.sleep(0)
        await asyncio.wait_for(second.close(), timeout=5)  # after the pool began closing it
        await asyncio.wait_for(asyncio.gather(closing, refreshing), timeout=10)
        assert pool.raw_connections() == []
        assert await sup.db.fetchval("SELECT 1", timeout=5) == 1


async def test_memory_database_keeps_its_data(threads: None) -> None:
    sup = supervised("sqlite:///:memory:", max_size=5)
    async with sup:
        db = sup.db
        await db.execute("CREATE TABLE t (x)")
        await asyncio.gather(*(db.execute("INSERT INTO t VALUES (?)", i) for i in range(50)))
        counts = await asyncio.gather(*(db.fetchval("SELECT count(*) FROM t") for _ in range(20)))
        assert counts == [50] * 20
        assert backend(sup).stats().size == 1  # one shared connection
        # A statement timeout discards a file connection; :memory:'s is the database: kept.
        with pytest.raises(DatabaseUnavailable):
            await db.fetchval(LONG, timeout=0.3)
        await backend(sup).refresh()  # what a reconnect does: the data survives it too
        assert await db.fetchval("SELECT count(*) FROM t") == 50
        # A transaction holds the one connection whole: others wait for it.
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO t VALUES (-1)")
            reader = asyncio.create_task(db.fetchval("SELECT count(*) FROM t"))
            await asyncio.sleep(0.1)
            assert not reader.done()
        assert await asyncio.wait_for(reader, timeout=5) == 51


async def test_cancellation_interrupts_a_running_statement(path: str, threads: None) -> None:
    sup = supervised("sqlite:///" + path, max_size=1)
    async with sup:
        tasks_before = asyncio.all_tasks()
        query = asyncio.create_task(sup.db.fetchval(LONG))
        await asyncio.sleep(0.3)
        assert not query.done()
        started = time.monotonic()
        query.cancel()
        with pytest.raises(asyncio.CancelledError):
            await query
        assert time.monotonic() - started < 1.5
        # The one connection's thread is free again: nothing is left running on it.
        started = time.monotonic()
        assert await sup.db.fetchval("SELECT 1") == 1
        assert time.monotonic() - started < 1.0
        # Cancel at many points, queued behind each other on the one connection too.
        for delay in [0, 0.001, 0.005, 0.02, 0.05]:
            calls = [asyncio.create_task(sup.db.fetchval(LONG)) for _ in range(5)]
            await asyncio.sleep(delay)
            for c in calls:
                c.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        await until(lambda: backend(sup).stats().in_use == 0, timeout=5)
        assert asyncio.all_tasks() <= tasks_before | {asyncio.current_task()}
        started = time.monotonic()
        assert await sup.db.fetchval("SELECT 2") == 2
        assert time.monotonic() - started < 1.0
        # A statement timeout interrupts the same way; the read-only call gives up at its
        # deadline rather than hanging.
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info:
            await sup.db.fetchval(LONG, timeout=0.5)
        assert isinstance(info.value.__cause__, TimeoutError)
        assert time.monotonic() - started < 2.0
        assert await sup.db.fetchval("SELECT 3", timeout=2) == 3


async def test_cancelled_while_queued_returns_at_once_and_never_runs(
    path: str, threads: None
) -> None:
    sup = supervised("sqlite:///" + path, max_size=1)  # everything queues on one connection
    async with sup:
        await make_log(sup)
        running = asyncio.create_task(sup.db.fetchval(LONG))
        await asyncio.sleep(0.2)
        queued = asyncio.create_task(sup.db.execute("INSERT INTO log VALUES ('queued')"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert time.monotonic() - started < 0.5  # nothing of it ran: nothing to wait for
        await asyncio.sleep(0.2)
        assert not running.done()  # the other caller's statement was not interrupted
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert await sup.db.fetchval("SELECT count(*) FROM log") == 0


@pytest.mark.parametrize(
    ("dsn", "kwargs", "message"),
    [
        ("sqlite:///x.db?mode=memory", {}, "mode must be one of"),
        ("sqlite:///x.db?journal_mode=off", {}, "journal_mode must be one of"),
        ("sqlite:///x.db?timeout=-1", {}, "busy timeout"),
        ("sqlite:///x.db?cache=nope", {}, "cache must be"),
        ("sqlite:///x.db", {"connect_kwargs": {"isolation_level": "DEFERRED"}}, "isolation"),
        ("sqlite:///x.db?busy=1", {}, "unknown option"),
    ],
)
def test_bad_settings_fail_at_construction(dsn: str, kwargs: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        supervised(dsn, **kwargs)
