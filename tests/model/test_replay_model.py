"""The model test of the replay and transaction rules.

Hypothesis generates mixes of operations (single statements, multi-statement texts, batches,
SELECTs that call functions, transactions with DDL or a caught error, statements joined to a
transaction, ``run_in_transaction``; ``idempotent`` True/False/None; deadlines and
cancellations) and fault points (before send, after send and before or after the server
applied the statement, during COMMIT, mid-batch, on a later statement of a text, each error
kind, outages) against the in-memory server of ``server.py``, which records what was
applied. After each mix, whatever each call reported must be true:

A lost COMMIT of ``run_in_transaction`` (and of ``transaction(resolve=True)``) is resolved
on the ``postgresql`` flavour by asking the server what became of the transaction id learned
before COMMIT (the question meets scripted faults too).

* success: every write of the call applied exactly once (at least once if idempotent);
* ``OutcomeUnknown`` or cancelled: every write applied at most once (any if idempotent);
* any other error (``DatabaseUnavailable``, ``TransactionLost``, ``TransactionRolledBack``,
  the driver's own): nothing of the call applied;
* nothing applied that no call wrote; every call with a deadline ends within it (plus a
  small bound), and a cancelled one promptly;
* no task, waiter or connection left behind.

CI runs a fixed number of examples per flavour (``MODEL_EXAMPLES``, default 60) with a fixed
seed, so the suite stays bounded and repeatable; raise it locally to search harder.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st

import tests.model.adapter  # noqa: F401  (registers model://)
from resilientdb import Backoff, OutcomeUnknown, Supervisor
from tests.model.server import KINDS, SERVERS, Fault, QueryError, Server, scripted

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "60"))
SLACK = 0.3  # seconds a call may overrun its deadline (scheduling on a loaded machine)
OPTIONS: dict[str, Any] = {
    "min_size": 1,
    "max_size": 3,
    "connect_timeout": 0.2,
    "acquire_timeout": 0.5,
    "command_timeout": 0.3,
    "gate_timeout": 1.0,
    "max_replays": 3,
    "backoff": Backoff(initial=0.005, maximum=0.02),
    "failed_probe_interval": 0.05,
    "keepalive_interval": None,
    "max_lifetime": None,
    "max_idle": None,
    "memory_watchdog": False,
}
OP_KINDS = (
    "write",
    "read",
    "write_fn",
    "side_fn",
    "stable_fn",
    "multi",
    "multi_commit",
    "batch",
    "tx",
    "tx_ddl",
    "tx_caught",
    "run",
    "joined",
    "tx_resolve",
    "once",
)
INSERT = "INSERT INTO log VALUES ($1)"
_ids = itertools.count()


@dataclass
class Op:
    kind: str
    idempotent: bool | None
    timeout: float | None
    faults: list[Fault]
    cancel_after: float | None
    ids: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        writes = {"write": 1, "write_fn": 1, "side_fn": 1, "multi": 2, "multi_commit": 2}
        writes |= {"once": 1}
        writes |= {"batch": 3, "tx": 2, "run": 2}
        writes |= {"tx_ddl": 2, "tx_caught": 2, "joined": 2, "tx_resolve": 2}
        self.ids = [f"id{next(_ids)}" for _ in range(writes.get(self.kind, 0))]


faults = st.builds(
    Fault,
    at=st.sampled_from([0, 0, 0, 1, 1, 2, 3, 4]),
    # Weighted towards the faults that decide replays; hangs are slow (a command timeout).
    kind=st.sampled_from([*KINDS, "lost_after", "lost_after", "lost_before", "retryable", "query"]),
    down=st.sampled_from([0.0, 0.0, 0.05, 0.4]),
)
ops = st.builds(
    Op,
    kind=st.sampled_from(OP_KINDS),
    idempotent=st.sampled_from([None, None, True, False]),
    timeout=st.sampled_from([None, 0.25, 0.8]),
    faults=st.lists(faults, max_size=2, unique_by=lambda f: f.at),
    cancel_after=st.sampled_from([None, None, None, 0.0, 0.02, 0.1]),
)


async def run_op(db: Any, op: Op) -> Any:
    k, ids, kw = op.kind, op.ids, {"timeout": op.timeout}
    if k == "write":
        return await db.execute(INSERT, ids[0], idempotent=op.idempotent, **kw)
    if k == "read":
        return await db.fetch("SELECT v FROM log", idempotent=op.idempotent, **kw)
    if k == "once":  # ValueError where the backend cannot resolve: nothing applied
        return await db.execute(INSERT, ids[0], exactly_once=True, **kw)
    if k == "write_fn":
        return await db.fetchval(f"SELECT write_fn('{ids[0]}')", idempotent=op.idempotent, **kw)
    if k == "side_fn":
        return await db.fetchval(f"SELECT side_fn('{ids[0]}')", idempotent=op.idempotent, **kw)
    if k == "stable_fn":
        return await db.fetchval("SELECT stable_fn()", idempotent=op.idempotent, **kw)
    if k in ("multi", "multi_commit"):
        sep = "; COMMIT; " if k == "multi_commit" else "; "
        text = sep.join(f"INSERT INTO log VALUES ('{i}')" for i in ids)
        return await db.execute(text, idempotent=op.idempotent, **kw)
    if k == "batch":
        return await db.executemany(INSERT, [(i,) for i in ids], idempotent=op.idempotent, **kw)
    if k == "run":

        async def work(tx: Any) -> int:
            for i in ids:
                await tx.execute(INSERT, i)
            return len(ids)

        return await db.run_in_transaction(work, idempotent=bool(op.idempotent), **kw)
    # tx_resolve: a lost COMMIT is resolved by asking the server, where it can tell.
    resolve = k == "tx_resolve" and getattr(db._engine.backend, "transaction_mark", None)
    async with db.transaction(resolve=bool(resolve)) as tx:
        if k in ("tx", "tx_resolve"):
            for i in ids:
                await tx.execute(INSERT, i)
        elif k == "tx_ddl":
            await tx.execute(INSERT, ids[0])
            await tx.execute("CREATE TABLE IF NOT EXISTS scratch (a int)")
            await tx.execute(INSERT, ids[1])
        elif k == "tx_caught":
            await tx.execute(INSERT, ids[0])
            with contextlib.suppress(QueryError):  # carried on: the server may have aborted it
                await tx.execute(INSERT, "!dup")
            await tx.execute(INSERT, ids[1])
        else:  # joined: calls on db itself run inside the block's transaction
            await db.execute(INSERT, ids[0])
            await db.executemany(INSERT, [(ids[1],)])
    return None


def check(op: Op, outcome: Any, committed: list[str]) -> None:
    """Whatever the call reported must be true of what the server applied."""
    counts = [committed.count(i) for i in op.ids]
    what = f"{op} ended with {outcome!r}; applied {counts}"
    single = ("write", "write_fn", "side_fn", "multi", "multi_commit", "batch")
    idempotent = op.idempotent is True and op.kind in single
    idempotent = idempotent or (op.kind == "run" and op.idempotent is True)
    if not isinstance(outcome, BaseException):
        assert all(c >= 1 for c in counts) if idempotent else all(c == 1 for c in counts), what
    elif isinstance(outcome, OutcomeUnknown | asyncio.CancelledError):
        assert idempotent or all(c <= 1 for c in counts), what
    else:
        assert all(c == 0 for c in counts), what


async def scenario(flavor: str, mix: list[Op]) -> None:
    name = f"{flavor}{next(_ids)}"
    server = SERVERS[name] = Server(flavor)
    loop = asyncio.get_running_loop()
    sup = Supervisor(f"model://{name}", **OPTIONS)
    tasks_before = asyncio.all_tasks()
    try:
        async with sup:
            db = sup.db
            outcomes: list[Any] = []
            for op in mix:
                async with scripted(op.faults):
                    started = loop.time()
                    task = asyncio.create_task(run_op(db, op))
                    if op.cancel_after is not None:
                        loop.call_later(op.cancel_after, task.cancel)
                    done = await asyncio.gather(task, return_exceptions=True)
                outcome = done[0]
                outcomes.append(outcome)
                elapsed = loop.time() - started
                if op.cancel_after is not None and isinstance(outcome, asyncio.CancelledError):
                    assert elapsed <= op.cancel_after + SLACK, f"{op}: cancel took {elapsed:.2f}s"
                # db.transaction() blocks: their timeout bounds the open only (and run_op
                # passes none to them).
                unbounded = ("tx", "tx_ddl", "tx_caught", "tx_resolve", "joined")
                if op.timeout is not None and op.kind not in unbounded:
                    assert elapsed <= op.timeout + SLACK, f"{op}: took {elapsed:.2f}s"
            for _ in range(100):  # background releases finish (bounded)
                if db.statistics().pool.in_use == 0 and not db.statistics().releasing:
                    break
                await asyncio.sleep(0.01)
            assert db.statistics().pool.in_use == 0
            assert db.statistics().waiting == 0
    finally:
        del SERVERS[name]
    committed = list(server.committed)
    for op, outcome in zip(mix, outcomes, strict=True):
        check(op, outcome, committed)
    written = {i for op in mix for i in op.ids}
    assert set(committed) <= written, f"applied by nobody: {set(committed) - written}"
    assert asyncio.all_tasks() <= tasks_before | {asyncio.current_task()}


def _op(kind: str, *faults: tuple[int, str, float], **kw: Any) -> Op:
    args: dict[str, Any] = {"idempotent": None, "timeout": None, "cancel_after": None} | kw
    return Op(kind=kind, faults=[Fault(*f) for f in faults], **args)


# The shapes of every defect found so far, run first on every flavour whatever the seed.
KNOWN = [
    [_op("multi", (1, "retryable", 0.0))],  # partial text replayed after a lost race
    [_op("multi_commit", (2, "retryable", 0.0))],  # ... after a COMMIT inside it
    [_op("batch", (1, "retryable", 0.0), idempotent=False)],  # partial batch replayed
    [_op("multi", (1, "query", 0.0))],  # a later statement's error hid the earlier commit
    [_op("batch", (2, "query", 0.0))],
    [_op("tx_ddl", (2, "query", 0.0))],  # a failed implicit commit, then the error raised
    [_op("tx_ddl", (3, "lost_before", 0.0))],  # lost after the implicit commit
    [_op("run", (3, "lost_before", 0.0))],  # ... and re-run by run_in_transaction
    [_op("run", (3, "lost_after", 0.0))],
    # Resolution (PostgreSQL). The first resolving call checks once, outside a transaction,
    # that the server can answer (statement 0); then BEGIN 1, the INSERTs 2 and 3, the id
    # question 4, COMMIT 5, the question after a lost COMMIT 6:
    [_op("run", (5, "lost_after", 0.0))],  # committed, the reply lost: success, once
    [_op("run", (5, "lost_before", 0.0))],  # lost before the server ran it: re-run
    [_op("run", (5, "lost_after", 0.0), (6, "lost_before", 0.0))],  # the question lost too
    [_op("run", (5, "lost_after", 0.4), timeout=0.25)],  # no answer within the deadline
    [_op("run", (5, "lost_after", 0.0), (6, "query", 0.0))],  # the server refuses to say
    [_op("run", (5, "hang_before", 0.0))],  # COMMIT timed out unapplied: aborted, re-run
    [_op("run", (4, "lost_before", 0.0))],  # lost while learning the id: re-run
    [_op("run", (0, "lost_after", 0.0), (4, "lost_after", 0.0))],  # the check lost: unresolved
    [_op("tx_resolve", (5, "lost_after", 0.0))],
    [_op("tx_resolve", (5, "lost_before", 0.0))],
    [_op("run", (2, "query", 0.0))],  # failed: the id question refused, no COMMIT sent
    [_op("once", (4, "lost_after", 0.0))],  # exactly_once: check, BEGIN, INSERT, id, COMMIT
    [_op("once", (4, "lost_before", 0.0))],
    [_op("tx_caught")],  # COMMIT answered ROLLBACK
    [_op("write", (0, "lost_after", 0.4), idempotent=True, timeout=0.25)],  # then unavailable
    [_op("write_fn", (0, "lost_after", 0.0))],  # a SELECT that writes
    [_op("side_fn", (0, "lost_after", 0.0))],  # ... outside the tables: the catalog decides
    [_op("stable_fn", (0, "lost_after", 0.0))],
    [_op("write", (0, "client", 0.0)), _op("read")],  # the caller's input, no outage
    [_op("read", (0, "hang_before", 0.0), timeout=0.25)],  # the deadline holds
    [_op("write", (0, "hang_after", 0.0), cancel_after=0.02)],  # a cancel returns at once
    [_op("joined", (2, "lost_after", 0.0))],
    # cancelled while the block's ROLLBACK hangs: the connection still goes back
    [_op("tx", (1, "query", 0.0), (2, "hang_before", 0.0), cancel_after=0.02)],
]


@pytest.mark.timeout(max(120, EXAMPLES))  # about 0.15 s an example; a long search may run
@pytest.mark.parametrize("flavor", ["postgresql", "mysql", "sqlite"])
def test_what_each_call_reports_is_what_was_applied(flavor: str) -> None:
    @seed(20261202)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(mix=st.lists(ops, min_size=1, max_size=6))
    def run(mix: list[Op]) -> None:
        asyncio.run(scenario(flavor, mix))

    for mix in KNOWN:
        run = example(mix=mix)(run)
    run()


@pytest.mark.parametrize(
    ("fault", "result", "how"),
    [
        ((5, "lost_after", 0.0), 2, "committed"),  # applied, reply lost: success, no re-run
        ((5, "lost_before", 0.0), 2, "aborted"),  # never ran: re-run, applied once
        ((4, "lost_after", 0.0), 2, None),  # lost while learning the id: re-run, no question
    ],
)
def test_a_lost_commit_is_resolved(fault: tuple[int, str, float], result: int, how: str) -> None:
    """The shapes above reach the resolution (the counters say so), not just a safe error."""

    async def main() -> None:
        name = f"resolve{next(_ids)}"
        server = SERVERS[name] = Server("postgresql")
        op = _op("run", fault)
        try:
            async with Supervisor(f"model://{name}", **OPTIONS) as sup:
                async with scripted(op.faults):
                    assert await run_op(sup.db, op) == result
                st = sup.db.statistics()
                counts = (st.resolved_committed, st.resolved_aborted, st.resolved_unknown)
                assert counts == (how == "committed", how == "aborted", 0)
                assert st.outcome_unknown == 0
        finally:
            del SERVERS[name]
        assert sorted(server.committed) == sorted(op.ids)

    asyncio.run(main())
