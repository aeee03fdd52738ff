"""Outages: the same read/write workload through a server restart, a network partition and a
reset of every connection, for resilientdb and its peers, one after the other.

Each library gets its own FaultProxy (so the proxy counts its connection attempts alone) in
front of the shared PostgreSQL, and its own run of each fault, the order of libraries rotated
from one scenario to the next. Workers pace themselves (one operation per worker every
``PACE`` s at most): three reads (``SELECT 1``) then one write, an ``INSERT`` of a
client-generated unique id into a table without a unique constraint, so that a write applied
twice would show. No library gets application-level retries: what the application sees is
what the library hands it. resilientdb's knocks (bare TCP connects on the port between its
reconnect attempts) reach the proxy too: they are counted apart (``knocks``), not as
connection attempts.

Afterwards the table is reconciled against what the workers saw: ``lost`` = writes the
application was told succeeded that are missing, ``duplicates`` = ids present more than
once, ``unknown applied`` = writes that raised but were applied anyway (the honest answer
to those is resilientdb's ``OutcomeUnknown``). ``recovery`` = time from the server accepting
connections again (first successful direct connect, polled every 10 ms; for the partition,
the proxy passing traffic again; for the reset, the reset itself) to the first successful
operation. ``stall`` = the longest gap between two successful operations.

Run alone: ``python -m benchmarks.outages [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from benchmarks import _servers
from benchmarks._clients import PG, TIMEOUTS, AsyncpgPool, PsycopgPool, ResilientDB
from benchmarks._clients import SQLAlchemyEngine as SAEngine
from benchmarks._common import Settings, now, parser, quiet_logs, settings, write_json
from harness.servers import PostgresServer
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

POOL_SIZE = 8
WORKERS = 16
PACE = 0.02  # seconds: each worker starts one operation this often at most
SAFETY_TIMEOUT = 20.0  # the application's own last resort; never expected to fire
BUCKET = 0.1

IDEMPOTENT = "resilientdb, idempotent writes"
LIBRARIES: dict[str, Callable[[str], Any]] = {
    "resilientdb": lambda dsn: ResilientDB(dsn, POOL_SIZE, PG, outage=True),
    IDEMPOTENT: lambda dsn: ResilientDB(dsn, POOL_SIZE, PG, outage=True, idempotent_writes=True),
    "asyncpg pool": lambda dsn: AsyncpgPool(dsn, POOL_SIZE, outage=True),
    "SQLAlchemy pre-ping": lambda dsn: SAEngine(dsn, POOL_SIZE, pre_ping=True, outage=True),
    "psycopg_pool check": lambda dsn: PsycopgPool(dsn, POOL_SIZE, check=True, outage=True),
}
SCENARIOS = ("restart", "blackhole", "reset")


@dataclass
class Record:
    """What the application saw during one run."""

    ok: list[float] = field(default_factory=list)  # completion times of successes
    errors: list[tuple[float, str, str]] = field(default_factory=list)  # (time, op, type)
    examples: dict[str, str] = field(default_factory=dict)  # first message of each type
    acked: set[str] = field(default_factory=set)
    failed_writes: set[str] = field(default_factory=set)


async def _workload(
    client: Any, rec: Record, stop: asyncio.Event, workers: int, pace: float, tag: str
) -> None:
    async def worker() -> None:
        n = 0
        while not stop.is_set():
            t0 = now()
            write = n % 4 == 3
            ident = uuid.uuid4().hex if write else ""
            try:
                async with asyncio.timeout(SAFETY_TIMEOUT):
                    if write:
                        await client.insert(ident, tag)
                    else:
                        await client.scalar()
            except Exception as exc:
                hung = isinstance(exc, TimeoutError) and now() - t0 >= SAFETY_TIMEOUT
                kind = "hung (safety timeout)" if hung else _name(exc)
                rec.errors.append((now(), "write" if write else "read", kind))
                rec.examples.setdefault(kind, f"{now() - t0:.3f}s into the call: {exc}"[:300])
                if write:
                    rec.failed_writes.add(ident)
            else:
                rec.ok.append(now())
                if write:
                    rec.acked.add(ident)
            n += 1
            # Bounded by the stop event; the pause keeps a failing library from spinning.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, pace - (now() - t0))):
                    await stop.wait()

    await asyncio.gather(*(worker() for _ in range(workers)))


def _knocks(client: Any) -> int:
    """TCP knocks made between reconnect attempts (resilientdb only; ``resilientdb._reach``)."""
    sup = getattr(client, "supervisor", None)
    return 0 if sup is None else sum(m.reach.knocks for m in sup._monitors.values())


def _name(exc: BaseException) -> str:
    """The error's type, and the type of its cause when it wraps one (OutcomeUnknown,
    SQLAlchemy's DBAPIError)."""
    cause = exc.__cause__ or getattr(exc, "orig", None)
    return f"{type(exc).__name__}({type(cause).__name__})" if cause else type(exc).__name__


async def _fault(scenario: str, server: PostgresServer, proxy: FaultProxy, down: float) -> float:
    """Inject the fault; return when the database is reachable again (the t_up instant)."""
    if scenario == "restart":
        await asyncio.to_thread(server.stop, "fast")
        poll = asyncio.create_task(_servers.accepting_again(server, 60))
        await asyncio.sleep(down)
        await asyncio.to_thread(server.start)
        return await poll
    if scenario == "blackhole":
        proxy.blackhole()
        await asyncio.sleep(down)
        proxy.pass_through()
        return now()
    proxy.reset()
    return now()


async def run_one(scenario: str, lib: str, s: Settings, tag: str) -> dict[str, Any]:
    server = await _servers.postgres()
    down = {"restart": s.pick(3.0, 0.1), "blackhole": s.pick(2.0, 0.1), "reset": 0.0}[scenario]
    warm, after = s.pick(2.0, 0.1), s.pick(5.0, 0.25)
    rec, stop = Record(), asyncio.Event()
    async with FaultProxy(server.host, server.port) as proxy:
        client = LIBRARIES[lib](with_host(parse_dsn(server.dsn()), proxy.host, proxy.port))
        await client.open()
        try:
            start = now()
            load = asyncio.create_task(_workload(client, rec, stop, s.pick(WORKERS, 4), PACE, tag))
            await asyncio.sleep(warm)
            attempts_before = proxy.stats.connection_attempts
            knocks_before = _knocks(client)
            t_fault = now()
            t_up = await _fault(scenario, server, proxy, down)
            await asyncio.sleep(after)
            t_stop = now()
            stop.set()
            async with asyncio.timeout(SAFETY_TIMEOUT + 5):
                await load
            knocks = _knocks(client) - knocks_before
            # Handshakes only: the knocks (bare TCP connects) are counted apart.
            attempts = proxy.stats.connection_attempts - attempts_before - knocks
        finally:
            async with asyncio.timeout(30):
                await client.close()
    present = await _reconcile(server, tag)
    first_ok = min((t for t in rec.ok if t >= t_up), default=None)
    since = max(start, t_fault - 0.5)
    around = [since, *sorted(t for t in rec.ok if since <= t <= t_stop), t_stop]
    return {
        "ops_ok": len(rec.ok),
        "errors": len(rec.errors),
        "errors_read": sum(1 for e in rec.errors if e[1] == "read"),
        "errors_write": sum(1 for e in rec.errors if e[1] == "write"),
        "error_types": dict(Counter(e[2] for e in rec.errors)),
        "error_examples": rec.examples,
        "writes_acked": len(rec.acked),
        "lost": len(rec.acked - set(present)),
        "duplicates": sum(1 for c in present.values() if c > 1),
        "unknown_applied": len(rec.failed_writes & set(present)),
        "unknown_not_applied": len(rec.failed_writes - set(present)),
        "recovery_s": None if first_ok is None else round(first_ok - t_up, 4),
        "stall_s": round(max(b - a for a, b in itertools.pairwise(around)), 3),
        "connection_attempts": attempts,
        "knocks": knocks,
        "outage_s": round(t_up - t_fault, 3),
        "timeline": _timeline(rec, start, t_fault, t_stop),
        "fault_at_s": round(t_fault - start, 3),
        "up_at_s": round(t_up - start, 3),
    }


def _timeline(rec: Record, start: float, t_fault: float, t_stop: float) -> dict[str, list[float]]:
    """Successes and errors per 100 ms bucket, times relative to the fault; only the buckets
    that ended before the workload stopped (a partial last bucket would look like a drop)."""
    ok: Counter[int] = Counter(int((t - start) / BUCKET) for t in rec.ok)
    err: Counter[int] = Counter(int((e[0] - start) / BUCKET) for e in rec.errors)
    n = int((t_stop - start) / BUCKET)
    return {
        "t": [round(i * BUCKET - (t_fault - start), 2) for i in range(n)],
        "ok_per_s": [ok[i] / BUCKET for i in range(n)],
        "errors_per_s": [err[i] / BUCKET for i in range(n)],
    }


async def _reconcile(server: PostgresServer, tag: str) -> dict[str, int]:
    conn = await asyncpg.connect(server.dsn(), timeout=10)
    try:
        rows = await conn.fetch(
            "SELECT id, count(*) AS n FROM bench_writes WHERE tag = $1 GROUP BY id", tag
        )
    finally:
        await conn.close()
    return {r["id"]: r["n"] for r in rows}


async def _setup() -> None:
    server = await _servers.postgres()
    conn = await asyncpg.connect(server.dsn(), timeout=10)
    try:
        # No unique constraint on purpose: a write applied twice must be visible.
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS bench_writes (id text NOT NULL, tag text NOT NULL)"
        )
        await conn.execute("CREATE INDEX IF NOT EXISTS bench_writes_tag ON bench_writes (tag)")
        await conn.execute("CREATE INDEX IF NOT EXISTS bench_writes_id ON bench_writes (id)")
    finally:
        await conn.close()


async def run(s: Settings) -> dict[str, Any]:
    await _setup()
    run_id = uuid.uuid4().hex[:8]
    results: dict[str, Any] = {
        "timeouts": TIMEOUTS,
        "pool_size": POOL_SIZE,
        "workers": s.pick(WORKERS, 4),
        "pace_ms": round(PACE * 1000),
        "scenarios": {},
    }
    libs = list(LIBRARIES)
    with quiet_logs():
        for i, scenario in enumerate(SCENARIOS):
            by_lib: dict[str, Any] = {}
            for lib in libs[i % len(libs) :] + libs[: i % len(libs)]:
                print(f"outages: {scenario} / {lib}", flush=True)
                by_lib[lib] = await run_one(scenario, lib, s, f"{run_id}/{scenario}/{lib}")
            results["scenarios"][scenario] = {lib: by_lib[lib] for lib in libs}
    write_json("outages", results, s.out)
    plot(results, s)
    return results


def plot(results: dict[str, Any], s: Settings) -> None:
    from benchmarks._common import pyplot

    plt = pyplot()
    scenarios = results["scenarios"]
    fig, axes = plt.subplots(len(scenarios), 1, figsize=(9, 3.2 * len(scenarios)), sharex=True)
    for ax, (scenario, by_lib) in zip(axes, scenarios.items(), strict=True):
        for lib, r in by_lib.items():
            # Pairs of 100 ms buckets: paced workers make single buckets look ragged.
            t, ok = r["timeline"]["t"], r["timeline"]["ok_per_s"]
            t2 = t[::2]
            ok2 = [sum(ok[i : i + 2]) / len(ok[i : i + 2]) for i in range(0, len(ok), 2)]
            ax.plot(t2, ok2, label=f"{lib} ({r['errors']} errors)", linewidth=1.2)
        outage = max(r["outage_s"] for r in by_lib.values())
        if outage > 0.01:
            ax.axvspan(0, outage, color="red", alpha=0.12, label="outage")
        else:
            ax.axvline(0, color="red", linestyle="--", linewidth=1, label="reset")
        ax.set_title(f"{scenario}", fontsize=10)
        ax.set_ylabel("successful ops/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[-1].set_xlabel("seconds since the fault (200 ms buckets)")
    fig.tight_layout()
    s.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(s.out / "outages.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    s = settings(parser(__doc__).parse_args(argv))
    try:
        results = asyncio.run(run(s))
    finally:
        _servers.cleanup()
    from benchmarks.report import outage_section

    print(outage_section(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
