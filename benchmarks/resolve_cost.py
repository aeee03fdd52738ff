"""The cost of resolving lost COMMITs: a transfer through ``run_in_transaction`` with
``resolve=False`` (plain) against ``resolve=True`` (the transaction learns its id before
COMMIT), on PostgreSQL, at 1 and 32 concurrent tasks.

A transfer reads one balance and moves an amount between two of 1000 accounts (the lower id
updated first, so that concurrent transfers never deadlock). The contenders are interleaved
as finely as possible, because this machine's noise (fsync above all) swamps slices of a
second: every task runs them alternately, through one supervisor, so each meets the same
load at the same moment. Per round, the ratio is the resolving transfer's median latency
over the plain one's; the figure quoted is the median over rounds (1.05: resolving is 5 %
slower), with the extra microseconds a transaction.

Run alone: ``python -m benchmarks.resolve_cost [--quick] [--rounds N] [--per-task N]``.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from typing import Any

from benchmarks import _servers
from benchmarks._common import Settings, median, parser, quiet_logs, settings, write_json

TARGET = 1.05
CONCURRENCY = (1, 32)
POOL_SIZE = 10
ACCOUNTS = 1000


async def _transfer(tx: Any, a: int, b: int) -> int:
    low, high = min(a, b), max(a, b)
    balance: int = await tx.fetchval("SELECT balance FROM bench_acct WHERE id = $1", low)
    await tx.execute("UPDATE bench_acct SET balance = balance - 1 WHERE id = $1", low)
    await tx.execute("UPDATE bench_acct SET balance = balance + 1 WHERE id = $1", high)
    return balance


async def _round(ops: dict[str, Any], tasks: int, per_task: int) -> dict[str, list[float]]:
    """``tasks`` tasks, each running the contenders alternately ``per_task`` times (the
    first contender alternating too): every contender meets the same load at the same
    moment. The latencies of each, in seconds."""
    names = list(ops)
    lat: dict[str, list[float]] = {n: [] for n in names}

    async def worker(k: int) -> None:
        perf = time.perf_counter
        for i in range(per_task):
            for name in names if (i + k) % 2 else reversed(names):
                t0 = perf()
                await ops[name]()
                lat[name].append(perf() - t0)

    await asyncio.gather(*(worker(k) for k in range(tasks)))
    return lat


async def bench(rounds: int, per_task: int) -> dict[str, Any]:
    from resilientdb import Supervisor

    dsn = (await _servers.postgres()).dsn()
    setup = Supervisor(dsn, min_size=1, max_size=1)
    async with setup:
        await setup.db.execute(
            "DROP TABLE IF EXISTS bench_acct; "
            "CREATE TABLE bench_acct (id int PRIMARY KEY, balance bigint NOT NULL); "
            f"INSERT INTO bench_acct SELECT g, 1000000 FROM generate_series(1, {ACCOUNTS}) g"
        )
    # One supervisor for both: the same pool, the same connections, the same moments.
    sup = Supervisor(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    rng = random.Random(16)

    def pair() -> tuple[int, int]:
        a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
        return a, b

    async def plain_op() -> None:
        await sup.db.run_in_transaction(_transfer, *pair(), resolve=False)

    async def resolving_op() -> None:
        await sup.db.run_in_transaction(_transfer, *pair(), resolve=True)

    out: dict[str, Any] = {"target": TARGET, "method": "alternating, same pool"}
    async with sup:
        ops = {"plain": plain_op, "resolving": resolving_op}
        for tasks in CONCURRENCY:
            await _round(ops, tasks, 5)  # warm: statement caches, connections
            ratios, extra, medians = [], [], {n: [] for n in ops}
            for _ in range(rounds):
                lat = await _round(ops, tasks, per_task)
                plain, resolving = median(lat["plain"]), median(lat["resolving"])
                ratios.append(resolving / plain)
                extra.append((resolving - plain) * 1e6)
                medians["plain"].append(plain * 1e6)
                medians["resolving"].append(resolving * 1e6)
            result = {
                "time_ratio": round(median(ratios), 4),
                "time_ratio_rounds": [round(r, 4) for r in ratios],
                "extra_us": round(median(extra), 1),
                "p50_us": {n: round(median(v), 1) for n, v in medians.items()},
            }
            out[f"transfer @{tasks}"] = result
            print(
                f"  transfer @{tasks:<2} resolving/plain = {result['time_ratio']:.3f} "
                f"(+{result['extra_us']} us a transaction; medians "
                f"{result['p50_us']['plain']} vs {result['p50_us']['resolving']} us)",
                flush=True,
            )
    return out


async def run(s: Settings, rounds: int | None = None, per_task: int | None = None) -> Any:
    rounds = rounds or s.pick(9, 1)
    per_task = per_task or s.pick(100, 3)
    with quiet_logs():
        print("resolve cost: PostgreSQL", flush=True)
        figures = await bench(rounds, per_task)
    results = {"rounds": rounds, "per_task": per_task, "postgres": figures}
    write_json("resolve_cost", results, s.out)
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--per-task", type=int, default=None, help="transfers per task per round")
    args = p.parse_args(argv)
    try:
        asyncio.run(run(settings(args), args.rounds, args.per_task))
    finally:
        _servers.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
