"""Audit regressions, replays: an operation is replayed only when that cannot apply anything
twice, and the errors say truthfully what happened (items 5, 6, 7, 8;
item 1 is in ``test_audit_replay_retryable.py``).

* A SELECT that writes (a volatile function, ``nextval``) is not replayed after a lost reply.
* A client-side error (text that cannot be encoded) is the caller's error, not an outage.
* ``DatabaseUnavailable`` means nothing was applied: a lost reply of an applied write that
  cannot be replayed in time is ``OutcomeUnknown``.
* Replays that sent nothing (the pool paused while reconnecting) do not use up ``max_replays``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from harness.servers import MariaDBServer, PostgresServer
from resilientdb import (
    Backoff,
    DatabaseUnavailable,
    OutcomeUnknown,
    ResilientDBError,
    State,
    Supervisor,
)
from resilientdb.testing import FaultProxy
from tests.audit_support import (
    OUTAGE_EVENTS,
    chain,
    cut_reply,
    my_admin,
    my_connect,
    my_query,
    my_value,
    outcome_of,
    pg_admin,
    pg_connect,
    pg_statement_finished,
    prepare_hot_mysql,
    via,
)
from tests.handles import Recorder


@pytest.fixture
async def pg_proxy(pg: PostgresServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(pg.host, pg.port) as proxy:
        yield proxy


@pytest.fixture
async def my_proxy(mariadb: MariaDBServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(mariadb.host, mariadb.port) as proxy:
        yield proxy


# -- item 5: a SELECT that writes ----------------------------------------------------------------


@pytest.fixture
async def pg_functions(pg: PostgresServer) -> AsyncIterator[asyncpg.Connection[Any]]:
    """Table ``side``, sequence ``s``, ``ins_fn()`` (writes) and ``stable_fn()`` (reads);
    yields an observer connection."""
    await pg_admin(
        pg,
        "DROP TABLE IF EXISTS side; DROP SEQUENCE IF EXISTS s; "
        "CREATE TABLE side (n serial PRIMARY KEY); CREATE SEQUENCE s; "
        "CREATE OR REPLACE FUNCTION ins_fn() RETURNS int LANGUAGE plpgsql AS "
        "$$ BEGIN INSERT INTO side DEFAULT VALUES; RETURN 1; END $$; "
        "CREATE OR REPLACE FUNCTION stable_fn() RETURNS bigint LANGUAGE sql STABLE AS "
        "$$ SELECT count(*) + 41 FROM side $$; "
        "ALTER TABLE side OWNER TO app; ALTER SEQUENCE s OWNER TO app; "
        "ALTER FUNCTION ins_fn() OWNER TO app; ALTER FUNCTION stable_fn() OWNER TO app;",
    )
    observer = await pg_connect(pg)
    try:
        yield observer
    finally:
        await observer.close()


async def test_pg_select_of_a_writing_function_is_outcome_unknown(
    pg: PostgresServer, pg_proxy: FaultProxy, pg_functions: asyncpg.Connection[Any]
) -> None:
    """``SELECT ins_fn()`` inserted and committed, then its reply was lost: replaying the
    "read" would insert again."""
    observer = pg_functions

    async def inserted() -> bool:
        return bool(await observer.fetchval("SELECT count(*) FROM side"))

    async with Supervisor(via(pg_proxy, pg.dsn()), max_size=1) as sup:
        task = await cut_reply(pg_proxy, sup.db.fetchval("SELECT ins_fn()"), inserted)
        outcome = await outcome_of(asyncio.wait_for(task, 10))
    rows = await observer.fetchval("SELECT count(*) FROM side")
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; ins_fn() inserted {rows} rows"
    assert rows == 1


async def test_pg_select_nextval_is_outcome_unknown(
    pg: PostgresServer, pg_proxy: FaultProxy, pg_functions: asyncpg.Connection[Any]
) -> None:
    """``SELECT nextval('s')`` advanced the sequence, then its reply was lost."""
    observer = pg_functions

    async def advanced() -> bool:
        return bool(await observer.fetchval("SELECT is_called FROM s"))

    async with Supervisor(via(pg_proxy, pg.dsn()), max_size=1) as sup:
        task = await cut_reply(pg_proxy, sup.db.fetchval("SELECT nextval('s')"), advanced)
        outcome = await outcome_of(asyncio.wait_for(task, 10))
    last = await observer.fetchval("SELECT last_value FROM s")
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; the sequence is at {last}"
    assert last == 1  # advanced once


@pytest.mark.parametrize(
    ("query", "expected"), [("SELECT stable_fn()", 41), ("SELECT count(*) FROM side", 0)]
)
async def test_pg_read_only_select_is_replayed_after_lost_reply(
    pg: PostgresServer,
    pg_proxy: FaultProxy,
    pg_functions: asyncpg.Connection[Any],
    query: str,
    expected: int,
) -> None:
    """Control: a STABLE function and a plain count are replayed and succeed."""
    observer = pg_functions
    async with Supervisor(via(pg_proxy, pg.dsn()), max_size=1) as sup:
        assert await sup.db.fetchval(query) == expected  # prepared: the next run only executes
        since = await observer.fetchval("SELECT clock_timestamp()")

        async def executed() -> bool:
            return await pg_statement_finished(observer, query, since)

        task = await cut_reply(pg_proxy, sup.db.fetchval(query), executed)
        assert await asyncio.wait_for(task, 10) == expected
        assert sup.db.statistics().replays >= 1  # the reply really was lost


@pytest.mark.parametrize("idempotent", [None, True])
async def test_pg_locking_read_is_replayed_only_when_idempotent(
    pg: PostgresServer,
    pg_proxy: FaultProxy,
    pg_functions: asyncpg.Connection[Any],
    idempotent: bool | None,
) -> None:
    """``SELECT ... FOR UPDATE`` cannot be replayed inside the read-only transaction that
    guards replays, so a lost reply raises ``OutcomeUnknown`` unless the caller said
    ``idempotent=True``, in which case it is replayed."""
    observer = pg_functions
    query = "SELECT count(*) FROM (SELECT n FROM side FOR UPDATE) AS locked"
    async with Supervisor(via(pg_proxy, pg.dsn()), max_size=1) as sup:
        assert await sup.db.fetchval(query) == 0  # prepared: the next run only executes
        since = await observer.fetchval("SELECT clock_timestamp()")

        async def executed() -> bool:
            return await pg_statement_finished(observer, query, since)

        call = sup.db.fetchval(query, idempotent=idempotent)
        task = await cut_reply(pg_proxy, call, executed)
        outcome = await outcome_of(asyncio.wait_for(task, 10))
        if idempotent:
            assert outcome == 0
            assert sup.db.statistics().replays >= 1  # the reply really was lost
        else:
            assert isinstance(outcome, OutcomeUnknown), repr(outcome)
            assert "locking read" in str(outcome)


async def test_mysql_select_of_a_writing_function_is_outcome_unknown(
    mariadb: MariaDBServer, my_proxy: FaultProxy
) -> None:
    """MariaDB: a stored function that MODIFIES SQL DATA, called in a SELECT, reply lost."""
    await my_admin(
        mariadb,
        "DROP FUNCTION IF EXISTS ins_fn; DROP TABLE IF EXISTS side; "
        "CREATE TABLE side (n int AUTO_INCREMENT PRIMARY KEY)",
    )
    observer = await my_connect(mariadb)
    try:
        await my_query(
            observer,
            "CREATE FUNCTION ins_fn() RETURNS int MODIFIES SQL DATA "
            "BEGIN INSERT INTO side VALUES (NULL); RETURN 1; END",
        )

        async def inserted() -> bool:
            return bool(await my_value(observer, "SELECT COUNT(*) FROM side"))

        async with Supervisor(via(my_proxy, mariadb.dsn()), max_size=1) as sup:
            task = await cut_reply(my_proxy, sup.db.fetchval("SELECT ins_fn()"), inserted)
            outcome = await outcome_of(asyncio.wait_for(task, 10))
        rows = await my_value(observer, "SELECT COUNT(*) FROM side")
    finally:
        observer.close()
    assert isinstance(outcome, OutcomeUnknown), f"{outcome!r}; ins_fn() inserted {rows} rows"
    assert rows == 1


# -- item 6: text the client cannot encode is the caller's error, not an outage -------------------

SURROGATE = "\ud800"


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
@pytest.mark.parametrize("where", ["text", "argument"])
@pytest.mark.parametrize("statement", ["select", "insert"])
async def test_unencodable_text_is_raised_without_reconnecting(
    request: pytest.FixtureRequest, backend: str, where: str, statement: str
) -> None:
    """A lone surrogate cannot be encoded: the driver's (or Python's) own error, raised after
    one attempt, five times in a row, with no reconnect, and the backend serves on."""
    server: PostgresServer | MariaDBServer = request.getfixturevalue(
        "pg" if backend == "postgres" else "mariadb"
    )
    p = "$1" if backend == "postgres" else "%s"
    literal = f"'{SURROGATE}'" if where == "text" else p
    args = () if where == "text" else (SURROGATE,)
    if statement == "select":
        op, query = "fetchval", f"SELECT {literal}"
    else:
        op, query = "execute", f"INSERT INTO enc VALUES ({literal})"
    sup = Supervisor(server.dsn(), max_size=2)
    rec = Recorder(sup)
    async with sup:
        db = sup.db
        await db.execute("DROP TABLE IF EXISTS enc", idempotent=True)
        await db.execute("CREATE TABLE enc (t text)", idempotent=True)
        reconnects = db.statistics().reconnects
        for _ in range(5):
            with pytest.raises(Exception) as info:
                await getattr(db, op)(query, *args)
            error = info.value
            assert not isinstance(error, ResilientDBError), repr(error)
            assert any(isinstance(e, UnicodeEncodeError) for e in chain(error)), repr(error)
        await rec.settle()
        assert db.statistics().replays == 0  # one attempt each
        assert db.statistics().reconnects == reconnects
        assert rec.of(*OUTAGE_EVENTS) == []
        assert db.state is State.CONNECTED
        assert await db.fetchval("SELECT COUNT(*) FROM enc") == 0


# -- item 7: DatabaseUnavailable means nothing was applied -----------------------------------------


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
async def test_applied_idempotent_write_that_cannot_be_replayed_is_outcome_unknown(
    request: pytest.FixtureRequest, backend: str
) -> None:
    """The UPDATE committed, its reply was lost, and the server refuses connections until the
    call's deadline: the caller must not be told "nothing was applied"."""
    server: PostgresServer | MariaDBServer
    if backend == "postgres":
        server = pg = request.getfixturevalue("pg")
        await pg_admin(
            pg,
            "DROP TABLE IF EXISTS hot; CREATE TABLE hot (id int PRIMARY KEY, v int NOT NULL); "
            "INSERT INTO hot VALUES (1, 0); ALTER TABLE hot OWNER TO app;",
        )
    else:
        server = mariadb = request.getfixturevalue("mariadb")
        await prepare_hot_mysql(mariadb)

    async def value() -> int:
        return int(
            await asyncio.to_thread(server.admin_query, "SELECT v FROM hot WHERE id = 1", "app")
        )

    async def applied() -> bool:
        return await value() == 5

    async with FaultProxy(server.host, server.port) as proxy:
        sup = Supervisor(
            via(proxy, server.dsn()), connect_timeout=0.5, backoff=Backoff(0.05, 2, 0.2)
        )
        async with sup:
            task = await cut_reply(
                proxy,
                sup.db.execute("UPDATE hot SET v = 5 WHERE id = 1", idempotent=True, timeout=3),
                applied,
                then_refuse=True,
            )
            outcome = await outcome_of(asyncio.wait_for(task, 10))
            assert proxy.stats.refused >= 1  # the replay really could not reconnect
            proxy.pass_through()
    v = await value()
    assert not isinstance(outcome, DatabaseUnavailable), f"{outcome!r} but the row holds v={v}"
    assert isinstance(outcome, OutcomeUnknown), repr(outcome)
    assert v == 5


# -- item 8: replays that sent nothing do not use up the budget -----------------------------------


async def test_reads_ride_out_a_storm_of_resets(pg: PostgresServer, pg_proxy: FaultProxy) -> None:
    """Every connection reset every 150 ms for 2 s: each read (timeout=5) succeeds.

    The on_connect hook makes a round trip of 0.2 s, so every connection the pool opens is
    still opening when the next reset comes: a read meets failed connects and ConnectPaused
    (the pool does not connect while the supervisor reconnects), never a sent statement,
    except on the first reset. None of that may use up its max_replays.
    """

    async def on_connect(conn: Any) -> None:
        await conn.execute("SELECT pg_sleep(0.2)")

    loop = asyncio.get_running_loop()
    async with Supervisor(via(pg_proxy, pg.dsn()), max_size=2, on_connect=on_connect) as sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        pg_proxy.reset_stats()
        storm_ends = loop.time() + 2.0

        async def storm() -> None:
            while loop.time() < storm_ends:
                await asyncio.sleep(0.15)
                pg_proxy.reset()

        async def reader() -> list[Any]:
            seen: list[Any] = []
            while loop.time() < storm_ends:
                seen.append(await outcome_of(sup.db.fetchval("SELECT 1", timeout=5)))
                await asyncio.sleep(0.01)
            return seen

        results = await asyncio.gather(storm(), *(reader() for _ in range(8)))
        outcomes = [r for seen in results[1:] for r in seen]
        errors = [r for r in outcomes if isinstance(r, Exception)]
        assert pg_proxy.stats.resets > 5
        assert errors == [], f"{len(errors)} of {len(outcomes)} reads failed: {errors[:2]!r}"
