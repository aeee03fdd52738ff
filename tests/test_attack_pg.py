"""Attack tests, PostgreSQL: transaction and deadline promises."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from harness.servers import PostgresServer
from resilientdb import (
    OutcomeUnknown,
    Supervisor,
    TransactionClosed,
    TransactionLost,
    TransactionRolledBack,
)
from resilientdb.testing import FaultProxy
from tests.audit_support import outcome_of, pg_admin, pg_connect, settle_task, via


@pytest.fixture
async def ledger(pg: PostgresServer) -> AsyncIterator[asyncpg.Connection[Any]]:
    await pg_admin(
        pg,
        "DROP TABLE IF EXISTS ledger; CREATE TABLE ledger (id text NOT NULL); "
        "ALTER TABLE ledger OWNER TO app;",
    )
    observer = await pg_connect(pg)
    try:
        yield observer
    finally:
        await observer.close()


async def rows(observer: asyncpg.Connection[Any]) -> list[str]:
    return [r[0] for r in await observer.fetch("SELECT id FROM ledger ORDER BY id")]


# -- a success that the pool then rolls back -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "BEGIN; INSERT INTO ledger VALUES ('a')",
        "INSERT INTO ledger VALUES ('a'); BEGIN",
        "START TRANSACTION; INSERT INTO ledger VALUES ('a')",
    ],
)
async def test_pg_execute_success_is_not_rolled_back_afterwards(
    pg: PostgresServer, ledger: asyncpg.Connection[Any], text: str
) -> None:
    """``db.execute`` of a text that leaves a transaction open returns the INSERT's success;
    releasing the connection then rolls the INSERT back (asyncpg's reset starts with
    ROLLBACK). Promised: a call never reports a lost write as success."""
    async with Supervisor(pg.dsn(), max_size=1) as sup:
        outcome = await outcome_of(sup.db.execute(text))
        await asyncio.sleep(0.1)
    got = await rows(ledger)
    if not isinstance(outcome, Exception):
        assert got == ["a"], f"execute returned {outcome!r}, but the ledger holds {got}"


# -- run_in_transaction's deadline after part of it committed ----------------------------------


async def test_pg_run_in_transaction_deadline_after_commit_in_text_is_outcome_unknown(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    """The callable runs ``INSERT ...; COMMIT; SELECT pg_sleep(3)``: the INSERT is committed,
    then the 1 s deadline passes during the sleep. DatabaseUnavailable ("the transaction was
    rolled back") is raised, though the INSERT stays. Promised: DatabaseUnavailable means
    nothing of the call was applied; once part of a transaction committed, OutcomeUnknown."""

    async def work(tx: Any) -> None:
        await tx.execute("INSERT INTO ledger VALUES ('a'); COMMIT; SELECT pg_sleep(3)")

    async with Supervisor(pg.dsn(), max_size=2) as sup:
        outcome = await outcome_of(sup.db.run_in_transaction(work, timeout=1))
    got = await rows(ledger)
    assert got == ["a"]
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; the ledger holds {got}"


async def test_pg_run_in_transaction_deadline_after_commit_statement_is_outcome_unknown(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    """As above with the COMMIT as its own statement (the handle knows it committed early),
    then a slow statement past the deadline."""

    async def work(tx: Any) -> None:
        await tx.execute("INSERT INTO ledger VALUES ('a')")
        await tx.execute("COMMIT")
        await tx.execute("SELECT pg_sleep(3)")

    async with Supervisor(pg.dsn(), max_size=2) as sup:
        outcome = await outcome_of(sup.db.run_in_transaction(work, timeout=1))
    got = await rows(ledger)
    assert got == ["a"]
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; the ledger holds {got}"


# -- COMMIT answered ROLLBACK when the caller sends the COMMIT ----------------------------------


async def test_pg_user_commit_answered_rollback_does_not_end_in_success(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    """Inside a block: INSERT, a statement error caught, then ``tx.execute("COMMIT")``: the
    server answers ROLLBACK (the INSERT is gone); the handle opens a new transaction and the
    block ends in success. Promised: COMMIT answered ROLLBACK raises TransactionRolledBack."""
    async with Supervisor(pg.dsn(), max_size=1) as sup:

        async def block() -> Any:
            async with sup.db.transaction() as tx:
                await tx.execute("INSERT INTO ledger VALUES ('a')")
                with contextlib.suppress(asyncpg.DivisionByZeroError):
                    await tx.execute("SELECT 1/0")
                return await tx.execute("COMMIT")

        outcome = await outcome_of(block())
    got = await rows(ledger)
    assert got == []
    assert isinstance(outcome, TransactionRolledBack | OutcomeUnknown), (
        f"the block returned {outcome!r}; the INSERT was rolled back"
    )


async def test_pg_commit_answered_rollback_control(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    """Control (issue item 3): the block's own COMMIT answered ROLLBACK raises."""
    async with Supervisor(pg.dsn(), max_size=1) as sup:
        with pytest.raises(TransactionRolledBack):
            async with sup.db.transaction() as tx:
                await tx.execute("INSERT INTO ledger VALUES ('a')")
                with contextlib.suppress(asyncpg.DivisionByZeroError):
                    await tx.execute("SELECT 1/0")
    assert await rows(ledger) == []


# -- probes ----------------------------------------------------------------------------------


async def test_pg_cte_insert_lost_reply_is_not_replayed(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    """``WITH x AS (INSERT ... RETURNING id) SELECT ...`` killed mid-statement: not replayed."""
    async with Supervisor(pg.dsn(), max_size=1) as sup:
        pid = await sup.db.fetchval("SELECT pg_backend_pid()")
        task = asyncio.create_task(
            sup.db.fetch(
                "WITH x AS (INSERT INTO ledger VALUES ('cte') RETURNING id) "
                "SELECT id, pg_sleep(1) FROM x"
            )
        )
        await asyncio.sleep(0.4)
        await pg_admin(pg, f"SELECT pg_terminate_backend({pid})")
        outcome = await outcome_of(asyncio.wait_for(task, 15))
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}"
    assert await rows(ledger) == []  # terminated before its end: rolled back


async def test_pg_dollar_quoted_commit_in_select_is_not_read_only() -> None:
    """Verdicts on odd texts: nothing that may write is read-only."""
    from resilientdb._replay import verdict

    writes = [
        "SELECT 1 AS a$b$; COMMIT; INSERT INTO t VALUES (1); SELECT 2 AS c$b$",
        "SELECT $x$;$x$; INSERT INTO t VALUES (1)",
        "SELECT 1 /* /* */ ; INSERT INTO t VALUES (1); /* */",
        "EXPLAIN ANALYZE INSERT INTO t VALUES (1)",
        "EXPLAIN (ANALYZE) INSERT INTO t VALUES (1)",
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        "SELECT * FROM t; DO $$ BEGIN INSERT INTO t VALUES (1); END $$",
        "SELECT nextval('s')",
        "SELECT pg_catalog.nextval('s')",
        "SELECT \"nextval\"('s')",
        "SELECT setval('s', 1)",
        "VALUES (nextval('s'))",
        "SELECT * INTO newt FROM t",
        "COPY t FROM STDIN",
        "TABLE t; TRUNCATE t",
        "PREPARE p AS SELECT 1; EXECUTE p",
        "SELECT lo_import('/etc/passwd')",
        "SELECT U&'\\0027'; DELETE FROM t; SELECT '1'",
    ]
    for sql in writes:
        v = verdict(sql, "postgresql")
        assert not (v.read_only and not v.lookup), sql


async def test_pg_transaction_handle_used_concurrently_from_two_tasks(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    """Two tasks on one handle: whatever is raised, the block ends either committing both
    rows or neither (never one silently lost), and no outage is started."""
    async with Supervisor(pg.dsn(), max_size=2) as sup:
        gen = sup.db.statistics().generation

        async def block() -> None:
            async with sup.db.transaction() as tx:
                await asyncio.gather(
                    tx.execute("INSERT INTO ledger SELECT 'x' FROM pg_sleep(0.3)"),
                    tx.execute("INSERT INTO ledger VALUES ('y')"),
                )

        outcome = await outcome_of(block())
        await asyncio.sleep(0.3)
        assert sup.db.statistics().generation == gen, "a client misuse retired the pool"
        assert await sup.db.fetchval("SELECT 1") == 1
    got = await rows(ledger)
    if isinstance(outcome, Exception) and not isinstance(outcome, OutcomeUnknown):
        assert got == [], f"{outcome!r} but rows {got} were written"
    elif not isinstance(outcome, Exception):
        assert got == ["x", "y"]


async def test_pg_cancelled_transaction_block_in_partition_returns_promptly(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    """A task inside a block, its statement blackholed, cancelled: done within 1 s, and
    nothing of the block committed."""
    async with (
        FaultProxy(pg.host, pg.port) as proxy,
        Supervisor(via(proxy, pg.dsn()), max_size=2, connect_timeout=2) as sup,
    ):

        async def block() -> None:
            async with sup.db.transaction() as tx:
                await tx.execute("INSERT INTO ledger VALUES ('c')")
                proxy.blackhole()
                await tx.execute("SELECT 1")

        task = asyncio.create_task(block())
        await asyncio.sleep(0.5)
        assert not task.done()
        started = time.monotonic()
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        took = time.monotonic() - started
        proxy.pass_through()
        await settle_task(task)
        assert took < 1.0, f"cancelled block took {took:.2f}s"
    await asyncio.sleep(0.5)
    assert await rows(ledger) == []


async def test_pg_handle_after_block_raises_closed(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    async with Supervisor(pg.dsn(), max_size=1) as sup:
        async with sup.db.transaction() as tx:
            await tx.execute("INSERT INTO ledger VALUES ('a')")
        with pytest.raises(TransactionClosed):
            await tx.execute("INSERT INTO ledger VALUES ('b')")
        with pytest.raises(TransactionClosed):
            async with tx.transaction():
                pass
    assert await rows(ledger) == ["a"]


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), True])
async def test_pg_bad_timeouts_are_rejected(pg: PostgresServer, timeout: Any) -> None:
    async with Supervisor(pg.dsn(), max_size=1) as sup:
        for call in (
            lambda: sup.db.fetchval("SELECT 1", timeout=timeout),
            lambda: sup.db.run_in_transaction(lambda tx: tx.fetchval("SELECT 1"), timeout=timeout),
        ):
            with pytest.raises(ValueError):
                await call()


async def test_pg_supervisor_closed_raises(pg: PostgresServer) -> None:
    from resilientdb import SupervisorClosed

    sup = Supervisor(pg.dsn(), max_size=1)
    async with sup:
        db = sup.db
    with pytest.raises(SupervisorClosed):
        await asyncio.wait_for(db.fetchval("SELECT 1"), 5)
    with pytest.raises(SupervisorClosed):
        await asyncio.wait_for(db.run_in_transaction(lambda tx: tx.fetchval("SELECT 1")), 5)


async def test_pg_tx_statement_timeout_is_transaction_lost_nothing_applied(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    async with Supervisor(pg.dsn(), max_size=2) as sup:
        gen = sup.db.statistics().generation
        with pytest.raises(TransactionLost):
            async with sup.db.transaction() as tx:
                await tx.execute("INSERT INTO ledger VALUES ('t')")
                await tx.execute("SELECT pg_sleep(2)", timeout=0.3)
        await asyncio.sleep(0.5)
        assert sup.db.statistics().generation == gen
    await asyncio.sleep(0.3)
    assert await rows(ledger) == []


@pytest.mark.parametrize("timeout", [1e9, 1e300, float("inf")])
async def test_pg_huge_timeouts_work(pg: PostgresServer, timeout: float) -> None:
    async with Supervisor(pg.dsn(), max_size=2) as sup:
        assert await sup.db.fetchval("SELECT 1", timeout=timeout) == 1
        assert (
            await sup.db.run_in_transaction(lambda tx: tx.fetchval("SELECT 1"), timeout=timeout)
            == 1
        )
        async with sup.db.transaction(timeout=timeout) as tx:
            assert await tx.fetchval("SELECT 1", timeout=timeout) == 1


@pytest.mark.parametrize(
    ("query", "args"),
    [
        ("SELECT $1::int", ()),
        ("SELECT $1::int", ("x",)),
        ("SELECT $1::int", (object(),)),
        ("INSERT INTO ledger VALUES ($1)", (1, 2)),
        ("INSERT INTO ledger VALUES ($1)", ("a\x00b",)),
    ],
)
async def test_pg_client_side_errors_start_no_outage(
    pg: PostgresServer, ledger: asyncpg.Connection[Any], query: str, args: tuple[Any, ...]
) -> None:
    """Bad parameters: the driver's own error after one attempt, no check, no reconnect."""
    from resilientdb import ResilientDBError, events

    async with Supervisor(pg.dsn(), max_size=2) as sup:
        seen: list[Any] = []
        sup.on(events.Event, seen.append)
        gen = sup.db.statistics().generation
        outcome = await outcome_of(sup.db.execute(query, *args, timeout=5))
        assert isinstance(outcome, Exception) and not isinstance(outcome, ResilientDBError), repr(
            outcome
        )
        await asyncio.sleep(0.3)
        assert sup.db.statistics().generation == gen
        assert not [e for e in seen if isinstance(e, events.Disconnected | events.Reconnecting)]
        assert sup.db.statistics().replays == 0


async def test_pg_joined_db_commit_answered_rollback_does_not_end_in_success(
    pg: PostgresServer, ledger: asyncpg.Connection[Any]
) -> None:
    """The same through the joined ``db.execute("COMMIT")`` inside run_in_transaction: the
    callable's INSERT is rolled back by the server, run_in_transaction returns success."""

    async def work(tx: Any) -> Any:
        await tx.execute("INSERT INTO ledger VALUES ('a')")
        with contextlib.suppress(asyncpg.NotNullViolationError):
            await tx.execute("INSERT INTO ledger VALUES (NULL)")
        return await sup.db.execute("COMMIT")

    async with Supervisor(pg.dsn(), max_size=1) as sup:
        outcome = await outcome_of(sup.db.run_in_transaction(work))
    got = await rows(ledger)
    assert got == []
    assert isinstance(outcome, Exception), f"run_in_transaction returned {outcome!r}"
