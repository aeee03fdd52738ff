"""Attack tests, MariaDB: replay and transaction promises under MariaDB syntax.

MariaDB's ``SET STATEMENT var=value FOR <statement>`` runs <statement> (any statement: DDL,
CALL ...) with a session variable changed for its duration. The leading keyword is SET,
which the library reads as "keeps the transaction open" and "one plain statement".
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from harness.servers import MariaDBServer
from resilientdb import OutcomeUnknown, Supervisor, TransactionLost
from tests.audit_support import (
    my_admin,
    my_connect,
    my_query,
    outcome_of,
    prepare_hot_mysql,
    settle_task,
    until_async,
)


async def lock_wait_1s(raw: Any) -> None:
    async with raw.cursor() as cur:
        await cur.execute("SET SESSION innodb_lock_wait_timeout = 1")


async def lock_row(mariadb: MariaDBServer, row: int) -> Any:
    holder = await my_connect(mariadb)
    await my_query(holder, "START TRANSACTION")
    await my_query(holder, "SELECT v FROM hot WHERE id = %s FOR UPDATE", row)
    return holder


async def log_count(mariadb: MariaDBServer) -> int:
    return int(await my_admin(mariadb, "SELECT COUNT(*) FROM log"))


# -- replay of a lost race: SET STATEMENT ... FOR CALL ----------------------------------------


async def prepare_proc(mariadb: MariaDBServer) -> None:
    await prepare_hot_mysql(mariadb)
    await my_admin(mariadb, "DROP PROCEDURE IF EXISTS bump")
    conn = await my_connect(mariadb)
    try:
        await my_query(
            conn,
            "CREATE PROCEDURE bump() BEGIN "
            "INSERT INTO log VALUES ('proc'); UPDATE hot SET v = v + 1 WHERE id = 2; END",
        )
    finally:
        conn.close()


async def test_mysql_call_lock_timeout_is_not_replayed(mariadb: MariaDBServer) -> None:
    """Control: ``CALL bump()`` whose UPDATE hits 1205 after its INSERT committed (autocommit
    commits each statement of a procedure): not replayed, OutcomeUnknown."""
    await prepare_proc(mariadb)
    holder = await lock_row(mariadb, 2)
    try:
        async with Supervisor(mariadb.dsn(), on_connect=lock_wait_1s) as sup:
            outcome = await outcome_of(sup.db.execute("CALL bump()", timeout=20))
    finally:
        holder.close()
    inserted = await log_count(mariadb)
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; INSERT applied {inserted}x"
    assert inserted == 1


async def test_mysql_set_statement_for_call_lock_timeout_is_not_replayed(
    mariadb: MariaDBServer,
) -> None:
    """``SET STATEMENT max_statement_time=30 FOR CALL bump()`` is the same CALL: its INSERT
    committed before the UPDATE hit 1205. Replaying it inserts again. Promised: a RETRYABLE
    error replays only a single statement, never a CALL; otherwise OutcomeUnknown."""
    await prepare_proc(mariadb)
    holder = await lock_row(mariadb, 2)

    async def release_later() -> None:
        await asyncio.sleep(2.5)  # after two 1 s lock waits
        await my_query(holder, "ROLLBACK")

    release = asyncio.create_task(release_later())
    try:
        async with Supervisor(mariadb.dsn(), on_connect=lock_wait_1s) as sup:
            outcome = await outcome_of(
                sup.db.execute("SET STATEMENT max_statement_time=30 FOR CALL bump()", timeout=20)
            )
    finally:
        await settle_task(release)
        holder.close()
    inserted = await log_count(mariadb)
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; INSERT applied {inserted}x"
    assert inserted == 1


# -- implicit commits inside a transaction: SET STATEMENT ... FOR <DDL> ----------------------


async def prepare_ledger(mariadb: MariaDBServer) -> None:
    await my_admin(
        mariadb,
        "DROP TABLE IF EXISTS ledger, implicit_side; "
        "CREATE TABLE ledger (id varchar(40) PRIMARY KEY); CREATE TABLE implicit_side (id int)",
    )


async def ledger_rows(mariadb: MariaDBServer) -> int:
    return int(await my_admin(mariadb, "SELECT COUNT(*) FROM ledger"))


async def test_mysql_failing_ddl_after_implicit_commit_in_block(mariadb: MariaDBServer) -> None:
    """Control: plain ``CREATE TABLE implicit_side`` (exists: 1050) commits the INSERT before
    it fails; the block reports OutcomeUnknown."""
    await prepare_ledger(mariadb)
    async with Supervisor(mariadb.dsn()) as sup:
        outcome = await outcome_of(_block(sup, "CREATE TABLE implicit_side (id int)"))
    rows = await ledger_rows(mariadb)
    assert rows == 1  # the implicit commit really happened
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; ledger has {rows} row"


async def _block(sup: Supervisor, ddl: str) -> None:
    async with sup.db.transaction() as tx:
        await tx.execute("INSERT INTO ledger VALUES ('a')")
        await tx.execute(ddl)


async def test_mysql_set_statement_ddl_failing_after_implicit_commit_is_outcome_unknown(
    mariadb: MariaDBServer,
) -> None:
    """``SET STATEMENT max_statement_time=30 FOR CREATE TABLE implicit_side (id int)`` commits
    the block's INSERT implicitly, then fails (1050 table exists). The block raises the
    driver's 1050 unchanged, which promises that nothing of the block was applied; the INSERT
    is committed. Promised: after an implicit commit, a failing block is OutcomeUnknown."""
    await prepare_ledger(mariadb)
    async with Supervisor(mariadb.dsn()) as sup:
        outcome = await outcome_of(
            _block(
                sup, "SET STATEMENT max_statement_time=30 FOR CREATE TABLE implicit_side (id int)"
            )
        )
    rows = await ledger_rows(mariadb)
    assert rows == 1
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; ledger has {rows} row"


async def test_mysql_set_password_failing_after_implicit_commit_is_outcome_unknown(
    mariadb: MariaDBServer,
) -> None:
    """``SET PASSWORD FOR nobody@localhost = ...`` commits the block's INSERT implicitly
    (account management statements do), then fails (1044 access denied). The block raises
    the driver's error unchanged (= nothing applied); the INSERT is committed."""
    await prepare_ledger(mariadb)
    async with Supervisor(mariadb.dsn()) as sup:
        outcome = await outcome_of(_block(sup, "SET PASSWORD FOR nobody@localhost = PASSWORD('x')"))
    rows = await ledger_rows(mariadb)
    assert rows == 1
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; ledger has {rows} row"


async def test_mysql_set_statement_ddl_then_lost_connection_is_not_rerun(
    mariadb: MariaDBServer,
) -> None:
    """run_in_transaction: INSERT, then ``SET STATEMENT ... FOR CREATE TABLE ... AS SELECT
    SLEEP(3)`` (implicit commit first, then 3 s of work), the connection killed during the
    sleep. Promised: not TransactionLost, no re-run (OutcomeUnknown); the ledger has 1 row."""
    await prepare_ledger(mariadb)
    await my_admin(mariadb, "DROP TABLE IF EXISTS slow_ddl")
    runs = 0

    async def work(tx: Any) -> None:
        nonlocal runs
        runs += 1
        await tx.execute("INSERT INTO ledger VALUES (%s)", f"run-{runs}")
        await tx.execute(
            "SET STATEMENT max_statement_time=30 FOR "
            "CREATE TABLE IF NOT EXISTS slow_ddl AS SELECT SLEEP(%s) AS x",
            3 if runs == 1 else 0,
        )

    async def killer() -> None:
        async def sleeping() -> bool:
            out = await my_admin(
                mariadb,
                "SELECT COUNT(*) FROM information_schema.processlist "
                "WHERE info LIKE 'SET STATEMENT%SLEEP(3)%'",
            )
            return out.strip() not in ("", "0")

        await until_async(sleeping, timeout=10)
        await asyncio.sleep(0.3)
        await my_admin(
            mariadb,
            "SELECT CONCAT('KILL ', id) INTO @k FROM information_schema.processlist "
            "WHERE info LIKE 'SET STATEMENT%SLEEP(3)%' LIMIT 1; "
            "PREPARE s FROM @k; EXECUTE s",
        )

    async with Supervisor(mariadb.dsn(), max_size=2) as sup:
        kill = asyncio.create_task(killer())
        outcome = await outcome_of(sup.db.run_in_transaction(work, timeout=20))
        await settle_task(kill)
    rows = await ledger_rows(mariadb)
    assert not isinstance(outcome, TransactionLost)
    assert runs == 1 and rows == 1, f"{outcome!r}; ran {runs}x; ledger has {rows} rows"
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}"


# -- a success that the pool then rolls back -----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "START TRANSACTION; INSERT INTO log VALUES ('a')",
        "SET autocommit = 0; INSERT INTO log VALUES ('a')",
        "BEGIN; INSERT INTO log VALUES ('a')",
    ],
)
async def test_mysql_execute_success_is_not_rolled_back_afterwards(
    mariadb: MariaDBServer, text: str
) -> None:
    """``db.execute`` of a text that leaves a transaction open (or autocommit off) returns
    the INSERT's success; the pool then closes that connection and the server rolls the
    INSERT back. Promised: a call never reports a lost write as success."""
    await prepare_hot_mysql(mariadb)
    async with Supervisor(mariadb.dsn(), max_size=1) as sup:
        outcome = await outcome_of(sup.db.execute(text))
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.2)
    inserted = await log_count(mariadb)
    if not isinstance(outcome, Exception):
        assert inserted == 1, f"execute returned {outcome!r}, but log holds {inserted} rows"


# -- probes ----------------------------------------------------------------------------------


def test_mysql_verdicts_on_odd_texts() -> None:
    from resilientdb._replay import verdict

    writes = [
        "SELECT v INTO @x FROM hot WHERE id = 1",
        "SELECT v FROM hot INTO OUTFILE '/tmp/x'",
        "LOAD DATA INFILE '/tmp/x' INTO TABLE log",
        "HANDLER hot OPEN",
        "SELECT NEXT VALUE FOR s",
        "SELECT NEXTVAL(s)",
        "SELECT GET_LOCK('a', 1)",
        "SELECT 1 /*! ; DELETE FROM hot */",
        "SELECT 1 /*M! ; DELETE FROM hot */",
        "SELECT '\\'; DELETE FROM hot; -- '",
        "SELECT 1; DELETE FROM hot",
        "SET STATEMENT max_statement_time=1 FOR DELETE FROM hot",
        "SELECT f(1)",
        "WITH x AS (SELECT 1) DELETE FROM hot",
        "SELECT `insert`(1)",
        "SELECT 1 #\n; DELETE FROM hot",
    ]
    for sql in writes:
        v = verdict(sql, "mysql")
        assert not (v.read_only and not v.lookup), sql


async def test_mysql_implicit_commit_statements_end_the_transaction() -> None:
    """The verdict says ``ends_transaction`` for each statement that commits implicitly."""
    from resilientdb._replay import verdict

    commits = [
        "CREATE TABLE x (id int)",
        "TRUNCATE log",
        "LOCK TABLES log WRITE",
        "SET autocommit = 1",
        "SET @@autocommit = 1",
        "ALTER TABLE log ADD COLUMN z int",
        "RENAME TABLE log TO log2",
        "GRANT SELECT ON app.* TO app",
        "START TRANSACTION",
        "BEGIN",
        "ANALYZE TABLE log",
        "SET STATEMENT max_statement_time=1 FOR CREATE TABLE x (id int)",
        "SET PASSWORD = PASSWORD('x')",
    ]
    missed = [sql for sql in commits if not verdict(sql, "mysql").ends_transaction]
    assert missed == []


async def test_mysql_deadline_holds_for_blackholed_call(mariadb: MariaDBServer) -> None:
    from resilientdb.testing import FaultProxy
    from tests.audit_support import via

    async with (
        FaultProxy(mariadb.host, mariadb.port) as proxy,
        Supervisor(via(proxy, mariadb.dsn()), max_size=2, connect_timeout=3) as sup,
    ):
        assert await sup.db.fetchval("SELECT 1") == 1
        proxy.blackhole()
        loop = asyncio.get_running_loop()
        starts = loop.time()
        results = await asyncio.gather(
            *(sup.db.fetchval("SELECT 1", timeout=1.0) for _ in range(6)),
            sup.db.run_in_transaction(lambda tx: tx.fetchval("SELECT 1"), timeout=1.0),
            return_exceptions=True,
        )
        took = loop.time() - starts
        proxy.pass_through()
        assert took < 1.3, f"{took:.2f}s: {results!r}"
        assert all(isinstance(r, Exception) for r in results)


@pytest.mark.parametrize(
    ("query", "args"),
    [
        ("SELECT %s", ()),
        ("SELECT %s", (1, 2)),
        ("INSERT INTO log VALUES (%s)", ("\ud800",)),
    ],
)
async def test_mysql_client_side_errors_start_no_outage(
    mariadb: MariaDBServer, query: str, args: tuple[Any, ...]
) -> None:
    from resilientdb import ResilientDBError, events

    await prepare_hot_mysql(mariadb)
    async with Supervisor(mariadb.dsn(), max_size=2) as sup:
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
    assert await log_count(mariadb) == 0


@pytest.mark.parametrize("where", ["call", "transaction"])
async def test_mysql_cancelled_in_partition_returns_promptly(
    mariadb: MariaDBServer, where: str
) -> None:
    import time

    from resilientdb.testing import FaultProxy
    from tests.audit_support import via

    await prepare_hot_mysql(mariadb)
    async with (
        FaultProxy(mariadb.host, mariadb.port) as proxy,
        Supervisor(via(proxy, mariadb.dsn()), max_size=2, connect_timeout=2) as sup,
    ):

        async def run() -> None:
            if where == "call":
                proxy.blackhole()
                await sup.db.execute("INSERT INTO log VALUES ('c')")
            else:
                async with sup.db.transaction() as tx:
                    await tx.execute("INSERT INTO log VALUES ('c')")
                    proxy.blackhole()
                    await tx.execute("SELECT 1")

        task = asyncio.create_task(run())
        await asyncio.sleep(0.5)
        assert not task.done()
        started = time.monotonic()
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        took = time.monotonic() - started
        proxy.pass_through()
        await settle_task(task)
        assert took < 1.0, f"cancelled {where} took {took:.2f}s"
    await asyncio.sleep(0.5)
    if where == "transaction":
        assert await log_count(mariadb) == 0
