"""The large ledger run: many workers move money while faults fire on a schedule, then the
database is reconciled against what every client saw (see tests/ledger.py for the rules).

``python -m benchmarks.ledger [--duration 120] [--workers 32]``. Prints the reconciliation
table and writes benchmarks/results/ledger.json. Exits non-zero on any loss or duplicate.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import asdict

from benchmarks._common import write_json
from resilientdb import Backoff, Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy
from tests.ledger import POSTGRES, Fault, Ledger
from tests.servers import PostgresServer
from tests.test_ledger import postgres_faults


def repeated(faults: list[Fault], period: float, duration: float) -> list[Fault]:
    """The test's fault schedule, repeated every ``period`` seconds over ``duration``."""
    out: list[Fault] = []
    start = 0.0
    round_no = 0
    while start + period <= duration:
        round_no += 1
        out += [(start + t, f"{name} #{round_no}", f) for t, name, f in faults]
        start += period
    return out


async def run_postgres(duration: float, workers: int) -> dict[str, object]:
    pg = PostgresServer()
    try:
        await asyncio.to_thread(pg.start)
        async with FaultProxy(pg.host, pg.port) as proxy:
            dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
            sup = Supervisor(
                dsn,
                max_size=10,
                command_timeout=1.0,
                connect_timeout=1.0,
                gate_timeout=15,
                backoff=Backoff(initial=0.05, maximum=0.5),
            )
            async with sup:
                ledger = Ledger(sup, POSTGRES)
                await ledger.setup()
                faults = repeated(postgres_faults(pg, proxy), 20.0, duration)
                fired = await ledger.run(duration, workers, faults)
                report = await ledger.reconcile(fired)
    finally:
        await asyncio.to_thread(pg.cleanup)
    print(report.table())
    data = asdict(report)
    data["lost"], data["duplicated"] = len(report.lost), len(report.duplicated)
    data["applied_after_failure"] = len(report.applied_after_failure)
    data["clean"] = report.clean
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=32)
    args = parser.parse_args(argv)
    result = asyncio.run(run_postgres(args.duration, args.workers))
    write_json("ledger", {"postgres": result})
    return 0 if result["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
