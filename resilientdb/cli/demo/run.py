"""``resilientdb demo``: one workload, through resilientdb and on the raw driver at the same
time, under the same real faults; a line per second, then a summary reconciled with what the
database holds.

Without ``--dsn`` everything is local: two SQLite files in a temporary directory (one per run),
removed at the end. With ``--dsn`` (PostgreSQL or MySQL) each run talks to the server through
its own :class:`~resilientdb.testing.FaultProxy`, in tables named ``resilientdb_demo_*`` that
are dropped at the end. The figures are measured, never assumed: see ``report.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

from ... import events
from ..._states import State
from ..._supervisor import Supervisor
from ...config import with_host
from ...errors import ConfigurationError, DatabaseUnavailable
from ...testing import FaultProxy
from .._common import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK, CLIError, one_line, parse_target, say
from .faults import (
    CloseUnderneath,
    Fault,
    FaultRecord,
    HoldWriteLock,
    MoveFileAway,
    NetworkOutage,
    NetworkPartition,
    NetworkReset,
    SQLiteTarget,
)
from .raw_clients import RawAiomysql, RawAiosqlite, RawAsyncpg
from .report import render_faults, render_summary, tally
from .workload import (
    DIALECTS,
    SQLITE,
    Client,
    Run,
    Schema,
    SupervisedClient,
    raw_outcome,
    supervised_outcome,
)

__all__ = ["demo"]

WORKERS = 8
RATE = 25.0  # operations per second per worker, offered
BUSY_TIMEOUT = 1.0  # SQLite's busy timeout, the same for both runs
PREFIX = "resilientdb_demo_"
MAX_STORY = 12  # lines of supervisor events in the summary
SETUP_TIMEOUT = 10.0  # for the database to accept the first connection


@dataclass
class Scenario:
    """What one demo runs: the supervisor, both clients, the faults and their offsets."""

    where: str
    supervisor: Supervisor
    supervised: SupervisedClient
    raw: Client
    raw_setup: str
    faults: list[tuple[float, Fault]] = field(default_factory=list)
    ready: bool = False  # both runs' tables exist (so there is something to drop)


async def _sqlite(stack: AsyncExitStack, duration: float) -> Scenario:
    tmp = tempfile.mkdtemp(prefix="resilientdb-demo-")
    stack.callback(shutil.rmtree, tmp, True)
    sup_path, raw_path = os.path.join(tmp, "resilientdb.db"), os.path.join(tmp, "raw.db")
    opened: list[Any] = []

    async def track(conn: Any) -> None:
        opened.append(conn)  # the fault closes these underneath the supervisor

    sup = Supervisor(f"sqlite:///{sup_path}?timeout={BUSY_TIMEOUT:g}", on_connect=track)
    stack.push_async_callback(sup.aclose)
    schema = Schema(SQLITE, PREFIX)
    raw = RawAiosqlite(raw_path, schema, BUSY_TIMEOUT)
    stack.push_async_callback(raw.aclose)
    targets = [
        SQLiteTarget("resilientdb", sup_path, lambda: opened),
        SQLiteTarget("raw", raw_path, lambda: raw.opened),
    ]
    hold = min(max(duration * 0.125, 0.5), 2.5)
    away = min(max(duration * 0.05, 0.3), 1.0)
    return Scenario(
        where=f"SQLite files in {tmp} (removed at the end)",
        supervisor=sup,
        supervised=SupervisedClient(sup.db, schema, lambda: sup.state.value),
        raw=raw,
        raw_setup="one connection per worker, reopened when found closed",
        faults=[
            (duration * 0.15, CloseUnderneath(targets)),
            (duration * 0.35, HoldWriteLock(targets, round(hold, 1))),
            (duration * 0.65, MoveFileAway(targets, round(away, 1))),
        ],
    )


async def _network(stack: AsyncExitStack, dsn_text: str, duration: float) -> Scenario:
    dsn = parse_target(dsn_text)
    if dsn.backend == "sqlite":
        raise CLIError("--dsn is for a network database; without it the demo uses SQLite", 2)
    if dsn.host is None:
        raise CLIError(f"{dsn}: the demo needs a TCP host to put its fault proxy in front of", 2)
    port = dsn.port or (5432 if dsn.backend == "postgres" else 3306)
    proxies = [FaultProxy(dsn.host, port), FaultProxy(dsn.host, port)]
    for proxy in proxies:
        await stack.enter_async_context(proxy)
    sup_dsn = with_host(dsn, proxies[0].host, proxies[0].port)
    sup = Supervisor(sup_dsn)
    stack.push_async_callback(sup.aclose)
    dialect = DIALECTS[dsn.backend]
    raw: RawAsyncpg | RawAiomysql
    if dsn.backend == "postgres":
        raw = RawAsyncpg(
            with_host(dsn, proxies[1].host, proxies[1].port), Schema(dialect, PREFIX + "raw_")
        )
        setup = "asyncpg.create_pool(max_size=10)"
    else:
        raw = RawAiomysql(dsn, proxies[1].host, proxies[1].port, Schema(dialect, PREFIX + "raw_"))
        setup = "aiomysql.create_pool(maxsize=10, autocommit=True)"
    stack.push_async_callback(raw.aclose)
    supervised = SupervisedClient(sup.db, Schema(dialect, PREFIX + "rdb_"), lambda: sup.state.value)
    labels = ["resilientdb", "raw"]
    down = round(min(max(duration * 0.1, 0.5), 2.0), 1)
    scenario = Scenario(
        where=f"{dsn} through a FaultProxy per run; tables {PREFIX}* dropped at the end",
        supervisor=sup,
        supervised=supervised,
        raw=raw,
        raw_setup=setup,
        faults=[
            (duration * 0.15, NetworkReset(proxies, labels)),
            (duration * 0.35, NetworkOutage(proxies, labels, down)),
            (duration * 0.65, NetworkPartition(proxies, labels, down)),
        ],
    )
    # Registered last, so it runs first on exit: while both clients are still open.
    stack.push_async_callback(_drop_tables, scenario, supervised, raw)
    return scenario


async def _drop_tables(
    scenario: Scenario, supervised: SupervisedClient, raw: RawAsyncpg | RawAiomysql
) -> None:
    if not scenario.ready:
        return  # setup failed: the database may be unreachable, nothing to wait for
    for drop in (supervised.drop, raw.drop):
        with suppress(Exception):
            await asyncio.wait_for(drop(), timeout=10)


class Live:
    """The line per second: throughput, state, replays and errors of both runs."""

    def __init__(self, runs: Sequence[Run], replays: list[float]) -> None:
        self.runs = runs
        self.replays = replays
        self.seen = [0] * len(runs)
        self.timeline: list[tuple[float, str, list[tuple[int, int]]]] = []

    def header(self) -> None:
        sup, raw = (r.client.label for r in self.runs)
        say("each second: operations that succeeded in it (ok/s); replays and errors: totals")
        say(
            f"{'time':>5} | {sup + ' ok/s':>16}  {'state':<13}{'replays':>8}{'errors':>8}"
            f" | {raw + ' ok/s':>18}{'errors':>8}"
        )

    def tick(self, elapsed: float) -> None:
        counts = []
        for i, run in enumerate(self.runs):
            new = run.ops[self.seen[i] :]
            self.seen[i] += len(new)
            counts.append(
                (sum(op.outcome == "ok" for op in new), sum(op.outcome != "ok" for op in new))
            )
        state = self.runs[0].client.state()
        self.timeline.append((elapsed, state, counts))
        errs = [sum(op.outcome != "ok" for op in r.ops) for r in self.runs]
        (ok0, _), (ok1, _) = counts
        say(
            f"{elapsed:>4.0f}s | {ok0:>16}  {state:<13}{len(self.replays):>8}{errs[0]:>8}"
            f" | {ok1:>18}{errs[1]:>8}"
        )

    async def run(self, t0: float, until: float) -> None:
        n = 1
        while t0 + n <= until + 0.5:
            await asyncio.sleep(max(t0 + n - time.monotonic(), 0))
            self.tick(float(n))
            n += 1


async def _faults(scenario: Scenario, t0: float, records: list[FaultRecord]) -> None:
    def clock() -> float:
        return time.monotonic() - t0

    for at, fault in scenario.faults:
        await asyncio.sleep(max(t0 + at - time.monotonic(), 0))
        say(f">> {clock():5.1f}s fault: {fault.name}")
        try:
            record = await fault.inject(clock)
        except Exception as exc:  # reported, and the run goes on: the numbers stay honest
            say(f"   fault could not be injected: {one_line(exc)}")
            continue
        records.append(record)
        lifted = "lifted" if record.end - record.start >= 0.05 else "done"
        say(f"<< {record.end:5.1f}s {lifted}: {record.detail}")


async def demo(*, duration: float, dsn: str | None, plot: str | None) -> int:
    """Run the demo; 0 when resilientdb lost no acknowledged write, else 1."""
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        say(
            "resilientdb demo: --plot needs matplotlib (pip install matplotlib); "
            "running without a plot",
            sys.stderr,
        )
        plot = None
    async with AsyncExitStack() as stack:
        try:
            scenario = await (
                _sqlite(stack, duration) if dsn is None else _network(stack, dsn, duration)
            )
        except ConfigurationError as exc:
            raise CLIError(str(exc), EXIT_BAD_INPUT) from None
        return await _play(scenario, duration, plot)
    raise AssertionError("unreachable")  # pragma: no cover - for mypy: the stack re-raises


async def _play(sc: Scenario, duration: float, plot: str | None) -> int:
    sup = sc.supervisor
    raw_label = sc.raw.label
    say(f"resilientdb demo: {sc.where}")
    say(
        f"workload: {WORKERS} workers x {RATE:g} ops/s per run, for {duration:g}s: 50% reads, "
        "25% inserts, 25% transfers (run_in_transaction); every write carries a unique id"
    )
    say(
        f"both runs at once, same faults: resilientdb (Supervisor defaults) and {raw_label} "
        f"({sc.raw_setup}); errors are counted, never retried"
    )
    await sup.start()
    try:
        try:
            if sup.state is State.FAILED:  # a wrong password or database: no point waiting
                raise DatabaseUnavailable(sup.state.value)
            await sup.wait_until_connected(timeout=SETUP_TIMEOUT)
        except DatabaseUnavailable:
            raise CLIError(f"cannot connect: {(await sup.health()).output}") from None
        await sc.supervised.setup()
        await sc.raw.setup()
    except CLIError:
        raise
    except Exception as exc:  # unreachable, refused, a driver error from the raw client
        raise CLIError(f"cannot set up the demo: {one_line(exc)}") from None
    sc.ready = True
    wall0, t0 = time.time(), time.monotonic()
    replays: list[float] = []
    states: list[tuple[float, str]] = [(0.0, sup.state.value)]
    sup.on(events.OperationReplayed, lambda e: replays.append(e.time - wall0))
    sup.on(events.StateChanged, lambda e: states.append((e.time - wall0, e.new.value)))
    story: list[tuple[float, str]] = []
    for kind in (events.Disconnected, events.ReconnectFailed, events.Reconnected):
        sup.on(kind, lambda e: story.append((e.time - wall0, e.message())))
    runs = [
        Run(sc.supervised, supervised_outcome, WORKERS, RATE),
        Run(sc.raw, raw_outcome, WORKERS, RATE),
    ]
    live = Live(runs, replays)
    live.header()
    records: list[FaultRecord] = []
    ticker = asyncio.create_task(live.run(t0, t0 + duration))
    try:
        await asyncio.gather(*(r.run(t0, duration) for r in runs), _faults(sc, t0, records))
    finally:
        ticker.cancel()
        with suppress(asyncio.CancelledError):
            await ticker
    end = time.monotonic() - t0
    await sup.wait_until_connected(timeout=30)
    written = [await sc.supervised.written(), await sc.raw.written()]
    total_replays = int(sup.stats()["default"]["replays"])
    tallies = [
        tally(sc.supervised.label, runs[0].ops, written[0], total_replays),
        tally(raw_label, runs[1].ops, written[1], None),
    ]
    say("")
    say(f"summary: {duration:g}s, {WORKERS} workers x {RATE:g} ops/s offered per run")
    for line in render_summary(tallies):
        say(line)
    say("")
    for line in render_faults(
        records, [(t.label, r.ops) for t, r in zip(tallies, runs, strict=True)], end
    ):
        say(line)
    say(
        "recovery: from the fault being lifted until reads, writes and transactions had all "
        "succeeded again after its last error"
    )
    if story:
        say("")
        say("what the supervisor did (its own events):")
        for at, text in story[:MAX_STORY]:
            say(f"  {at:5.1f}s {text}")
        if len(story) > MAX_STORY:
            say(f"  ... and {len(story) - MAX_STORY} more")
    if plot is not None:
        from .plot import draw

        draw(plot, live.timeline, states, records, [t.label for t in tallies], end)
        say(f"timeline written to {plot}")
    if tallies[0].clean:
        return EXIT_OK
    say(
        "resilientdb demo: resilientdb lost or duplicated an acknowledged write: this is a bug, "
        "please report it",
        sys.stderr,
    )
    return EXIT_FAIL
