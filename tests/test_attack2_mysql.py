"""Attack round 2, MariaDB: texts that leave a transaction open, SET STATEMENT ... FOR."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from harness.servers import MariaDBServer
from resilientdb import OutcomeUnknown, Supervisor, TransactionRolledBack
from tests.audit_support import my_admin, my_connect, my_query, outcome_of


async def prepare(mariadb: MariaDBServer) -> None:
    await my_admin(
        mariadb,
        "DROP TABLE IF EXISTS log, t2, t3; CREATE TABLE log (id varchar(40) NOT NULL) "
        "ENGINE=InnoDB",
    )


async def log_rows(mariadb: MariaDBServer) -> list[str]:
    out = await my_admin(mariadb, "SELECT id FROM log ORDER BY id")
    return [line for line in out.split("\n") if line]


_IMPLICIT_COMMIT_TEXTS = [
    # SET STATEMENT ... FOR <DDL>: the DDL commits the first INSERT implicitly; the library
    # reads the raw SET (not its inner statement) when judging the text's rest.
    "SET autocommit=0; INSERT INTO log VALUES ('a'); "
    "SET STATEMENT max_statement_time=0 FOR CREATE TABLE t2 (x int); "
    "INSERT INTO log VALUES ('b')",
    "SET autocommit=0; INSERT INTO log VALUES ('a'); "
    "SET STATEMENT max_statement_time=0 FOR TRUNCATE TABLE t3; INSERT INTO log VALUES ('b')",
    # SET DEFAULT ROLE commits implicitly on MariaDB (it writes mysql.user).
    "SET autocommit=0; INSERT INTO log VALUES ('a'); SET DEFAULT ROLE NONE; "
    "INSERT INTO log VALUES ('b')",
]

_PROBE_TEXTS = [
    (
        "execute",
        "START TRANSACTION; INSERT INTO log VALUES ('a'); "
        "SET STATEMENT max_statement_time=0 FOR CREATE TABLE t2 (x int); "
        "SET autocommit=0; INSERT INTO log VALUES ('b')",
    ),
    (
        "fetch",
        "SET autocommit=0; INSERT INTO log VALUES ('a'); "
        "SET STATEMENT max_statement_time=0 FOR CREATE TABLE t2 (x int); SELECT 1",
    ),
    (
        "execute",
        "SET autocommit=0; INSERT INTO log VALUES ('a'); SET @@autocommit=1; "
        "SET @@autocommit=0; INSERT INTO log VALUES ('b')",
    ),
    ("execute", "XA START 'x1'; INSERT INTO log VALUES ('a')"),
    ("execute", "LOCK TABLES log WRITE; SET autocommit=0; INSERT INTO log VALUES ('a')"),
    (
        "execute",
        "SET autocommit=0; INSERT INTO log VALUES ('a'); "
        "LOCK TABLES log WRITE; INSERT INTO log VALUES ('b')",
    ),
    ("fetch", "START TRANSACTION"),
    ("fetchval", "SET autocommit=0"),
]


async def run_left_open(mariadb: MariaDBServer, op: str, text: str) -> None:
    await prepare(mariadb)
    if "t3" in text:
        await my_admin(mariadb, "CREATE TABLE t3 (x int)")
    async with Supervisor(mariadb.dsn(), max_size=1) as sup:
        outcome = await outcome_of(getattr(sup.db, op)(text))
        await asyncio.sleep(0.1)
        after = await outcome_of(sup.db.fetchval("SELECT COUNT(*) FROM log"))
    got = await log_rows(mariadb)
    if isinstance(outcome, TransactionRolledBack):
        assert got == [], f"TransactionRolledBack (nothing written), but the server holds {got}"
    elif not isinstance(outcome, OutcomeUnknown | Exception):
        assert "b" not in text or got == ["a", "b"] or op != "execute", (
            f"{text!r} returned {outcome!r}, server holds {got}"
        )
    assert not isinstance(after, Exception), f"next call on the pool failed: {after!r}"


@pytest.mark.parametrize("text", _IMPLICIT_COMMIT_TEXTS)
async def test_my2_left_open_after_implicit_commit_is_not_transaction_rolled_back(
    mariadb: MariaDBServer, text: str
) -> None:
    """A text whose middle statement commits implicitly, then leaves a new transaction open:
    the library rolls back and raises TransactionRolledBack ("nothing of it was written")
    while the first INSERT is committed on the server. Promised: TransactionRolledBack
    means nothing applied; OutcomeUnknown when something before may have committed."""
    await run_left_open(mariadb, "execute", text)


@pytest.mark.parametrize(("op", "text"), _PROBE_TEXTS)
async def test_my2_text_leaving_transaction_open_probe(
    mariadb: MariaDBServer, op: str, text: str
) -> None:
    """Probes: other texts that leave a transaction open are reported truthfully."""
    await run_left_open(mariadb, op, text)


async def test_my2_set_statement_inner_statement_semantics_control(
    mariadb: MariaDBServer,
) -> None:
    """Control: MariaDB runs SET STATEMENT ... FOR CREATE TABLE and commits implicitly."""
    await prepare(mariadb)
    conn = await my_connect(mariadb)
    try:
        await my_query(conn, "START TRANSACTION")
        await my_query(conn, "INSERT INTO log VALUES ('a')")
        await my_query(conn, "SET STATEMENT max_statement_time=0 FOR CREATE TABLE t2 (x int)")
        await my_query(conn, "ROLLBACK")
    finally:
        conn.close()
    assert await log_rows(mariadb) == ["a"]


@pytest.mark.parametrize("stmt", ["SET DEFAULT ROLE no_such_role", "SET DEFAULT ROLE NONE"])
async def test_my2_block_with_set_default_role_reports_truthfully(
    mariadb: MariaDBServer, stmt: str
) -> None:
    """Inside db.transaction(): INSERT, then SET DEFAULT ROLE (MariaDB commits implicitly
    before it), then the block fails. Promised: once part of a transaction committed, a
    failing block raises OutcomeUnknown, never an error that means nothing was applied."""
    await prepare(mariadb)
    async with Supervisor(mariadb.dsn(), max_size=1) as sup:

        async def block() -> None:
            async with sup.db.transaction() as tx:
                await tx.execute("INSERT INTO log VALUES ('a')")
                with contextlib.suppress(Exception):
                    await tx.execute(stmt)
                raise RuntimeError("the block fails afterwards")

        outcome = await outcome_of(block())
    got = await log_rows(mariadb)
    if got:
        assert isinstance(outcome, OutcomeUnknown), (
            f"block raised {outcome!r}, but the server holds {got}"
        )


async def test_my2_failed_set_default_role_then_next_statement_says_nothing_written(
    mariadb: MariaDBServer,
) -> None:
    """Inside run_in_transaction: INSERT, then ``SET DEFAULT ROLE no_such_role`` (MariaDB
    commits the INSERT implicitly, then fails), caught; the next statement raises
    TransactionRolledBack ("nothing of it was written") though the INSERT is committed.
    Promised: after an implicit commit, OutcomeUnknown, never an error meaning nothing
    applied."""
    await prepare(mariadb)
    async with Supervisor(mariadb.dsn(), max_size=1) as sup:

        async def work(tx: Any) -> None:
            await tx.execute("INSERT INTO log VALUES ('a')")
            with contextlib.suppress(Exception):
                await tx.execute("SET DEFAULT ROLE no_such_role")
            await tx.execute("INSERT INTO log VALUES ('b')")

        outcome = await outcome_of(sup.db.run_in_transaction(work))
    got = await log_rows(mariadb)
    if got and got != ["a", "b"]:
        assert isinstance(outcome, OutcomeUnknown), (
            f"run_in_transaction raised {outcome!r}, but the server holds {got}"
        )
