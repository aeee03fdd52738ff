"""Attack round 2, PostgreSQL: texts that leave transactions open, COMMIT answered ROLLBACK."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from harness.servers import PostgresServer
from resilientdb import OutcomeUnknown, Supervisor, TransactionRolledBack
from tests.audit_support import outcome_of, pg_admin, pg_connect


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


# -- (c) the caller's own COMMIT answered ROLLBACK, in forms other than tx.execute("COMMIT") ----


async def caller_commit(pg: PostgresServer, ledger: asyncpg.Connection[Any], how: str) -> None:
    async with Supervisor(pg.dsn(), max_size=1) as sup:
        db = sup.db

        async def block() -> Any:
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO ledger VALUES ('a')")
                with contextlib.suppress(asyncpg.DivisionByZeroError):
                    await tx.execute("SELECT 1/0")
                if how == "tx.fetch":
                    r = await tx.fetch("COMMIT")
                elif how == "tx.fetchval":
                    r = await tx.fetchval("COMMIT")
                elif how == "tx.fetchrow":
                    r = await tx.fetchrow("COMMIT")
                elif how == "db.fetch":
                    r = await db.fetch("COMMIT")
                elif how == "tx.execute:commit;select":
                    r = await tx.execute("COMMIT; SELECT 1")
                elif how == "tx.execute:end":
                    r = await tx.execute("END")
                elif how == "tx.execute:commit and chain":
                    r = await tx.execute("COMMIT AND CHAIN")
                else:
                    r = await tx.execute("COMMIT /* $1 */")
            return r

        outcome = await outcome_of(block())
    got = await rows(ledger)
    assert got == [], got
    assert isinstance(outcome, TransactionRolledBack | OutcomeUnknown | asyncpg.PostgresError), (
        f"{how}: the block returned {outcome!r}; the INSERT was rolled back"
    )


@pytest.mark.parametrize(
    "how", ["tx.fetch", "tx.fetchval", "tx.fetchrow", "db.fetch", "tx.execute:commit;select"]
)
async def test_pg2_caller_commit_answered_rollback_never_success(
    pg: PostgresServer, ledger: asyncpg.Connection[Any], how: str
) -> None:
    """Inside a block: INSERT, an error caught, then the caller's COMMIT sent through
    fetch/fetchval/fetchrow (or joined db.fetch), or as ``COMMIT; SELECT 1``. PostgreSQL
    answers ROLLBACK (the INSERT is gone); the handle only checks the answer of a lone
    COMMIT sent with execute, opens a new transaction, and the block ends in success.
    Promised: never report a rolled-back write as success."""
    await caller_commit(pg, ledger, how)


@pytest.mark.parametrize(
    "how", ["tx.execute:end", "tx.execute:commit and chain", "tx.execute:commit with arg"]
)
async def test_pg2_caller_commit_answered_rollback_probe(
    pg: PostgresServer, ledger: asyncpg.Connection[Any], how: str
) -> None:
    """Probes: END, COMMIT AND CHAIN, a commented COMMIT through execute."""
    await caller_commit(pg, ledger, how)


# -- (a) texts that leave a transaction open -------------------------------------------------


@pytest.mark.parametrize(
    ("op", "text", "applied"),
    [
        ("execute", "INSERT INTO ledger VALUES ('a'); BEGIN; INSERT INTO ledger VALUES ('b')", []),
        (
            "execute",
            "BEGIN; INSERT INTO ledger VALUES ('a'); COMMIT AND CHAIN; "
            "INSERT INTO ledger VALUES ('b')",
            ["a"],
        ),
        (
            "execute",
            "INSERT INTO ledger VALUES ('a'); COMMIT; BEGIN; INSERT INTO ledger VALUES ('b')",
            ["a"],
        ),
        ("fetch", "BEGIN", []),
        ("fetchval", "START TRANSACTION ISOLATION LEVEL SERIALIZABLE", []),
        (
            "execute",
            "BEGIN; INSERT INTO ledger VALUES ('a'); SAVEPOINT s; "
            "INSERT INTO ledger VALUES ('b'); RELEASE s",
            [],
        ),
        (
            "execute",
            "BEGIN; INSERT INTO ledger VALUES ('a'); COMMIT; "
            "BEGIN; INSERT INTO ledger VALUES ('b')",
            ["a"],
        ),
        (
            "execute",
            "BEGIN; INSERT INTO ledger VALUES ('a'); ROLLBACK AND CHAIN; "
            "INSERT INTO ledger VALUES ('b')",
            [],
        ),
    ],
)
async def test_pg2_text_leaving_transaction_open_is_classified_truthfully(
    pg: PostgresServer,
    ledger: asyncpg.Connection[Any],
    op: str,
    text: str,
    applied: list[str],
) -> None:
    """A text that leaves a transaction open is rolled back; the error must not say
    "nothing applied" (TransactionRolledBack) when part of it committed, and success must
    match what the server holds."""
    async with Supervisor(pg.dsn(), max_size=1) as sup:
        outcome = await outcome_of(getattr(sup.db, op)(text))
        await asyncio.sleep(0.1)
        # the connection must be usable and clean afterwards
        assert await sup.db.fetchval("SELECT 1") == 1
    got = await rows(ledger)
    assert got == applied, f"server holds {got}"
    if isinstance(outcome, TransactionRolledBack):
        assert got == [], f"TransactionRolledBack but {got} committed"
    elif not isinstance(outcome, OutcomeUnknown) and "INSERT" in text:
        # Success is the truth only for a text that wrote nothing (a lone BEGIN).
        pytest.fail(f"{text!r} returned {outcome!r} with {got} on the server")
