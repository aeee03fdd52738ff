"""Attack probes, SQLite: concurrent writers, deadlines, session state."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from resilientdb import OutcomeUnknown, Supervisor
from tests.audit_support import outcome_of


def make_db(tmp_path: Path) -> Path:
    path = tmp_path / "attack.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE ledger (id text NOT NULL)")
    conn.commit()
    conn.close()
    return path


def count(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM ledger").fetchone()[0])
    finally:
        conn.close()


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another connection (another thread) holds the write lock for ``seconds``."""
    ready = threading.Event()

    def run() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        ready.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    ready.wait(5)
    return t


async def test_sqlite_busy_single_insert_is_applied_once(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    holder = hold_write_lock(path, 1.5)
    async with Supervisor(f"sqlite:///{path}?timeout=1") as sup:
        outcome = await outcome_of(sup.db.execute("INSERT INTO ledger VALUES ('a')", timeout=10))
    await asyncio.to_thread(holder.join, 5)
    n = count(path)
    assert not isinstance(outcome, Exception) or isinstance(outcome, OutcomeUnknown), outcome
    assert n == (0 if isinstance(outcome, Exception) else 1), f"{outcome!r}; {n} rows"


async def test_sqlite_busy_executemany_applies_nothing_or_all(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    holder = hold_write_lock(path, 1.5)
    async with Supervisor(f"sqlite:///{path}?timeout=1") as sup:
        outcome = await outcome_of(
            sup.db.executemany("INSERT INTO ledger VALUES (?)", [("a",), ("b",)], timeout=10)
        )
    await asyncio.to_thread(holder.join, 5)
    n = count(path)
    if isinstance(outcome, OutcomeUnknown):
        assert n in (0, 2)
    elif isinstance(outcome, Exception):
        assert n == 0, f"{outcome!r}; {n} rows"
    else:
        assert n == 2


async def test_sqlite_slow_query_ends_within_deadline(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    slow = (
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000000) "
        "SELECT count(*) FROM c"
    )
    async with Supervisor(f"sqlite:///{path}") as sup:
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await outcome_of(sup.db.fetchval(slow, timeout=0.5))
        took = loop.time() - started
        assert isinstance(outcome, Exception)
        assert took < 0.8, f"{took:.2f}s"
        assert await sup.db.fetchval("SELECT 1", timeout=2) == 1


async def test_sqlite_run_in_transaction_deadline_with_busy_lock(tmp_path: Path) -> None:
    path = make_db(tmp_path)
    holder = hold_write_lock(path, 3)
    async with Supervisor(f"sqlite:///{path}?timeout=5") as sup:

        async def work(tx: object) -> None:
            await tx.execute("INSERT INTO ledger VALUES ('a')")  # type: ignore[attr-defined]

        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome = await outcome_of(sup.db.run_in_transaction(work, timeout=1))
        took = loop.time() - started
    await asyncio.to_thread(holder.join, 5)
    assert isinstance(outcome, Exception)
    assert took < 1.3, f"{took:.2f}s"
    assert count(path) == 0


async def test_sqlite_begin_call_does_not_swallow_later_writes(tmp_path: Path) -> None:
    """``db.execute("BEGIN")`` leaves nothing open for the next caller of that connection."""
    path = make_db(tmp_path)
    async with Supervisor(f"sqlite:///{path}", max_size=1) as sup:
        await outcome_of(sup.db.execute("BEGIN"))
        assert await sup.db.execute("INSERT INTO ledger VALUES ('a')") == 1
    assert count(path) == 1


@pytest.mark.parametrize("cancel_after", [0.0, 0.05, 0.3])
async def test_sqlite_cancelled_transaction_commits_nothing(
    tmp_path: Path, cancel_after: float
) -> None:
    path = make_db(tmp_path)
    async with Supervisor(f"sqlite:///{path}") as sup:

        async def block() -> None:
            async with sup.db.transaction() as tx:
                await tx.execute("INSERT INTO ledger VALUES ('a')")
                await tx.fetchval(
                    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                    "WHERE x < 3000000) SELECT count(*) FROM c"
                )

        task = asyncio.create_task(block())
        await asyncio.sleep(cancel_after)
        task.cancel()
        started = time.monotonic()
        await asyncio.wait({task}, timeout=5)
        assert time.monotonic() - started < 0.5
        assert await sup.db.fetchval("SELECT count(*) FROM ledger", timeout=5) == 0
    assert count(path) == 0


@pytest.mark.parametrize("timeout", [1e9, 1e300, float("inf")])
async def test_sqlite_huge_timeouts_work(tmp_path: Path, timeout: float) -> None:
    path = make_db(tmp_path)
    async with Supervisor(f"sqlite:///{path}") as sup:
        assert await sup.db.fetchval("SELECT 1", timeout=timeout) == 1
        assert await sup.db.execute("INSERT INTO ledger VALUES ('a')", timeout=timeout) == 1
        assert (
            await sup.db.run_in_transaction(
                lambda tx: tx.fetchval("SELECT count(*) FROM ledger"), timeout=timeout
            )
            == 1
        )
        async with sup.db.transaction(timeout=timeout) as tx:
            assert await tx.fetchval("SELECT 1", timeout=timeout) == 1
