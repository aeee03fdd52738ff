"""Overhead on the hot path: resilientdb against the raw driver pools and the peer libraries.

PostgreSQL: resilientdb, asyncpg's own pool (the baseline), SQLAlchemy's async engine
(pool_pre_ping off and on) and psycopg_pool (check off and on). MariaDB: resilientdb against
aiomysql's pool. SQLite: resilientdb against raw aiosqlite connections. Each runs ``SELECT 1``,
a 100-row read and a 10,000-row read at 1 and 32 concurrent tasks, every pool the same size.

Each round runs every contender for the same short slice, the order rotated each round, so
machine noise hits all alike. The time ratio of a contender is, per round, raw ops/s divided
by its ops/s (1.05 means 5 % slower than the raw driver); the figure quoted is the median
over rounds. Where resilientdb misses its target, a cProfile of it under the same load is
stored with the results.

Also the CPU cost of the gate alone, with the in-memory fake backend: nanoseconds per
``db.fetchval`` through the supervisor against the fake pool's acquire plus the fake
connection's call, and against the fake connection's call alone.

Run alone: ``python -m benchmarks.overhead [--quick] [--rounds N] [--slice S]``.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import _servers, bulkload, resolve_cost
from benchmarks._clients import (
    MYSQL,
    PG,
    SQLITE,
    AiomysqlPool,
    AiosqlitePool,
    AsyncpgPool,
    PsycopgPool,
    ResilientDB,
    SQLAlchemyEngine,
)
from benchmarks._common import (
    Settings,
    interleaved,
    median,
    parser,
    profile_top,
    quiet_logs,
    settings,
    write_json,
)

TARGETS = {"postgres": 1.05, "mariadb": 1.05, "sqlite": 1.10}
QUERIES = {"SELECT 1": "scalar", "100 rows": "rows", "10,000 rows": "big"}
CONCURRENCY = (1, 32)
POOL_SIZE = 10
SQLITE_POOL_SIZE = 4  # one thread per connection: more than the cores only adds switching


Factories = dict[str, Callable[[], Any]]


async def _compare(
    factories: Factories, raw: str, target: float, rounds: int, slice_s: float, s: Settings
) -> dict[str, Any]:
    """Every query at every concurrency for every client; profile resilientdb's misses."""
    out: dict[str, Any] = {}
    clients: dict[str, Any] = {}
    try:
        for name, make in factories.items():
            client = make()
            await client.open()
            clients[name] = client
        for label, method in QUERIES.items():
            for tasks in CONCURRENCY:
                ops = {name: getattr(client, method) for name, client in clients.items()}
                result = await interleaved(ops, raw, tasks, rounds, slice_s)
                result["target"] = target
                out[f"{label} @{tasks}"] = result
                print(
                    f"  {label:8} @{tasks:<2} "
                    + "  ".join(f"{n}={r:.3f}" for n, r in result["time_ratio"].items()),
                    flush=True,
                )
    finally:
        for client in reversed(clients.values()):
            await client.close()
    # Profiles last, on fresh clients of their own, so that the runs above are undisturbed.
    for label, method in QUERIES.items():
        for tasks in CONCURRENCY:
            result = out[f"{label} @{tasks}"]
            if result["time_ratio"]["resilientdb"] > target:
                result["profile"] = {
                    name: await profile_top(factories[name], method, tasks, s.pick(2.0, 0.1))
                    for name in ("resilientdb", raw)
                }
    return out


async def bench_postgres(rounds: int, slice_s: float, s: Settings) -> dict[str, Any]:
    dsn = (await _servers.postgres()).dsn()
    factories: Factories = {
        "asyncpg pool": lambda: AsyncpgPool(dsn, POOL_SIZE),
        "resilientdb": lambda: ResilientDB(dsn, POOL_SIZE, PG),
        "SQLAlchemy": lambda: SQLAlchemyEngine(dsn, POOL_SIZE, pre_ping=False),
        "SQLAlchemy pre-ping": lambda: SQLAlchemyEngine(dsn, POOL_SIZE, pre_ping=True),
        "psycopg_pool": lambda: PsycopgPool(dsn, POOL_SIZE, check=False),
        "psycopg_pool check": lambda: PsycopgPool(dsn, POOL_SIZE, check=True),
    }
    return await _compare(factories, "asyncpg pool", TARGETS["postgres"], rounds, slice_s, s)


async def bench_mariadb(rounds: int, slice_s: float, s: Settings) -> dict[str, Any]:
    dsn = (await _servers.mariadb()).dsn()
    factories: Factories = {
        "aiomysql pool": lambda: AiomysqlPool(dsn, POOL_SIZE),
        "resilientdb": lambda: ResilientDB(dsn, POOL_SIZE, MYSQL),
    }
    return await _compare(factories, "aiomysql pool", TARGETS["mariadb"], rounds, slice_s, s)


async def bench_sqlite(rounds: int, slice_s: float, s: Settings) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="resilientdb-bench-") as tmp:
        path = str(Path(tmp) / "bench.db")
        factories: Factories = {
            "resilientdb": lambda: ResilientDB(f"sqlite:///{path}", SQLITE_POOL_SIZE, SQLITE),
            "aiosqlite": lambda: AiosqlitePool(path, SQLITE_POOL_SIZE),
        }
        return await _compare(factories, "aiosqlite", TARGETS["sqlite"], rounds, slice_s, s)


async def gate_cost(calls: int, rounds: int) -> dict[str, Any]:
    """Nanoseconds (wall and CPU) per call, three ways, on the fake backend (no I/O)."""
    import resilientdb.testing.fake as fake
    from resilientdb import Supervisor
    from resilientdb.testing import Adapters

    adapters = Adapters()
    sup = Supervisor(
        "fake://db", min_size=1, max_size=1, memory_watchdog=False, backend_factory=adapters
    )
    async with sup:
        db = sup.db
        backend = adapters["default"]
        assert isinstance(backend, fake.FakeBackend)
        conn = fake.FakeConnection(backend, backend.generation)

        async def direct() -> None:
            for _ in range(calls):
                await conn.fetchval("SELECT 1")

        async def pooled() -> None:
            for _ in range(calls):
                async with backend.acquire(None) as c:
                    await c.fetchval("SELECT 1")

        async def supervised() -> None:
            for _ in range(calls):
                await db.fetchval("SELECT 1")

        variants = {"connection": direct, "pool + connection": pooled, "resilientdb": supervised}
        wall: dict[str, list[float]] = {n: [] for n in variants}
        cpu: dict[str, list[float]] = {n: [] for n in variants}
        for r in range(rounds + 1):  # round 0 warms up and is dropped
            order = list(variants.items())
            if r % 2:
                order.reverse()
            for name, fn in order:
                backend.executed.clear()
                conn.calls.clear()
                w0, c0 = time.perf_counter_ns(), time.process_time_ns()
                await fn()
                w1, c1 = time.perf_counter_ns(), time.process_time_ns()
                if r:
                    wall[name].append((w1 - w0) / calls)
                    cpu[name].append((c1 - c0) / calls)
        backend.executed.clear()
    ns = {n: round(median(v)) for n, v in wall.items()}
    cpu_ns = {n: round(median(v)) for n, v in cpu.items()}
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "wall_ns_per_call": ns,
        "cpu_ns_per_call": cpu_ns,
        "gate_ns": ns["resilientdb"] - ns["pool + connection"],
        "supervisor_ns": ns["resilientdb"] - ns["connection"],
    }


async def run(s: Settings, rounds: int | None = None, slice_s: float | None = None) -> Any:
    rounds = rounds or s.pick(8, 1)
    slice_s = slice_s or s.pick(0.6, 0.05)
    results: dict[str, Any] = {"rounds": rounds, "slice_s": slice_s}
    with quiet_logs():
        print("overhead: PostgreSQL", flush=True)
        results["postgres"] = await bench_postgres(rounds, slice_s, s)
        print("overhead: MariaDB", flush=True)
        results["mariadb"] = await bench_mariadb(rounds, slice_s, s)
        print("overhead: SQLite", flush=True)
        results["sqlite"] = await bench_sqlite(rounds, slice_s, s)
        print("overhead: gate cost (fake backend)", flush=True)
        results["gate"] = await gate_cost(s.pick(100_000, 2_000), s.pick(7, 1))
        # The cost of resolving lost COMMITs (benchmarks/resolve_cost.py): a transfer through
        # run_in_transaction, plain against resolving, alternated on one supervisor.
        print("overhead: resolving lost COMMITs (PostgreSQL)", flush=True)
        results["resolve"] = await resolve_cost.bench(s.pick(9, 1), s.pick(60, 3))
        # Bulk loading (benchmarks/bulkload.py): db.copy_records_to_table against asyncpg's
        # pool.copy_records_to_table, interleaved; a load is too long a call for the slices above.
        print("overhead: COPY bulk load (PostgreSQL)", flush=True)
        dsn = (await _servers.postgres()).dsn()
        results["bulkload"] = await bulkload.compare(dsn, s.pick(100_000, 2_000), s.pick(15, 2))
    write_json("overhead", results, s.out)
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--slice", type=float, default=None, help="seconds per contender per round")
    args = p.parse_args(argv)
    s = settings(args)
    try:
        results = asyncio.run(run(s, args.rounds, args.slice))
    finally:
        _servers.cleanup()
    from benchmarks.report import overhead_section

    print(overhead_section(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
