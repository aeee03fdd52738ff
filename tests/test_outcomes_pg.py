"""A lost COMMIT resolved on the real PostgreSQL: exactly once, at every point around COMMIT.

The connection is lost (through the FaultProxy, or the server ending the backend) before
COMMIT is sent, after it is sent and before the server ran it, and after the server
committed but before the reply came back. Every time the transfer is applied exactly once:
the call succeeds (committed) or runs the callable again (rolled back), and the proxy's
counters or the server prove the fault happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from harness.servers import PostgresServer
from resilientdb import OutcomeUnknown, Supervisor, TransactionLost, events
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

pytestmark = pytest.mark.timeout(60)

Hook = Callable[[], Awaitable[None]]


@pytest.fixture
async def ledger(pg: PostgresServer) -> AsyncIterator[PostgresServer]:
    await asyncio.to_thread(
        pg.admin_query,
        "DROP TABLE IF EXISTS moves; CREATE TABLE moves (seq serial PRIMARY KEY, tag text); "
        "ALTER TABLE moves OWNER TO app;",
        "app",
    )
    yield pg


async def _count(pg: PostgresServer, tag: str) -> int:
    conn = await asyncpg.connect(pg.dsn())
    try:
        n: int = await conn.fetchval("SELECT count(*) FROM moves WHERE tag = $1", tag)
        return n
    finally:
        await conn.close()


class _Intercept:
    """The transaction's connection, with a hook run just before COMMIT is sent (once) and
    a record of the statements sent."""

    def __init__(self, inner: Any, before: Hook | None) -> None:
        self._inner, self._before = inner, before
        self.sent: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def execute(self, query: str, *args: Any, **kw: Any) -> Any:
        self.sent.append(query)
        if query == "COMMIT" and self._before is not None:
            before, self._before = self._before, None
            await before()
        return await self._inner.execute(query, *args, **kw)

    async def fetchrow(self, query: str, *args: Any, **kw: Any) -> Any:
        self.sent.append(query)
        return await self._inner.fetchrow(query, *args, **kw)


def _on_commit(tx: Any, before: Hook | None) -> _Intercept:
    """Run ``before`` when the transaction is about to send COMMIT."""
    tx._conn = spy = _Intercept(tx._conn, before)
    return spy


class Run:
    """A supervisor through a proxy, and a transfer whose COMMIT meets a fault once."""

    def __init__(self, sup: Supervisor, proxy: FaultProxy, tag: str) -> None:
        self.sup, self.proxy, self.tag = sup, proxy, tag
        self.calls = 0
        self.resolved: list[events.OutcomeResolved] = []
        sup.on(events.OutcomeResolved, self.resolved.append)

    async def outcomes(self, expected: int) -> list[str]:
        """The resolutions announced, once ``expected`` have been delivered (events go out
        on a background task), waiting at most a second."""
        for _ in range(100):
            if len(self.resolved) >= expected:
                break
            await asyncio.sleep(0.01)
        return [e.outcome for e in self.resolved]

    async def transfer(self, fault: Hook | None, **kw: Any) -> str:
        async def work(tx: Any) -> str:
            self.calls += 1
            await tx.execute("INSERT INTO moves (tag) VALUES ($1)", self.tag)
            if self.calls == 1 and fault is not None:
                _on_commit(tx, fault)
            return f"done {self.calls}"

        result: str = await self.sup.db.run_in_transaction(work, timeout=20, **kw)
        return result


def _supervised(pg: PostgresServer, proxy: FaultProxy) -> Supervisor:
    dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
    return Supervisor(dsn, command_timeout=2.0, connect_timeout=1.0, max_size=2)


async def test_lost_before_commit_is_sent_reruns(ledger: PostgresServer) -> None:
    async with FaultProxy(ledger.host, ledger.port) as proxy, _supervised(ledger, proxy) as sup:
        run = Run(sup, proxy, "before")

        async def cut() -> None:
            assert proxy.reset() >= 1
            await asyncio.sleep(0.1)  # the driver sees the reset: COMMIT is never sent

        assert await run.transfer(cut) == "done 2"
        assert proxy.stats.resets >= 1
        assert run.calls == 2
        assert await run.outcomes(1) == []  # nothing to ask: COMMIT never left
    assert await _count(ledger, "before") == 1


async def test_commit_sent_but_never_run_resolves_aborted(ledger: PostgresServer) -> None:
    async with FaultProxy(ledger.host, ledger.port) as proxy, _supervised(ledger, proxy) as sup:
        run = Run(sup, proxy, "dropped")

        async def cut() -> None:
            # COMMIT reaches the proxy and waits there; the connection dies first.
            proxy.set_latency(0.5)

            async def later() -> None:
                await asyncio.sleep(0.15)
                proxy.reset()
                proxy.set_latency(0)

            asyncio.get_running_loop().create_task(later())

        assert await run.transfer(cut) == "done 2"
        assert proxy.stats.resets >= 1
        assert run.calls == 2
        assert await run.outcomes(1) == ["aborted"]
        st = sup.db.statistics()
        assert (st.resolved_aborted, st.resolved_committed, st.outcome_unknown) == (1, 0, 0)
    assert await _count(ledger, "dropped") == 1


async def test_committed_but_reply_lost_resolves_committed(ledger: PostgresServer) -> None:
    async with FaultProxy(ledger.host, ledger.port) as proxy, _supervised(ledger, proxy) as sup:
        run = Run(sup, proxy, "applied")
        seen: list[int] = []

        async def cut() -> None:
            # COMMIT and its reply are each delayed; the connection is reset once the
            # server has committed (seen from outside), while the reply is held.
            proxy.set_latency(0.5)

            async def later() -> None:
                for _ in range(300):  # bounded: 3 s
                    if n := await _count(ledger, "applied"):
                        seen.append(n)
                        break
                    await asyncio.sleep(0.01)
                proxy.reset()
                proxy.set_latency(0)

            asyncio.get_running_loop().create_task(later())

        assert await run.transfer(cut) == "done 1"
        assert seen == [1]  # the server had committed before the connection died
        assert proxy.stats.resets >= 1
        assert run.calls == 1
        assert await run.outcomes(1) == ["committed"]
        assert sup.db.statistics().resolved_committed == 1
    assert await _count(ledger, "applied") == 1


async def test_commit_in_a_partition_polls_until_decided(ledger: PostgresServer) -> None:
    """COMMIT held by a partition: the server's answer is "in progress" until the partition
    heals and the held COMMIT arrives; the call waits for the verdict within its deadline."""
    async with FaultProxy(ledger.host, ledger.port) as proxy:
        dsn = with_host(parse_dsn(ledger.dsn()), proxy.host, proxy.port)
        async with Supervisor(dsn, command_timeout=0.3, connect_timeout=0.5) as sup:
            run = Run(sup, proxy, "partition")

            async def cut() -> None:
                proxy.blackhole()

                async def heal() -> None:
                    await asyncio.sleep(1.0)
                    proxy.pass_through()

                asyncio.get_running_loop().create_task(heal())

            assert await run.transfer(cut) == "done 1"
            assert run.calls == 1
            assert await run.outcomes(1) == ["committed"]
    assert await _count(ledger, "partition") == 1


async def test_terminated_backend_before_commit(ledger: PostgresServer) -> None:
    """The server ends the backend (pg_terminate_backend) after the write: rolled back,
    re-run once; the backend pid changed."""
    async with Supervisor(ledger.dsn(), max_size=2) as sup:
        calls, pids = 0, []

        async def work(tx: Any) -> None:
            nonlocal calls
            calls += 1
            pids.append(await tx.fetchval("SELECT pg_backend_pid()"))
            await tx.execute("INSERT INTO moves (tag) VALUES ('killed')")
            if calls == 1:
                await asyncio.to_thread(
                    ledger.admin_query, f"SELECT pg_terminate_backend({pids[0]})"
                )

        await sup.db.run_in_transaction(work, timeout=20)
        assert calls == 2 and pids[0] != pids[1]
    assert await _count(ledger, "killed") == 1


async def test_transaction_block_resolve(ledger: PostgresServer) -> None:
    """db.transaction(resolve=True): committed -> the block succeeds; rolled back ->
    TransactionLost, nothing applied. Without resolve, OutcomeUnknown as before."""
    async with FaultProxy(ledger.host, ledger.port) as proxy, _supervised(ledger, proxy) as sup:

        async def drop_commit() -> None:
            proxy.set_latency(0.5)

            async def later() -> None:
                await asyncio.sleep(0.15)
                proxy.reset()
                proxy.set_latency(0)

            asyncio.get_running_loop().create_task(later())

        with pytest.raises(TransactionLost, match="rolled back"):
            async with sup.db.transaction(resolve=True) as tx:
                await tx.execute("INSERT INTO moves (tag) VALUES ('block')")
                _on_commit(tx, drop_commit)
        await asyncio.sleep(0.3)
        with pytest.raises(OutcomeUnknown):
            async with sup.db.transaction() as tx:
                await tx.execute("INSERT INTO moves (tag) VALUES ('block-unresolved')")
                _on_commit(tx, drop_commit)
    assert await _count(ledger, "block") == 0
    assert await _count(ledger, "block-unresolved") == 0


async def test_only_a_transaction_that_wrote_asks_its_id(ledger: PostgresServer) -> None:
    """A transaction that only read sends no extra statement before COMMIT; one that wrote
    asks its id (one statement), unless resolve=False."""
    async with Supervisor(ledger.dsn(), max_size=1) as sup:
        sent: list[str] = []

        async def work(tx: Any, write: bool) -> int:
            spy = _on_commit(tx, None)
            if write:
                await tx.execute("INSERT INTO moves (tag) VALUES ('spied')")
            n: int = await tx.fetchval("SELECT count(*) FROM moves")

            async def done() -> None:
                sent.extend(spy.sent)

            spy._before = done
            return n

        assert await sup.db.run_in_transaction(work, False) == 0
        assert sent and not any("xact" in q for q in sent)
        sent.clear()
        assert await sup.db.run_in_transaction(work, True) == 1
        assert sum("xact_id_if_assigned" in q for q in sent) == 1
        sent.clear()
        assert await sup.db.run_in_transaction(work, True, resolve=False) == 2
        assert sent and not any("xact" in q for q in sent)


async def test_resolve_argument_checked(ledger: PostgresServer, tmp_path: Any) -> None:
    async with Supervisor(f"sqlite:///{tmp_path}/x.db") as sup:
        with pytest.raises(ValueError, match="resolve=True"):
            await sup.db.run_in_transaction(lambda tx: asyncio.sleep(0), resolve=True)
        with pytest.raises(ValueError, match="resolve=True"):
            sup.db.transaction(resolve=True)
        with pytest.raises(TypeError, match="resolve"):
            sup.db.transaction(resolve="yes")  # type: ignore[arg-type]


async def test_exactly_once_single_statement(
    ledger: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """exactly_once=True: an INSERT whose COMMIT is lost is resolved (committed: one row,
    success; dropped: run again, one row) instead of raising OutcomeUnknown."""
    from resilientdb import _outcomes

    learn = _outcomes.learn
    faults: list[Hook] = []

    async def learn_then_fault(engine: Any, tx: Any) -> Any:
        mark = await learn(engine, tx)
        if faults:
            _on_commit(tx, faults.pop())
        return mark

    monkeypatch.setattr(_outcomes, "learn", learn_then_fault)
    async with FaultProxy(ledger.host, ledger.port) as proxy, _supervised(ledger, proxy) as sup:
        resolved: list[events.OutcomeResolved] = []
        sup.on(events.OutcomeResolved, resolved.append)

        async def committed_then_cut() -> None:
            proxy.set_latency(0.5)

            async def later() -> None:
                for _ in range(300):  # bounded: 3 s
                    if await _count(ledger, "once-a"):
                        break
                    await asyncio.sleep(0.01)
                proxy.reset()
                proxy.set_latency(0)

            asyncio.get_running_loop().create_task(later())

        faults.append(committed_then_cut)
        seq = await sup.db.fetchval(
            "INSERT INTO moves (tag) VALUES ('once-a') RETURNING seq", exactly_once=True
        )
        assert isinstance(seq, int) and not faults
        assert proxy.stats.resets >= 1

        async def dropped() -> None:
            proxy.set_latency(0.5)

            async def later() -> None:
                await asyncio.sleep(0.15)
                proxy.reset()
                proxy.set_latency(0)

            asyncio.get_running_loop().create_task(later())

        faults.append(dropped)
        tag = await sup.db.execute("INSERT INTO moves (tag) VALUES ('once-b')", exactly_once=True)
        assert tag == "INSERT 0 1" and not faults
        st = sup.db.statistics()
        assert (st.resolved_committed, st.resolved_aborted, st.outcome_unknown) == (1, 1, 0)
        with pytest.raises(ValueError, match="contradict"):
            await sup.db.execute("SELECT 1", exactly_once=True, idempotent=True)
        # Inside a transaction it joins it: no transaction of its own.
        async with sup.db.transaction():
            await sup.db.execute("INSERT INTO moves (tag) VALUES ('once-c')", exactly_once=True)
    assert await _count(ledger, "once-a") == 1
    assert await _count(ledger, "once-b") == 1
    assert await _count(ledger, "once-c") == 1


@pytest.mark.parametrize("committed", [True, False])
async def test_server_restarted_before_the_question(
    ledger: PostgresServer, committed: bool
) -> None:
    """The server restarts between the lost COMMIT and the question. A new server run may
    give an unflushed id to another transaction, so only "aborted" is trusted there: a
    COMMIT that never ran is re-run (applied once); one that committed is OutcomeUnknown
    (applied once, reported honestly)."""
    tag = f"restart-{committed}"
    async with FaultProxy(ledger.host, ledger.port) as proxy, _supervised(ledger, proxy) as sup:
        run = Run(sup, proxy, tag)
        old_pid = ledger.pid

        async def cut() -> None:
            proxy.set_latency(0.5)

            async def later() -> None:
                if committed:
                    for _ in range(300):  # bounded: 3 s
                        if await _count(ledger, tag):
                            break
                        await asyncio.sleep(0.01)
                else:
                    await asyncio.sleep(0.15)  # COMMIT still held by the proxy
                # The reply never arrives, and the question can only reach the new run.
                proxy.blackhole()
                proxy.reset()
                await asyncio.to_thread(ledger.restart)
                proxy.set_latency(0)
                proxy.pass_through()

            asyncio.get_running_loop().create_task(later())

        if committed:
            with pytest.raises(OutcomeUnknown, match="restarted or failed over"):
                await run.transfer(cut)
            assert await run.outcomes(1) == ["unknown"]
            assert run.calls == 1
        else:
            assert await run.transfer(cut) == "done 2"
            assert await run.outcomes(1) == ["aborted"]
        assert ledger.pid != old_pid
    assert await _count(ledger, tag) == 1


async def test_deadline_while_asking_is_outcome_unknown(ledger: PostgresServer) -> None:
    """COMMIT held by a partition longer than the call's timeout: the question cannot be
    answered in time, so OutcomeUnknown at the deadline (not later); counted as unknown."""
    async with FaultProxy(ledger.host, ledger.port) as proxy:
        dsn = with_host(parse_dsn(ledger.dsn()), proxy.host, proxy.port)
        async with Supervisor(dsn, command_timeout=0.3, connect_timeout=0.5) as sup:
            run = Run(sup, proxy, "deadline")
            heal_at: list[float] = []

            async def cut() -> None:
                proxy.blackhole()
                heal_at.append(asyncio.get_running_loop().time() + 3.0)

            loop = asyncio.get_running_loop()
            started = loop.time()

            async def work(tx: Any) -> None:
                await tx.execute("INSERT INTO moves (tag) VALUES ('deadline')")
                if not heal_at:
                    _on_commit(tx, cut)

            with pytest.raises(OutcomeUnknown):
                await sup.db.run_in_transaction(work, timeout=1.5)
            assert loop.time() - started < 1.5 + 0.5
            assert sup.db.statistics().resolved_unknown == 1
            await asyncio.sleep(max(0.0, heal_at[0] - loop.time()))
            proxy.pass_through()
            assert await run.outcomes(1) == ["unknown"]
    assert await _count(ledger, "deadline") <= 1


async def test_cancelled_while_asking(ledger: PostgresServer) -> None:
    """A caller cancelled while the lost COMMIT is being resolved leaves at once, and leaves
    no connection or task behind."""
    async with FaultProxy(ledger.host, ledger.port) as proxy:
        dsn = with_host(parse_dsn(ledger.dsn()), proxy.host, proxy.port)
        async with Supervisor(dsn, command_timeout=0.3, connect_timeout=0.5) as sup:

            async def work(tx: Any) -> None:
                await tx.execute("INSERT INTO moves (tag) VALUES ('cancelled')")
                _on_commit(tx, _blackhole(proxy))

            task = asyncio.create_task(sup.db.run_in_transaction(work, timeout=20))
            await asyncio.sleep(1.0)  # COMMIT timed out at 0.3 s: the question is pending
            assert not task.done()
            loop = asyncio.get_running_loop()
            started = loop.time()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loop.time() - started < 0.2
            proxy.pass_through()
            for _ in range(300):  # the background release finishes (bounded: 3 s)
                st = sup.db.statistics()
                if st.pool.in_use == 0 and not st.releasing:
                    break
                await asyncio.sleep(0.01)
            assert sup.db.statistics().pool.in_use == 0
    assert await _count(ledger, "cancelled") <= 1


def _blackhole(proxy: FaultProxy) -> Hook:
    async def cut() -> None:
        proxy.blackhole()

    return cut


async def test_a_server_without_the_functions_loses_nothing(
    ledger: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that speaks PostgreSQL's protocol without the transaction-id functions: the
    check made once, outside any transaction, turns resolution off; transactions still
    commit (the question is never asked inside one, where its error would abort it)."""
    from resilientdb.backends.postgres import catalog as pg_catalog

    monkeypatch.setitem(pg_catalog._MARK, True, "SELECT pg_catalog.no_such_function()")
    async with Supervisor(ledger.dsn(), max_size=2) as sup:
        for _ in range(2):
            await sup.db.run_in_transaction(
                lambda tx: tx.execute("INSERT INTO moves (tag) VALUES ('no-functions')")
            )
    assert await _count(ledger, "no-functions") == 2


async def test_a_lost_commit_of_plain_reads_is_no_question(ledger: PostgresServer) -> None:
    """A transaction that only read: its COMMIT lost changes nothing; the result stands."""
    async with FaultProxy(ledger.host, ledger.port) as proxy, _supervised(ledger, proxy) as sup:
        calls = 0

        async def cut() -> None:
            assert proxy.reset() >= 1

        async def work(tx: Any) -> int:
            nonlocal calls
            calls += 1
            n: int = await tx.fetchval("SELECT count(*) FROM moves")
            _on_commit(tx, cut)
            return n + 41

        assert await sup.db.run_in_transaction(work, timeout=20) == 41
        assert calls == 1 and proxy.stats.resets >= 1
        assert sup.db.statistics().outcome_unknown == 0
        with pytest.raises((OutcomeUnknown, TransactionLost)):  # unresolved: as before
            await sup.db.run_in_transaction(work, timeout=20, resolve=False, retries=0)


async def test_an_id_given_again_after_a_crash_is_never_trusted(ledger: PostgresServer) -> None:
    """A crashed backend makes the postmaster replay WAL without restarting; the ids whose
    records were not flushed are given out again. Here the transaction takes an id (nothing
    of it reaches the WAL), its COMMIT is held by a partition, a backend is killed, and
    another transaction then takes the same id and commits. Asked afterwards, the server
    says "committed", about that other transaction: the call must not report success."""
    import os
    import signal

    async with FaultProxy(ledger.host, ledger.port) as proxy:
        dsn = with_host(parse_dsn(ledger.dsn()), proxy.host, proxy.port)
        async with Supervisor(dsn, command_timeout=1.0, connect_timeout=0.5) as sup:
            ours: list[str] = []
            others: list[str] = []

            async def crash_and_reuse() -> None:
                victim = await asyncpg.connect(ledger.dsn())
                os.kill(victim.get_server_pid(), signal.SIGKILL)
                victim.terminate()
                for _ in range(200):  # the postmaster's recovery (bounded: 10 s)
                    try:
                        conn = await asyncpg.connect(ledger.dsn(), timeout=1)
                        break
                    except (OSError, asyncpg.PostgresError, TimeoutError):
                        await asyncio.sleep(0.05)
                try:
                    for _ in range(50):  # bounded: until the lost id is given again
                        async with conn.transaction():
                            others.append(await conn.fetchval("SELECT pg_current_xact_id()::text"))
                        if int(others[-1]) >= int(ours[0]):
                            break
                finally:
                    await conn.close()
                proxy.reset()
                proxy.pass_through()

            async def cut() -> None:
                proxy.blackhole()
                asyncio.get_running_loop().create_task(crash_and_reuse())

            async def work(tx: Any) -> None:
                ours.append(await tx.fetchval("SELECT pg_current_xact_id()::text"))
                _on_commit(tx, cut)

            with pytest.raises(OutcomeUnknown, match="restarted or failed over"):
                await sup.db.run_in_transaction(work, timeout=30)
            assert ours[0] in others  # the id was given again: the fault really happened
            assert sup.db.statistics().resolved_unknown == 1


@pytest.mark.parametrize("how", ["copy", "stream"])
async def test_a_write_by_copy_or_stream_is_resolved_not_taken_for_a_read(
    ledger: PostgresServer, how: str
) -> None:
    """The transaction's only write is a COPY or a streamed ``INSERT ... RETURNING``, and its
    COMMIT is lost before the server ran it: the transaction wrote, so it is resolved
    (aborted) and run again, never passed off as a lost COMMIT of plain reads (which would
    report success with nothing written)."""
    tag = f"by {how}"
    async with FaultProxy(ledger.host, ledger.port) as proxy, _supervised(ledger, proxy) as sup:
        calls = 0

        async def cut() -> None:
            proxy.set_latency(0.5)  # COMMIT waits in the proxy; the connection dies first

            async def later() -> None:
                await asyncio.sleep(0.15)
                proxy.reset()
                proxy.set_latency(0)

            asyncio.get_running_loop().create_task(later())

        async def work(tx: Any) -> int:
            nonlocal calls
            calls += 1
            if how == "copy":
                await tx.copy_records_to_table("moves", records=[(tag,)], columns=["tag"])
            else:
                query = "INSERT INTO moves (tag) VALUES ($1) RETURNING seq"
                async for _ in tx.iterate(query, tag):
                    pass
            if calls == 1:
                _on_commit(tx, cut)
            return calls

        assert await sup.db.run_in_transaction(work, timeout=20) == 2
        assert proxy.stats.resets >= 1
        assert sup.db.statistics().resolved_aborted == 1
    assert await _count(ledger, tag) == 1
