"""Audit regressions, transactions: what a transaction block promises (items 2, 3, 4, 12, 13).

* A connection lost after MySQL committed implicitly (DDL, TRUNCATE) is ``OutcomeUnknown``,
  never ``TransactionLost`` ("the server rolled back") and never a re-run of the callable.
* A transaction the server rolled back on its own (PostgreSQL answering COMMIT with ROLLBACK
  after a caught error, MariaDB after a caught deadlock) raises ``TransactionRolledBack``.
* A handle used after its block raises ``TransactionClosed``: nothing sent, no reconnect.
* ``run_in_transaction(timeout=)`` bounds the whole call, and rejects bad timeouts at once.
* ``db.execute`` & co. inside ``async with db.transaction()`` run inside it (same task only);
  a nested ``db.transaction()`` is a savepoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pymysql import err as myerr

from harness.polling import until_async
from harness.servers import MariaDBServer, PostgresServer
from resilientdb import (
    DatabaseUnavailable,
    OutcomeUnknown,
    State,
    Supervisor,
    TransactionClosed,
    TransactionLost,
    TransactionRolledBack,
)
from tests.audit_support import (
    OUTAGE_EVENTS,
    Target,
    make_target,
    my_admin,
    my_connect,
    my_query,
    outcome_of,
    pg_admin,
    settle_task,
)
from tests.handles import Recorder


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    return make_target(request, tmp_path)


async def fresh_table(db: Any, name: str) -> None:
    await db.execute(f"DROP TABLE IF EXISTS {name}", idempotent=True)
    await db.execute(f"CREATE TABLE {name} (id varchar(40) NOT NULL)", idempotent=True)


async def ids(db: Any, table: str) -> list[str]:
    return [r[0] for r in await db.fetch(f"SELECT id FROM {table} ORDER BY id")]


# -- item 2: MySQL commits implicitly before DDL; a loss after that is not a rollback -------------

IMPLICIT_COMMITS = [
    "CREATE TABLE IF NOT EXISTS implicit_side (id int)",
    "TRUNCATE TABLE implicit_side",
]


async def prepare_implicit(mariadb: MariaDBServer) -> None:
    await my_admin(
        mariadb,
        "DROP TABLE IF EXISTS ledger, implicit_side; "
        "CREATE TABLE ledger (id varchar(40) PRIMARY KEY); CREATE TABLE implicit_side (id int)",
    )


async def kill_own_connection(mariadb: MariaDBServer, tx: Any) -> None:
    """KILL the transaction's connection from an admin session, and let the client see it."""
    connection_id = int(await tx.fetchval("SELECT CONNECTION_ID()"))
    await my_admin(mariadb, f"KILL {connection_id}")

    async def gone() -> bool:
        sql = f"SELECT COUNT(*) FROM information_schema.processlist WHERE id = {connection_id}"
        return await my_admin(mariadb, sql) == "0"

    await until_async(gone, timeout=5)  # the server really dropped it
    await asyncio.sleep(0.1)


@pytest.mark.parametrize("ddl", IMPLICIT_COMMITS)
async def test_run_in_transaction_after_implicit_commit_is_outcome_unknown(
    mariadb: MariaDBServer, ddl: str
) -> None:
    """The INSERT was committed by the DDL: re-running the callable would write it twice."""
    await prepare_implicit(mariadb)
    runs = 0

    async def work(tx: Any) -> None:
        nonlocal runs
        runs += 1
        await tx.execute("INSERT INTO ledger VALUES (%s)", f"run-{runs}")
        await tx.execute(ddl)  # MySQL commits the open transaction first
        if runs == 1:
            await kill_own_connection(mariadb, tx)
        await tx.execute("SELECT 1")  # the loss surfaces here

    async with Supervisor(mariadb.dsn(), max_size=2) as sup:
        outcome = await outcome_of(sup.db.run_in_transaction(work))
        rows = await ids(sup.db, "ledger")
        assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; ran {runs}x; rows {rows}"
        assert runs == 1  # never re-run: its first run is (partly) committed
        assert rows == ["run-1"]


@pytest.mark.parametrize("ddl", IMPLICIT_COMMITS)
@pytest.mark.parametrize("surfaces_at", ["statement", "commit"])
async def test_transaction_block_after_implicit_commit_is_outcome_unknown(
    mariadb: MariaDBServer, ddl: str, surfaces_at: str
) -> None:
    """Not TransactionLost: that would tell the caller the server rolled everything back."""
    await prepare_implicit(mariadb)
    async with Supervisor(mariadb.dsn(), max_size=2) as sup:
        with pytest.raises(OutcomeUnknown) as info:
            async with sup.db.transaction() as tx:
                await tx.execute("INSERT INTO ledger VALUES ('committed-by-ddl')")
                await tx.execute(ddl)
                await kill_own_connection(mariadb, tx)
                if surfaces_at == "statement":
                    await tx.execute("SELECT 1")
        assert not isinstance(info.value, TransactionLost)
        assert await ids(sup.db, "ledger") == ["committed-by-ddl"]  # the server kept it


# -- item 3: a transaction the server rolled back by itself ----------------------------------------


@pytest.fixture
async def pg_sup(pg: PostgresServer) -> AsyncIterator[Supervisor]:
    await pg_admin(
        pg,
        "DROP TABLE IF EXISTS acct; CREATE TABLE acct (id int PRIMARY KEY, balance int); "
        "INSERT INTO acct VALUES (1, 100); ALTER TABLE acct OWNER TO app;",
    )
    async with Supervisor(pg.dsn(), max_size=2) as sup:
        yield sup


async def test_pg_commit_answered_with_rollback_raises(pg_sup: Supervisor) -> None:
    """The caller caught a statement error and carried on: COMMIT cannot commit anything."""
    db = pg_sup.db
    caught: list[BaseException] = []
    with pytest.raises(TransactionRolledBack) as info:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO acct VALUES (2, 50)")
            try:
                await tx.execute("INSERT INTO acct VALUES (1, 0)")  # duplicate key
            except asyncpg.UniqueViolationError as exc:
                caught.append(exc)  # ... and carries on, as if only that row had failed
    assert len(caught) == 1 and info.value.__cause__ is caught[0]
    assert await db.fetchval("SELECT count(*) FROM acct WHERE id = 2") == 0  # nothing written


async def test_pg_run_in_transaction_rolled_back_is_raised_not_rerun(pg_sup: Supervisor) -> None:
    """The same inside run_in_transaction's callable: raised, and the callable not re-run."""
    db = pg_sup.db
    runs = 0

    async def work(tx: Any) -> str:
        nonlocal runs
        runs += 1
        await tx.execute("INSERT INTO acct VALUES (2, 50)")
        with contextlib.suppress(asyncpg.UniqueViolationError):  # caught, and carries on
            await tx.execute("INSERT INTO acct VALUES (1, 0)")
        return "done"

    with pytest.raises(TransactionRolledBack) as info:
        await db.run_in_transaction(work)
    assert isinstance(info.value.__cause__, asyncpg.UniqueViolationError)
    assert runs == 1  # a constraint violation is not a lost race: not re-run
    assert await db.fetchval("SELECT count(*) FROM acct WHERE id = 2") == 0


async def test_mariadb_deadlock_caught_inside_transaction_is_rolled_back(
    mariadb: MariaDBServer,
) -> None:
    """MariaDB rolls the whole transaction back on a deadlock; what the caller runs next on
    the handle must not quietly autocommit."""
    await my_admin(
        mariadb,
        "DROP TABLE IF EXISTS hot, weight, log; "
        "CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL); "
        "INSERT INTO hot VALUES (1, 0), (2, 0); "
        "CREATE TABLE weight (id int PRIMARY KEY, v int NOT NULL); "
        "INSERT INTO weight WITH RECURSIVE c(n) AS "
        "(SELECT 1 UNION ALL SELECT n + 1 FROM c WHERE n < 50) SELECT n, 0 FROM c; "
        "CREATE TABLE log (id varchar(40) NOT NULL)",
    )
    other = await my_connect(mariadb)
    deadlocks: list[myerr.OperationalError] = []
    try:
        # The other transaction changes 50 rows first: InnoDB rolls back the lighter one, the
        # app's, to break the deadlock.
        await my_query(other, "START TRANSACTION")
        await my_query(other, "UPDATE weight SET v = v + 1")
        await my_query(other, "UPDATE hot SET v = v + 1 WHERE id = 2")
        async with Supervisor(mariadb.dsn(), max_size=2) as sup:
            with pytest.raises(TransactionRolledBack) as info:
                async with sup.db.transaction() as tx:
                    await tx.execute("INSERT INTO log VALUES ('before')")
                    await tx.execute("UPDATE hot SET v = v + 1 WHERE id = 1")
                    # Each waits for the other's row: a deadlock.
                    closer = asyncio.create_task(
                        my_query(other, "UPDATE hot SET v = v + 1 WHERE id = 1")
                    )
                    try:
                        await tx.execute("UPDATE hot SET v = v + 1 WHERE id = 2")
                    except myerr.OperationalError as exc:
                        deadlocks.append(exc)  # caught, as an application might
                    await asyncio.wait_for(closer, 5)  # the other transaction goes on
                    assert deadlocks, "test setup: the app's transaction was not the victim"
                    await tx.execute("INSERT INTO log VALUES ('after')")
            assert deadlocks[0].args[0] == 1213
            assert info.value.__cause__ is deadlocks[0]
            await my_query(other, "ROLLBACK")
            assert await ids(sup.db, "log") == []  # 'after' was not autocommitted
    finally:
        other.close()


# -- item 4: a handle used after its block ---------------------------------------------------------


def stale_calls(target: Target, tx: Any) -> list[Callable[[], Awaitable[Any]]]:
    insert = target.sql("INSERT INTO closed_log VALUES ({p})")
    return [
        lambda: tx.execute(insert, "stale"),
        lambda: tx.executemany(insert, [("stale",)]),
        lambda: tx.fetch("SELECT id FROM closed_log"),
        lambda: tx.fetchrow("SELECT id FROM closed_log"),
        lambda: tx.fetchval("SELECT COUNT(*) FROM closed_log"),
    ]


async def test_handle_used_after_its_block_is_closed(target: Target) -> None:
    """TransactionClosed, nothing sent, no reconnect, the next owner of the connection
    undisturbed (max_size=1: the stale handle's connection serves the other caller)."""
    sup = Supervisor(target.dsn, min_size=1, max_size=1)
    rec = Recorder(sup)
    async with sup:
        db = sup.db
        await fresh_table(db, "closed_log")
        async with db.transaction() as stale:
            await stale.execute(target.sql("INSERT INTO closed_log VALUES ({p})"), "inside")
        reconnects = db.statistics().reconnects
        with pytest.raises(RuntimeError, match="roll back"):
            async with db.transaction() as other:
                await other.execute(target.sql("INSERT INTO closed_log VALUES ({p})"), "other")
                for call in stale_calls(target, stale):
                    with pytest.raises(TransactionClosed):
                        await call()
                with pytest.raises(TransactionClosed):
                    async with stale.transaction():
                        pass
                # Nothing of the stale calls landed in the other caller's transaction.
                assert await ids(other, "closed_log") == ["inside", "other"]
                raise RuntimeError("roll back the other caller's transaction")
        assert await ids(db, "closed_log") == ["inside"]
        await rec.settle()
        assert db.statistics().reconnects == reconnects
        assert rec.of(*OUTAGE_EVENTS) == []
        assert db.state is State.CONNECTED


# -- item 12: run_in_transaction's timeout ---------------------------------------------------------


async def test_run_in_transaction_timeout_bounds_the_callable(target: Target) -> None:
    """timeout= covers the callable too: past it, DatabaseUnavailable and nothing written."""
    async with Supervisor(target.dsn, max_size=2) as sup:
        db = sup.db
        await fresh_table(db, "slow_tx")

        async def slow(tx: Any) -> None:
            await tx.execute(target.sql("INSERT INTO slow_tx VALUES ({p})"), "slow")
            await asyncio.sleep(3)

        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable):
            await asyncio.wait_for(db.run_in_transaction(slow, timeout=1), 10)
        elapsed = time.monotonic() - started
        assert elapsed < 1.3, elapsed
        assert await ids(db, "slow_tx") == []  # rolled back, not committed after the deadline


@pytest.mark.parametrize("timeout", [-1, 0, math.nan])
async def test_run_in_transaction_rejects_bad_timeout(target: Target, timeout: float) -> None:
    """ValueError at once, before the callable runs, as every other method does."""
    async with Supervisor(target.dsn) as sup:
        runs = 0

        async def work(tx: Any) -> None:
            nonlocal runs
            runs += 1

        with pytest.raises(ValueError):
            await sup.db.fetchval("SELECT 1", timeout=timeout)  # what the other methods do
        with pytest.raises(ValueError):
            await sup.db.run_in_transaction(work, timeout=timeout)
        assert runs == 0


# -- item 13: statements beside a transaction join it ----------------------------------------------


async def test_statement_beside_transaction_runs_inside_it(target: Target) -> None:
    """``db.execute`` inside the block is part of the transaction: rolled back with it."""
    async with Supervisor(target.dsn, max_size=4) as sup:
        db = sup.db
        await fresh_table(db, "joined")
        insert = target.sql("INSERT INTO joined VALUES ({p})")
        with pytest.raises(RuntimeError, match="abandon"):
            async with db.transaction() as tx:
                await db.execute(insert, "rolled-back", timeout=3)
                assert await tx.fetchval("SELECT COUNT(*) FROM joined") == 1
                raise RuntimeError("abandon")
        assert await ids(db, "joined") == []


async def test_statement_beside_transaction_is_visible_only_after_commit(target: Target) -> None:
    """Inside the block the same task sees its row; other tasks (started before the block or
    spawned inside it) do not join: they run on their own connection and see nothing yet."""
    async with Supervisor(target.dsn, max_size=4) as sup:
        db = sup.db
        await fresh_table(db, "joined")
        count = "SELECT COUNT(*) FROM joined"
        go = asyncio.Event()

        async def worker() -> Any:
            await go.wait()
            return await db.fetchval(count, timeout=3)

        started_before = asyncio.create_task(worker())
        try:
            async with db.transaction():
                await db.execute(target.sql("INSERT INTO joined VALUES ({p})"), "kept", timeout=3)
                assert await db.fetchval(count, timeout=3) == 1
                go.set()
                assert await asyncio.wait_for(started_before, 5) == 0
                assert await asyncio.create_task(db.fetchval(count, timeout=3)) == 0
        finally:
            go.set()
            await settle_task(started_before, timeout=5)
        assert await ids(db, "joined") == ["kept"]


async def test_nested_transaction_block_is_a_savepoint(target: Target) -> None:
    """``db.transaction()`` inside the block is a savepoint of it: it sees the outer block's
    rows, is rolled back alone when it raises, and goes with the outer block otherwise."""
    async with Supervisor(target.dsn, max_size=4) as sup:
        db = sup.db
        await fresh_table(db, "joined")
        insert = target.sql("INSERT INTO joined VALUES ({p})")
        with pytest.raises(RuntimeError, match="outer"):
            async with db.transaction() as tx:
                await tx.execute(insert, "outer")
                with pytest.raises(RuntimeError, match="inner"):
                    async with db.transaction(timeout=3) as inner:
                        # The same transaction: the outer block's uncommitted row is there.
                        assert await inner.fetchval("SELECT COUNT(*) FROM joined") == 1
                        await inner.execute(insert, "inner-undone")
                        raise RuntimeError("inner")
                assert await ids(tx, "joined") == ["outer"]  # the savepoint alone rolled back
                async with db.transaction(timeout=3) as inner:
                    await inner.execute(insert, "inner-kept")
                assert await ids(tx, "joined") == ["inner-kept", "outer"]
                raise RuntimeError("outer")
        assert await ids(db, "joined") == []  # the released savepoint went with the outer block
