"""The large ledger run: many workers move money while faults fire on a schedule, then the
database is reconciled against what every client saw (see harness/ledger.py for the rules).

``python -m benchmarks.ledger [--duration 120] [--workers 32] [--backends postgres,mysql,sqlite]``
runs it on each backend in turn, each with its own throwaway server (SQLite: a temp file) and
the fault schedule of harness/ledger_faults.py repeated every 20 s. Every kind of operation of
harness/ledger.py runs where the backend has it: transfers, single inserts, executemany batches
of INSERTs and of UPDATEs, multi-statement texts, DDL inside transactions (MariaDB), and
transactions whose callable catches an error and carries on. Prints the reconciliation
tables (one row per kind, plus the hot rows the faults lock) and writes
benchmarks/results/ledger.json (``--out DIR`` elsewhere). Exits non-zero on any loss or
duplicate.

``--compare-resolve`` runs PostgreSQL twice with the same schedule: before (a lost COMMIT is
``OutcomeUnknown``: ``resolve=False``, plain single inserts) and after (lost COMMITs resolved
by asking the server: ``run_in_transaction``'s default, single inserts ``exactly_once=True``),
and prints the ``OutcomeUnknown`` the application saw in each.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks._common import write_json
from harness.ledger import MYSQL, POSTGRES, Fault
from harness.ledger_faults import mysql_faults, postgres_faults, run_sqlite, run_through_proxy
from harness.servers import MariaDBServer, PostgresServer


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


async def run_backend(
    backend: str, duration: float, workers: int, **ledger_options: Any
) -> dict[str, Any]:
    """One large run on ``backend`` ("postgres", "mysql", "sqlite"), its own server fresh;
    ``ledger_options`` go to ``Ledger`` (``resolve``, ``exactly_once``; server backends)."""

    def schedule(faults: list[Fault]) -> list[Fault]:
        return repeated(faults, 20.0, duration)

    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            report, fired = await run_sqlite(
                Path(tmp) / "ledger.db", duration=duration, workers=workers, schedule=schedule
            )
    else:
        server = PostgresServer() if backend == "postgres" else MariaDBServer()
        try:
            await asyncio.to_thread(server.start)
            report, fired = await run_through_proxy(
                server,
                POSTGRES if backend == "postgres" else MYSQL,
                postgres_faults if backend == "postgres" else mysql_faults,
                1.0 if backend == "postgres" else 2.0,
                duration=duration,
                workers=workers,
                schedule=schedule,
                **ledger_options,
            )
        finally:
            await asyncio.to_thread(server.cleanup)
    print(f"### {backend}\n\n{report.table()}\n")
    data = asdict(report)
    data["lost"], data["duplicated"] = len(report.lost), len(report.duplicated)
    data["applied_after_failure"] = len(report.applied_after_failure)
    data["clean"] = report.clean
    data["outcome_unknown"] = sum(c["unknown"] for c in report.kind_counts.values())
    data["faults"] = {k: str(v) for k, v in fired.items()}
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=120.0, help="seconds per backend")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument(
        "--backends", default="postgres,mysql,sqlite", help="comma-separated subset to run"
    )
    parser.add_argument("--out", type=Path, default=None, help="directory for ledger.json")
    parser.add_argument(
        "--compare-resolve",
        action="store_true",
        help="PostgreSQL only, twice: lost COMMITs unresolved, then resolved",
    )
    args = parser.parse_args(argv)
    if args.compare_resolve:
        return compare_resolve(args.duration, args.workers, args.out)
    results = {
        b: asyncio.run(run_backend(b, args.duration, args.workers))
        for b in args.backends.split(",")
    }
    write_json("ledger", results, args.out)
    return 0 if all(r["clean"] for r in results.values()) else 1


def compare_resolve(duration: float, workers: int, out: Path | None) -> int:
    """PostgreSQL before (unresolved) and after (resolved): OutcomeUnknown seen by the app."""
    runs = {
        "before": {"resolve": False, "exactly_once": False},
        "after": {"resolve": None, "exactly_once": True},
    }
    results = {
        name: asyncio.run(run_backend("postgres", duration, workers, **opts))
        for name, opts in runs.items()
    }
    for name, r in results.items():
        print(
            f"{name}: OutcomeUnknown {r['outcome_unknown']}, lost {r['lost']}, "
            f"applied twice {r['duplicated']}, "
            f"{r['faults'].get('resolved (committed, aborted, unknown)', '')} resolved"
        )
    write_json("ledger_resolve", results, out)
    return 0 if all(r["clean"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
