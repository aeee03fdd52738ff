"""Memory and soak: what waiting callers cost, and whether reconnecting leaks.

Both parts use the in-memory fake backend (``fake://``), so the figures are resilientdb's own
and not a driver's buffers.

- Waiters: 10,000 callers wait at the gate of a supervisor whose database is down. Resident
  memory (psutil) before and while they wait; then, with tracemalloc, the bytes allocated per
  waiting caller against a control of the same number of bare tasks waiting on one
  ``asyncio.Event`` (what any application pays for 10,000 pending tasks). Then the database
  comes back: every caller must succeed and every task must be gone.
- Soak: 10,000 reconnect cycles (the database goes down, a caller finds out and reports the
  loss, the one reconnect loop probes, retires the pool generation, reopens the gate, the
  caller goes through). Resident memory after 1,000 and after 10,000 cycles (growth must be
  flat: under 5 MB), then the same run under tracemalloc with the lines that grew most, and
  the tasks alive before and after.

Run alone: ``python -m benchmarks.memory [--quick]``.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from typing import Any

import psutil

from benchmarks._common import Settings, now, parser, quiet_logs, settings, write_json
from harness.polling import until
from resilientdb import Backoff, State, Supervisor
from resilientdb.testing import Adapters

MB = 1024 * 1024
GROWTH_LIMIT_MB = 5.0


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _fake_supervisor(max_waiters: int) -> tuple[Any, Any]:
    """A supervisor of the fake backend, and that backend."""
    import resilientdb.testing.fake  # noqa: F401  (registers fake://)

    adapters = Adapters()
    sup = Supervisor(
        "fake://db",
        backend_factory=adapters,
        max_waiters=max_waiters,
        gate_timeout=300,
        memory_watchdog=False,
        # A failed check counts as the first attempt: the next probe waits `initial`.
        backoff=Backoff(initial=0.001, maximum=0.2),
    )
    return sup, adapters["default"]


async def _gate_waiters(n: int, measure: Any) -> dict[str, Any]:
    """``n`` callers at the gate of a down backend: memory with them waiting, then release."""
    sup, backend = _fake_supervisor(n + 10)
    async with sup:
        db = sup.db
        tasks_before = len(asyncio.all_tasks())
        before = measure()
        backend.up = False
        callers = [asyncio.create_task(db.fetchval("SELECT 1")) for _ in range(n)]
        await until(lambda: db.statistics().waiting == n, 120)
        waiting = measure()
        tasks_waiting = len(asyncio.all_tasks())
        backend.up = True
        async with asyncio.timeout(120):
            results = await asyncio.gather(*callers, return_exceptions=True)
        failed = sum(1 for r in results if isinstance(r, BaseException))
        del callers, results
        await asyncio.sleep(0)
        after = measure()
        tasks_after = len(asyncio.all_tasks())
        backend.executed.clear()
    return {
        "before": before,
        "waiting": waiting,
        "after": after,
        "failed_calls": failed,
        "tasks_before": tasks_before,
        "tasks_waiting": tasks_waiting,
        "tasks_after": tasks_after,
    }


async def _control_tasks(n: int) -> int:
    """Traced bytes of ``n`` bare tasks waiting on one event (the application's own cost)."""
    event = asyncio.Event()
    before = _traced()
    tasks = [asyncio.create_task(event.wait()) for _ in range(n)]
    await asyncio.sleep(0)
    during = _traced()
    event.set()
    await asyncio.gather(*tasks)
    return during - before


async def waiters(n: int) -> dict[str, Any]:
    rss = await _gate_waiters(n, _rss)
    tracemalloc.start()
    try:
        control = await _control_tasks(n)
        traced = await _gate_waiters(n, _traced)
    finally:
        tracemalloc.stop()
    per_caller = (traced["waiting"] - traced["before"]) / n
    return {
        "callers": n,
        "rss_before_mb": round(rss["before"] / MB, 2),
        "rss_waiting_mb": round(rss["waiting"] / MB, 2),
        "rss_after_mb": round(rss["after"] / MB, 2),
        "rss_per_caller_bytes": round((rss["waiting"] - rss["before"]) / n),
        "traced_per_caller_bytes": round(per_caller),
        "traced_per_bare_task_bytes": round(control / n),
        "resilientdb_per_caller_bytes": round(per_caller - control / n),
        "failed_calls": rss["failed_calls"] + traced["failed_calls"],
        "tasks_before": rss["tasks_before"],
        "tasks_waiting": rss["tasks_waiting"],
        "tasks_after": rss["tasks_after"],
    }


async def _cycles(sup: Any, backend: Any, count: int) -> int:
    """``count`` reconnect cycles; returns how many did not end in a fresh generation."""
    db = sup.db
    missed = 0
    for _ in range(count):
        generation = db.statistics().generation
        backend.up = False
        caller = asyncio.create_task(db.fetchval("SELECT 1"))
        # The caller's acquire fails and it reports the loss; the monitor's check finds the
        # server down and starts reconnecting (a blip healed before the check is no outage).
        for _ in range(1000):
            if db.state is not State.CONNECTED:
                break
            await asyncio.sleep(0)
        backend.up = True
        async with asyncio.timeout(10):
            await caller  # it went through the gate: the backend is connected again
        if db.statistics().generation == generation:
            missed += 1
        backend.executed.clear()
    return missed


async def soak(cycles: int, warm: int, trace: bool) -> dict[str, Any]:
    sup, backend = _fake_supervisor(100)
    async with sup:
        tasks_before = len(asyncio.all_tasks())
        started = now()
        missed = await _cycles(sup, backend, warm)
        if trace:
            tracemalloc.start(10)
        snap_warm = tracemalloc.take_snapshot() if trace else None
        at_warm = _traced() if trace else _rss()
        missed += await _cycles(sup, backend, cycles - warm)
        at_end = _traced() if trace else _rss()
        snap_end = tracemalloc.take_snapshot() if trace else None
        elapsed = now() - started
        tasks_after = len(asyncio.all_tasks())
        reconnects = sup.db.statistics().reconnects
    top: list[str] = []
    if snap_warm is not None and snap_end is not None:
        tracemalloc.stop()
        diff = snap_end.compare_to(snap_warm, "lineno")
        top = [str(stat) for stat in diff[:5]]
    return {
        "cycles": cycles,
        "reconnects": reconnects,
        "missed_cycles": missed,
        "seconds": round(elapsed, 2),
        f"{'traced' if trace else 'rss'}_at_{warm}_mb": round(at_warm / MB, 3),
        f"{'traced' if trace else 'rss'}_at_{cycles}_mb": round(at_end / MB, 3),
        "growth_mb": round((at_end - at_warm) / MB, 3),
        "tasks_before": tasks_before,
        "tasks_after": tasks_after,
        "top_growth": top,
    }


async def run(s: Settings) -> dict[str, Any]:
    n = s.pick(10_000, 1_000)
    cycles, warm = s.pick(10_000, 2_000), s.pick(1_000, 200)
    with quiet_logs():
        print(f"memory: {n:,} callers waiting at the gate", flush=True)
        wait = await waiters(n)
        print(f"memory: soak, {cycles:,} reconnect cycles (RSS, then tracemalloc)", flush=True)
        rss = await soak(cycles, warm, trace=False)
        traced = await soak(cycles, warm, trace=True)
    results = {
        "waiters": wait,
        "soak_rss": rss,
        "soak_traced": traced,
        "growth_limit_mb": GROWTH_LIMIT_MB,
        "warm_cycles": warm,
    }
    write_json("memory", results, s.out)
    return results


def main(argv: list[str] | None = None) -> int:
    s = settings(parser(__doc__).parse_args(argv))
    results = asyncio.run(run(s))
    from benchmarks.report import memory_section

    print(memory_section(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
