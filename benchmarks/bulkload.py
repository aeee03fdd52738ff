"""Bulk loading with COPY: ``db.copy_records_to_table`` against asyncpg's own
``pool.copy_records_to_table``, on a throwaway PostgreSQL.

Each round loads the same rows once with each contender (the order alternating between
rounds, so that machine noise hits both alike) into an empty UNLOGGED table. The time ratio
of a round is resilientdb's load time divided by asyncpg's (1.02 means 2 % slower); the figure
quoted is the median over rounds, with each contender's median rate in rows per second.

Run alone: ``python -m benchmarks.bulkload [--quick] [--rounds N] [--rows N]``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks import _servers
from benchmarks._common import Settings, median, parser, quiet_logs, settings, write_json

TABLE = "bench_bulkload"


def _rows(n: int) -> list[tuple[int, str, float]]:
    return [(i, f"customer-{i:08d}", i * 0.5) for i in range(n)]


async def compare(dsn: str, rows: int, rounds: int) -> dict[str, Any]:
    import asyncpg

    from resilientdb import Supervisor

    records = _rows(rows)
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=2)
    sup = Supervisor(dsn, min_size=2, max_size=2, memory_watchdog=False)
    try:
        await sup.start()
        db = sup.db
        await db.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await db.execute(f"CREATE UNLOGGED TABLE {TABLE} (id int, name text, amount float8)")

        async def with_asyncpg() -> Any:
            return await pool.copy_records_to_table(TABLE, records=records)

        async def with_resilientdb() -> Any:
            return await db.copy_records_to_table(TABLE, records=records)

        contenders: dict[str, Callable[[], Awaitable[Any]]] = {
            "asyncpg pool": with_asyncpg,
            "resilientdb": with_resilientdb,
        }
        seconds: dict[str, list[float]] = {name: [] for name in contenders}
        ratios: list[float] = []
        for r in range(rounds + 1):  # round 0 warms up (statement caches) and is dropped
            order = list(contenders.items())
            if r % 2:
                order.reverse()
            took: dict[str, float] = {}
            for name, load in order:
                await db.execute(f"TRUNCATE {TABLE}")
                started = time.perf_counter()
                tag = await load()
                took[name] = time.perf_counter() - started
                assert tag == f"COPY {rows}", tag
            if r:
                for name, t in took.items():
                    seconds[name].append(t)
                ratios.append(took["resilientdb"] / took["asyncpg pool"])
        await db.execute(f"DROP TABLE {TABLE}")
    finally:
        await sup.aclose()
        await pool.close()
    return {
        "rows": rows,
        "rounds": rounds,
        "rows_per_s": {n: round(rows / median(v)) for n, v in seconds.items()},
        "time_ratio": round(median(ratios), 4),
        "time_ratio_rounds": [round(x, 4) for x in ratios],
    }


async def run(s: Settings, rounds: int | None = None, rows: int | None = None) -> Any:
    with quiet_logs():
        dsn = (await _servers.postgres()).dsn()
        results = await compare(dsn, rows or s.pick(100_000, 2_000), rounds or s.pick(15, 2))
    write_json("bulkload", results, s.out)
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--rows", type=int, default=None, help="rows per load")
    args = p.parse_args(argv)
    s = settings(args)
    try:
        results = asyncio.run(run(s, args.rounds, args.rows))
    finally:
        _servers.cleanup()
    rate = results["rows_per_s"]
    print(
        f"COPY of {results['rows']} rows, median of {results['rounds']} interleaved rounds: "
        f"asyncpg pool {rate['asyncpg pool']} rows/s, resilientdb {rate['resilientdb']} rows/s, "
        f"time ratio resilientdb/asyncpg {results['time_ratio']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
