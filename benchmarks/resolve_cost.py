"""The cost of resolving lost COMMITs: a transfer through ``run_in_transaction`` with
``resolve=False`` (plain) against ``resolve=True`` (the transaction learns its id before
COMMIT), on PostgreSQL, at 1 and 32 concurrent tasks.

A transfer reads one balance and moves an amount between two of 1000 accounts (the lower id
updated first, so that concurrent transfers never deadlock). Both contenders share nothing:
each has its own supervisor with the same pool size. Rounds are interleaved, the order
rotated each round (``_common.interleaved``); the ratio is plain ops/s over resolving ops/s,
the median over rounds (1.05: resolving is 5 % slower).

Run alone: ``python -m benchmarks.resolve_cost [--quick] [--rounds N] [--slice S]``.
"""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

from benchmarks import _servers
from benchmarks._common import Settings, interleaved, parser, quiet_logs, settings, write_json

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


async def bench(rounds: int, slice_s: float) -> dict[str, Any]:
    from resilientdb import Supervisor

    dsn = (await _servers.postgres()).dsn()
    setup = Supervisor(dsn, min_size=1, max_size=1)
    async with setup:
        await setup.db.execute(
            "DROP TABLE IF EXISTS bench_acct; "
            "CREATE TABLE bench_acct (id int PRIMARY KEY, balance bigint NOT NULL); "
            f"INSERT INTO bench_acct SELECT g, 1000000 FROM generate_series(1, {ACCOUNTS}) g"
        )
    plain = Supervisor(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    resolving = Supervisor(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    rng = random.Random(16)

    def pair() -> tuple[int, int]:
        a, b = rng.sample(range(1, ACCOUNTS + 1), 2)
        return a, b

    async def plain_op() -> None:
        await plain.db.run_in_transaction(_transfer, *pair(), resolve=False)

    async def resolving_op() -> None:
        await resolving.db.run_in_transaction(_transfer, *pair(), resolve=True)

    out: dict[str, Any] = {"target": TARGET}
    async with plain, resolving:
        ops = {"plain": plain_op, "resolving": resolving_op}
        for tasks in CONCURRENCY:
            result = await interleaved(ops, "plain", tasks, rounds, slice_s)
            out[f"transfer @{tasks}"] = result
            print(
                f"  transfer @{tasks:<2} resolving/plain = "
                f"{result['time_ratio']['resolving']:.3f} "
                f"({result['ops_per_s']['plain']} vs {result['ops_per_s']['resolving']} ops/s)",
                flush=True,
            )
    return out


async def run(s: Settings, rounds: int | None = None, slice_s: float | None = None) -> Any:
    rounds = rounds or s.pick(12, 1)
    slice_s = slice_s or s.pick(1.0, 0.05)
    with quiet_logs():
        print("resolve cost: PostgreSQL", flush=True)
        results = {"rounds": rounds, "slice_s": slice_s, "postgres": await bench(rounds, slice_s)}
    write_json("resolve_cost", results, s.out)
    return results


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--slice", type=float, default=None, help="seconds per contender per round")
    args = p.parse_args(argv)
    try:
        asyncio.run(run(settings(args), args.rounds, args.slice))
    finally:
        _servers.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
