"""Audit regressions, retryable errors (item 1): a lock wait timeout (MySQL 1205) or a
deadlock rolls back one *statement*, not what committed before it.

* A batch (``executemany``) or a multi-statement text whose earlier statements committed is
  not replayed after such an error: ``OutcomeUnknown``, with the server's error chained.
* A single statement is replayed (the server rolled it back), and applied exactly once; with
  ``idempotent=False`` it is not replayed, and the driver's own error says nothing was applied.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from pymysql import err as myerr

from harness.polling import until_async
from harness.servers import MariaDBServer, PostgresServer
from resilientdb import OutcomeUnknown, Supervisor, events
from tests.audit_support import (
    chain,
    hot_value,
    my_admin,
    my_connect,
    my_query,
    mysql_codes,
    outcome_of,
    pg_admin,
    pg_connect,
    prepare_hot_mysql,
)


async def lock_wait_1s(raw: Any) -> None:
    """on_connect: give up on a row lock after 1 s (error 1205) instead of 50 s."""
    async with raw.cursor() as cur:
        await cur.execute("SET SESSION innodb_lock_wait_timeout = 1")


async def lock_row(mariadb: MariaDBServer, row: int) -> Any:
    """Another session holding ``hot`` row ``row`` locked in an open transaction."""
    holder = await my_connect(mariadb)
    await my_query(holder, "START TRANSACTION")
    await my_query(holder, "SELECT v FROM hot WHERE id = %s FOR UPDATE", row)
    return holder


@pytest.mark.parametrize("idempotent", [None, False])
async def test_mysql_executemany_lock_timeout_midway_is_outcome_unknown(
    mariadb: MariaDBServer, idempotent: bool | None
) -> None:
    """Row 1's UPDATE committed before row 2's hit 1205: replaying the batch repeats row 1."""
    await prepare_hot_mysql(mariadb)
    holder = await lock_row(mariadb, 2)
    try:
        async with Supervisor(mariadb.dsn(), on_connect=lock_wait_1s) as sup:
            outcome = await outcome_of(
                sup.db.executemany(
                    "UPDATE hot SET v = v + 1 WHERE id = %s", [(1,), (2,)], idempotent=idempotent
                )
            )
    finally:
        holder.close()
    v1 = await hot_value(mariadb, 1)
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; row 1 incremented {v1} times"
    assert 1205 in mysql_codes(outcome)
    assert v1 == 1


async def test_mysql_multi_statement_lock_timeout_after_insert_is_outcome_unknown(
    mariadb: MariaDBServer,
) -> None:
    """``INSERT ...; UPDATE ...``: the INSERT committed before the UPDATE hit 1205."""
    await prepare_hot_mysql(mariadb)
    holder = await lock_row(mariadb, 2)
    try:
        async with Supervisor(mariadb.dsn(), on_connect=lock_wait_1s) as sup:
            outcome = await outcome_of(
                sup.db.execute(
                    "INSERT INTO log VALUES ('multi'); UPDATE hot SET v = v + 1 WHERE id = 2"
                )
            )
    finally:
        holder.close()
    inserted = int(await my_admin(mariadb, "SELECT COUNT(*) FROM log"))
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; INSERT applied {inserted} times"
    assert 1205 in mysql_codes(outcome)
    assert inserted == 1


async def test_mysql_single_statement_lock_timeout_is_replayed_once_released(
    mariadb: MariaDBServer,
) -> None:
    """Control: a lone statement rolled back by 1205 is replayed, and applied exactly once."""
    await prepare_hot_mysql(mariadb)
    holder = await lock_row(mariadb, 1)

    async def release_later() -> None:
        await asyncio.sleep(1.3)  # after the first 1 s wait, inside the replay's
        await my_query(holder, "ROLLBACK")

    try:
        async with Supervisor(mariadb.dsn(), on_connect=lock_wait_1s) as sup:
            replays: list[events.OperationReplayed] = []
            sup.on(events.OperationReplayed, replays.append)
            release = asyncio.create_task(release_later())
            assert await sup.db.execute("UPDATE hot SET v = v + 1 WHERE id = 1", timeout=5) == 1
            await asyncio.wait_for(release, 5)
            assert sup.db.statistics().replays == 1 and len(replays) == 1
            assert replays[0].reason == "OperationalError"  # the 1205, replayed once
    finally:
        holder.close()
    assert await hot_value(mariadb, 1) == 1


async def test_mysql_single_statement_lock_timeout_not_idempotent_raises_1205(
    mariadb: MariaDBServer,
) -> None:
    """idempotent=False: no replay. Nothing was applied, so the driver's own 1205 error, after
    one attempt, not OutcomeUnknown and not DatabaseUnavailable."""
    await prepare_hot_mysql(mariadb)
    holder = await lock_row(mariadb, 1)
    try:
        async with Supervisor(mariadb.dsn(), on_connect=lock_wait_1s) as sup:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(myerr.OperationalError) as info:
                await sup.db.execute("UPDATE hot SET v = v + 1 WHERE id = 1", idempotent=False)
            assert info.value.args[0] == 1205
            assert loop.time() - started < 1.8  # one lock wait, not four
            assert sup.db.statistics().replays == 0
    finally:
        holder.close()
    assert await hot_value(mariadb, 1) == 0


async def test_pg_multi_statement_deadlock_after_commit_is_outcome_unknown(
    pg: PostgresServer,
) -> None:
    """Simple protocol, ``INSERT; COMMIT; UPDATE; UPDATE``: the deadlock (40P01) rolls back the
    UPDATEs only. The INSERT is committed, so the text must not be replayed."""
    await pg_admin(
        pg,
        "DROP TABLE IF EXISTS hot, log; CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL); "
        "INSERT INTO hot VALUES (1, 0), (2, 0); CREATE TABLE log (id text NOT NULL); "
        "ALTER TABLE hot OWNER TO app; ALTER TABLE log OWNER TO app;",
    )
    other = await pg_connect(pg, user="postgres")
    observer = await pg_connect(pg)
    try:
        # The app's session (deadlock_timeout 1 s) finds the deadlock first: it is the victim.
        await other.execute("SET deadlock_timeout = '10s'")
        await other.execute("BEGIN")
        await other.execute("UPDATE hot SET v = v + 10 WHERE id = 2")
        async with Supervisor(pg.dsn()) as sup:
            call = asyncio.create_task(
                outcome_of(
                    sup.db.execute(
                        "INSERT INTO log VALUES ('multi'); COMMIT; "
                        "UPDATE hot SET v = v + 1 WHERE id = 1; "
                        "UPDATE hot SET v = v + 1 WHERE id = 2"
                    )
                )
            )

            async def app_waits_for_lock() -> bool:
                n = await observer.fetchval(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE usename = 'app' AND wait_event_type = 'Lock'"
                )
                return bool(n)

            await until_async(app_waits_for_lock, timeout=5)
            await asyncio.wait_for(other.execute("UPDATE hot SET v = v + 10 WHERE id = 1"), 5)
            await other.execute("ROLLBACK")
            outcome = await asyncio.wait_for(call, 10)
        inserted = await observer.fetchval("SELECT count(*) FROM log")
        assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; INSERT applied {inserted}x"
        assert any(isinstance(e, asyncpg.DeadlockDetectedError) for e in chain(outcome))
        assert inserted == 1
    finally:
        await other.close()
        await observer.close()
