"""Overhead of the supervisor on the hot path: resilientdb against the raw driver pool.

Each round runs every contender for the same short slice, in alternating order, so machine
noise hits all alike; the figure quoted is the median over rounds of each round's ratio
(resilientdb ops/s divided by raw ops/s, so a ratio of raw_time / resilientdb_time <= 1.05
means at most 5 % slower). Run alone: ``python -m benchmarks.overhead [--rounds N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg

from benchmarks._common import median, percentile, throughput, write_json
from resilientdb import Supervisor
from tests.servers import PostgresServer

QUERY = "SELECT 1"


async def bench_postgres(dsn: str, rounds: int, slice_s: float, pool_size: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
    sup = Supervisor(dsn, min_size=pool_size, max_size=pool_size)
    try:
        async with sup:
            db = sup.db
            contenders = {
                "asyncpg pool": lambda: pool.fetchval(QUERY),
                "resilientdb": lambda: db.fetchval(QUERY),
            }
            for concurrency in (1, 32):
                # Warm both: statement caches, pool connections.
                for op in contenders.values():
                    await throughput(op, concurrency, 0.3)
                per: dict[str, list[float]] = {name: [] for name in contenders}
                lat: dict[str, list[float]] = {name: [] for name in contenders}
                ratios: list[float] = []
                for r in range(rounds):
                    order = list(contenders.items())
                    if r % 2:
                        order.reverse()
                    got: dict[str, float] = {}
                    for name, op in order:
                        ops, latencies = await throughput(op, concurrency, slice_s)
                        got[name] = ops
                        per[name].append(ops)
                        lat[name].extend(latencies)
                    ratios.append(got["asyncpg pool"] / got["resilientdb"])
                results[f"c{concurrency}"] = {
                    "ops_per_s": {n: round(median(v)) for n, v in per.items()},
                    "p50_us": {n: round(percentile(v, 50) * 1e6, 1) for n, v in lat.items()},
                    "p99_us": {n: round(percentile(v, 99) * 1e6, 1) for n, v in lat.items()},
                    "time_ratio_median": round(median(ratios), 4),
                    "time_ratio_rounds": [round(x, 4) for x in ratios],
                }
    finally:
        await pool.close()
    return results


def report(results: dict[str, Any]) -> str:
    lines = [
        "| backend | tasks | raw ops/s | resilientdb ops/s | p50 raw / rdb (us) "
        "| p99 raw / rdb (us) | time ratio rdb/raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for backend, by_c in results.items():
        for c, r in by_c.items():
            raw, rdb = r["ops_per_s"]
            lines.append(
                f"| {backend} | {c[1:]} | {r['ops_per_s'][raw]:,} | {r['ops_per_s'][rdb]:,} "
                f"| {r['p50_us'][raw]} / {r['p50_us'][rdb]} "
                f"| {r['p99_us'][raw]} / {r['p99_us'][rdb]} | {r['time_ratio_median']:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--slice", type=float, default=1.0, help="seconds per contender per round")
    parser.add_argument("--pool-size", type=int, default=10)
    args = parser.parse_args(argv)
    server = PostgresServer()
    try:
        server.start()
        results = {
            "postgres": asyncio.run(
                bench_postgres(server.dsn(), args.rounds, args.slice, args.pool_size)
            )
        }
    finally:
        server.cleanup()
    write_json("overhead", results)
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
