"""A background job worker on resilientdb: claims jobs from a table and completes them, each in
one transaction that is re-run whole when that is safe.

Run it (SQLite by default, any DSN through --dsn or DATABASE_URL)::

    python examples/worker.py --seconds 30
    python examples/worker.py --dsn postgresql://app@localhost/app --seconds 30

Stop it early with Ctrl-C or SIGTERM: the job in hand finishes, nothing is left half done.

What it shows:

- ``run_in_transaction(process_one)`` re-runs the whole job when the connection was lost
  before COMMIT (or on a deadlock / serialization failure / SQLite BUSY); the job function
  may therefore run more than once, so it only touches the database;
- the job transaction is marked ``idempotent=True``: if the connection died while COMMIT was
  in flight, running it again completes the *next* pending job, never the same job twice
  (its UPDATE only matches a job still pending). Enqueueing is not idempotent (new ids each
  time), so a lost batch raises ``OutcomeUnknown``, which the loop notes and carries on;
- while the database is down the worker simply waits at the gate; if the outage outlasts
  ``gate_timeout``, ``DatabaseUnavailable`` is raised and the loop pauses before going on.

With several workers on PostgreSQL or MySQL, claim with ``... FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import time
import uuid
from typing import Any

from resilientdb import Database, DatabaseUnavailable, OutcomeUnknown, Query, Supervisor, events

BATCH = 20


class Jobs:
    """The job table, with named parameters (Query): one text for every driver."""

    def __init__(self, db: Database, dsn: str) -> None:
        self.db = db

    async def create(self) -> None:
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id varchar(32) PRIMARY KEY, n integer NOT NULL, "
            "status varchar(8) NOT NULL, result bigint)",
            idempotent=True,
        )

    async def enqueue(self, count: int, start: int) -> None:
        rows = [{"id": uuid.uuid4().hex, "n": start + i} for i in range(count)]
        # One batch, all rows or none; new ids each time, so it is not idempotent.
        await self.db.executemany(
            Query("INSERT INTO jobs (id, n, status) VALUES (:id, :n, 'pending')"), rows
        )

    async def process_one(self, tx: Any) -> str | None:
        """Claim the oldest pending job and complete it; may run more than once."""
        row = await tx.fetchrow(
            "SELECT id, n FROM jobs WHERE status = 'pending' ORDER BY n LIMIT 1"
        )
        if row is None:
            return None
        job_id, n = row["id"], row["n"]
        result = sum(i * i for i in range(n % 1000))  # the "work"
        await tx.execute(
            Query(
                "UPDATE jobs SET status = 'done', result = :result "
                "WHERE id = :id AND status = 'pending'",
                result=result,
                id=job_id,
            )
        )
        return str(job_id)


async def work(dsn: str, seconds: float) -> int:
    supervisor = Supervisor(dsn, gate_timeout=10)
    replays = 0

    def count_replay(event: events.OperationReplayed) -> None:
        nonlocal replays
        replays += 1

    supervisor.on(events.OperationReplayed, count_replay)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows
            loop.add_signal_handler(sig, stop.set)
    done = unknown = paused = 0
    async with supervisor:
        jobs = Jobs(supervisor.db, dsn)
        await jobs.create()
        deadline = time.monotonic() + seconds
        enqueued = 0
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                job_id = await supervisor.db.run_in_transaction(
                    jobs.process_one, retries=5, idempotent=True
                )
                if job_id is None:
                    await jobs.enqueue(BATCH, enqueued)
                    enqueued += BATCH
                    continue
                done += 1
            except OutcomeUnknown:
                unknown += 1  # a batch may or may not be enqueued: either way the loop goes on
            except DatabaseUnavailable as exc:
                paused += 1
                print(f"database unavailable, pausing: {exc}", flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
            if done and done % 500 == 0:
                print(f"{done} jobs done, state {supervisor.state}", flush=True)
    print(
        f"worker finished: {done} jobs done, {unknown} with unknown outcome, "
        f"{replays} replays, {paused} pauses",
        flush=True,
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dsn", default=os.environ.get("DATABASE_URL", "sqlite:///jobs.db"), help="database URL"
    )
    parser.add_argument("--seconds", type=float, default=30.0, help="stop after this long")
    args = parser.parse_args()
    return asyncio.run(work(args.dsn, args.seconds))


if __name__ == "__main__":
    raise SystemExit(main())
