"""Outcome markers on the real MariaDB and SQLite (``outcome_markers=True``): a lost COMMIT is
resolved by the marker row's presence, exactly once, at each point around COMMIT.

The loss is made on the transaction's own connection just as COMMIT is sent: the server
commits (or rolls back) and the reply is replaced by a reset connection; on MariaDB also for
real, through the FaultProxy, with the reply held until the connection is reset.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from harness.servers import MariaDBServer
from resilientdb import ConfigurationError, OutcomeUnknown, Supervisor, TransactionLost, events
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

pytestmark = pytest.mark.timeout(90)

Before = Callable[[Any], Awaitable[Any]]
OPTIONS: dict[str, Any] = {"outcome_markers": True, "max_size": 2}


class _Lose:
    """The transaction's connection; at COMMIT, ``how`` runs on the real connection and the
    reply is lost (a reset connection), once."""

    def __init__(self, inner: Any, how: str) -> None:
        self._inner, self._how = inner, how

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def execute(self, query: str, *args: Any, **kw: Any) -> Any:
        if query == "COMMIT" and self._how:
            how, self._how = self._how, ""
            if how in ("COMMIT", "ROLLBACK"):
                await self._inner.execute(how)
            raise ConnectionResetError(104, "Connection reset by peer (injected)")
        return await self._inner.execute(query, *args, **kw)


def _p(sup: Supervisor) -> str:
    return "?" if sup.db._engine.backend.facts.family == "sqlite" else "%s"


@pytest.fixture(params=["mysql", "sqlite"])
async def target(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, Supervisor]]:
    if request.param == "mysql":
        server: MariaDBServer = request.getfixturevalue("mariadb")
        dsn = server.dsn()
    else:
        dsn = f"sqlite:///{tmp_path}/markers.db"
    async with Supervisor(dsn, **OPTIONS) as sup:
        await sup.db.execute("DROP TABLE IF EXISTS moves", idempotent=True)
        await sup.db.execute("DROP TABLE IF EXISTS resilientdb_outcomes", idempotent=True)
        await sup.db.execute("CREATE TABLE moves (tag varchar(40) NOT NULL)", idempotent=True)
        yield dsn, sup


async def _count(sup: Supervisor, tag: str) -> int:
    n: int = await sup.db.fetchval(f"SELECT count(*) FROM moves WHERE tag = {_p(sup)}", tag)
    return n


@pytest.mark.parametrize(
    ("how", "calls", "outcome"),
    [
        ("COMMIT", 1, "committed"),  # the server committed; the reply was lost
        ("ROLLBACK", 2, "aborted"),  # the server rolled back as the connection died
    ],
)
async def test_lost_commit_resolved_by_the_marker(
    target: tuple[str, Supervisor], how: str, calls: int, outcome: str
) -> None:
    _, sup = target
    resolved: list[events.OutcomeResolved] = []
    sup.on(events.OutcomeResolved, resolved.append)
    ran = 0

    async def work(tx: Any) -> str:
        nonlocal ran
        ran += 1
        await tx.execute(f"INSERT INTO moves (tag) VALUES ({_p(sup)})", how)
        if ran == 1:
            tx._conn = _Lose(tx._conn, how)
        return "done"

    assert await sup.db.run_in_transaction(work, timeout=20) == "done"
    assert ran == calls
    assert await _count(sup, how) == 1
    st = sup.db.statistics()
    assert (st.resolved_committed, st.resolved_aborted, st.outcome_unknown) == (
        outcome == "committed",
        outcome == "aborted",
        0,
    )
    table = "resilientdb_outcomes"
    assert await sup.db.fetchval(f"SELECT count(*) FROM {table}") == 1  # the one that committed


async def test_transaction_block_and_exactly_once(target: tuple[str, Supervisor]) -> None:
    _, sup = target
    with pytest.raises(TransactionLost, match="rolled back"):
        async with sup.db.transaction(resolve=True) as tx:
            await tx.execute(f"INSERT INTO moves (tag) VALUES ({_p(sup)})", "block")
            tx._conn = _Lose(tx._conn, "ROLLBACK")
    assert await _count(sup, "block") == 0
    await sup.db.execute(
        f"INSERT INTO moves (tag) VALUES ({_p(sup)})", "once", exactly_once=True, timeout=20
    )
    assert await _count(sup, "once") == 1
    # A transaction that only read inserts no marker.
    before = await sup.db.fetchval("SELECT count(*) FROM resilientdb_outcomes")
    await sup.db.run_in_transaction(lambda tx: tx.fetchval("SELECT count(*) FROM moves"))
    assert await sup.db.fetchval("SELECT count(*) FROM resilientdb_outcomes") == before


async def test_the_sweep_removes_old_markers(target: tuple[str, Supervisor]) -> None:
    _, sup = target
    for _ in range(3):
        await sup.db.run_in_transaction(
            lambda tx: tx.execute(f"INSERT INTO moves (tag) VALUES ({_p(sup)})", "swept")
        )
    table = "resilientdb_outcomes"
    assert await sup.db.fetchval(f"SELECT count(*) FROM {table}") == 3
    # Age them past the retention, and let the next commit start a sweep.
    await sup.db.execute(f"UPDATE {table} SET created = created - 100000", idempotent=True)
    from resilientdb import _markers

    _markers._state(sup.db._engine).last_sweep = -math.inf
    await sup.db.run_in_transaction(
        lambda tx: tx.execute(f"INSERT INTO moves (tag) VALUES ({_p(sup)})", "swept")
    )
    for _ in range(200):  # the sweep runs in the background (bounded wait: 2 s)
        if await sup.db.fetchval(f"SELECT count(*) FROM {table}") == 1:
            break
        await asyncio.sleep(0.01)
    assert await sup.db.fetchval(f"SELECT count(*) FROM {table}") == 1
    assert await _count(sup, "swept") == 4


async def test_without_markers_a_lost_commit_stays_unknown(tmp_path: Path) -> None:
    async with Supervisor(f"sqlite:///{tmp_path}/plain.db") as sup:
        await sup.db.execute("CREATE TABLE moves (tag text)")

        async def work(tx: Any) -> None:
            await tx.execute("INSERT INTO moves (tag) VALUES ('x')")
            tx._conn = _Lose(tx._conn, "COMMIT")

        with pytest.raises(OutcomeUnknown):
            await sup.db.run_in_transaction(work)
        with pytest.raises(ValueError, match="outcome_markers"):
            await sup.db.run_in_transaction(work, resolve=True)
    with pytest.raises(ConfigurationError, match="outcome_retention"):
        Supervisor(f"sqlite:///{tmp_path}/plain.db", outcome_retention=5)


async def test_mariadb_reply_held_then_reset(mariadb: MariaDBServer) -> None:
    """For real: COMMIT and its reply delayed by the proxy, the connection reset once the
    server has committed (seen from outside): resolved committed, applied once."""
    async with FaultProxy(mariadb.host, mariadb.port) as proxy:
        dsn = with_host(parse_dsn(mariadb.dsn()), proxy.host, proxy.port)
        async with (
            Supervisor(mariadb.dsn(), max_size=1) as direct,
            Supervisor(dsn, command_timeout=3.0, connect_timeout=1.0, **OPTIONS) as sup,
        ):
            await direct.db.execute("DROP TABLE IF EXISTS moves", idempotent=True)
            await direct.db.execute("CREATE TABLE moves (tag varchar(40))", idempotent=True)
            seen: list[int] = []
            ran = 0

            async def cut() -> None:
                for _ in range(300):  # bounded: 3 s
                    n = await direct.db.fetchval("SELECT count(*) FROM moves WHERE tag = 'real'")
                    if n:
                        seen.append(n)
                        break
                    await asyncio.sleep(0.01)
                proxy.reset()
                proxy.set_latency(0)

            async def work(tx: Any) -> None:
                nonlocal ran
                ran += 1
                await tx.execute("INSERT INTO moves (tag) VALUES ('real')")
                if ran == 1:
                    proxy.set_latency(0.5)  # the marker, COMMIT and their replies
                    asyncio.get_running_loop().create_task(cut())

            await sup.db.run_in_transaction(work, timeout=30)
            assert seen == [1] and ran == 1
            assert proxy.stats.resets >= 1
            assert sup.db.statistics().resolved_committed == 1
            n = await direct.db.fetchval("SELECT count(*) FROM moves WHERE tag = 'real'")
            assert n == 1


async def test_marker_table_dropped_underneath(target: tuple[str, Supervisor]) -> None:
    """The marker insert refused (the table dropped by someone): that transaction commits
    unresolved, and the next one creates the table again."""
    _, sup = target
    insert = f"INSERT INTO moves (tag) VALUES ({_p(sup)})"
    await sup.db.run_in_transaction(lambda tx: tx.execute(insert, "dropped"))
    await sup.db.execute("DROP TABLE resilientdb_outcomes", idempotent=True)
    await sup.db.run_in_transaction(lambda tx: tx.execute(insert, "dropped"))
    assert await _count(sup, "dropped") == 2
    await sup.db.run_in_transaction(lambda tx: tx.execute(insert, "dropped"))
    assert await sup.db.fetchval("SELECT count(*) FROM resilientdb_outcomes") == 1
    assert await _count(sup, "dropped") == 3
