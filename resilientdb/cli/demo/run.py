"""``resilientdb demo``: one workload, through resilientdb and on the raw driver at the same
time, under the same real faults; a line per second, then a summary reconciled with what the
database holds.

Without ``--dsn`` everything is local and removed at the end: a throwaway PostgreSQL (the
default) or two SQLite files (``--backend sqlite``); see ``scenarios.py``. The figures are
measured, never assumed: see ``report.py``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack, suppress

from ... import events
from ..._states import State
from ...errors import ConfigurationError, DatabaseUnavailable
from .._common import EXIT_BAD_INPUT, EXIT_FAIL, EXIT_OK, CLIError, one_line, say
from .faults import FaultRecord
from .report import render_faults, render_summary, tally
from .scenarios import Scenario, embedded_postgres, network, sqlite
from .workload import Run, raw_outcome, supervised_outcome

__all__ = ["demo"]

WORKERS = 8
RATE = 25.0  # operations per second per worker, offered
MAX_STORY = 12  # lines of supervisor events in the summary
SETUP_TIMEOUT = 10.0  # for the database to accept the first connection


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


async def demo(*, duration: float, dsn: str | None, plot: str | None, backend: str) -> int:
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
            if dsn is not None:
                scenario: Scenario = await network(stack, dsn, duration)
            elif backend == "sqlite":
                scenario = await sqlite(stack, duration)
            else:
                scenario = await embedded_postgres(stack, duration)
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
