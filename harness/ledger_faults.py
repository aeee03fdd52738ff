"""The ledger's fault schedules and runners, per backend: what ``tests/test_ledger.py`` runs
once and ``benchmarks/ledger.py`` repeats at length.

Network databases (PostgreSQL, MariaDB) run through a fault proxy: proxy resets, a partition, a
restart, killed connections, and hot rows locked by another session, which on MariaDB outlast
the app's 1 s lock wait timeout (1205) and on PostgreSQL make deadlocks (40P01), so that
batches and multi-statement texts fail mid-way. SQLite gets its own: a write lock held by
another process, connections closed underneath, the file moved away.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from harness.ledger import SQLITE, Dialect, Fault, Ledger, Report
from harness.servers import MariaDBServer, PostgresServer, ServerError
from resilientdb import Backoff, Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import Adapters, FaultProxy

DURATION = 20.0
RESOLVED = "resolved (committed, aborted, unknown)"


def server_faults(
    server: PostgresServer | MariaDBServer,
    proxy: FaultProxy,
    hot_rows: Callable[[], Awaitable[str]],
) -> list[Fault]:
    """The schedule for a network database: the proxy's faults, a restart, killed
    connections, and hot rows locked by another session (twice)."""

    async def reset() -> int:
        return proxy.reset()

    async def blackhole() -> str:
        proxy.blackhole()
        await asyncio.sleep(1.0)
        proxy.pass_through()
        return "1.0 s"

    async def restart() -> tuple[int | None, int | None]:
        old = server.pid
        await asyncio.to_thread(server.restart)
        return old, server.pid

    async def kill() -> int:
        return await asyncio.to_thread(server.kill_app_connections)

    return [
        (2.0, "proxy reset (connections)", reset),
        (3.0, "hot rows locked", hot_rows),
        (6.0, "blackhole", blackhole),
        (8.5, "server restart (old pid, new pid)", restart),
        (12.0, "killed connections", kill),
        (13.5, "hot rows locked again", hot_rows),
        (17.0, "proxy reset again (connections)", reset),
    ]


# PostgreSQL's lock_timeout is not a retryable error, so the hot rows make deadlocks instead:
# another session locks account 0 and mark hot-0, then at once asks for account 1 and mark
# hot-1, which app transactions, batches and multi-statement texts may hold while they wait
# for the first pair. A session checks for a deadlock once, when it has waited
# deadlock_timeout: the app's sessions after 100 ms (a role setting, see `prepared`), later
# than the locking session's second request, so they find the cycle and are the victims
# (40P01), mid-way through a batch or a text. The locking session checks after 300 ms (it is
# the victim when no app session can see the cycle any more); rounds go on for 2.5 s.
PG_DEADLOCK_SECONDS = 2.5
PG_DEADLOCK_ROUNDS = 10
PG_DEADLOCK = (
    "BEGIN; SET LOCAL deadlock_timeout = '300ms'; SET LOCAL lock_timeout = '5s'; "
    "SELECT id FROM accounts WHERE id = 0 FOR UPDATE; "
    "SELECT mark_id FROM marks WHERE mark_id = 'hot-0' FOR UPDATE; SELECT pg_sleep(0.05); "
    "SELECT id FROM accounts WHERE id = 1 FOR UPDATE; "
    "SELECT mark_id FROM marks WHERE mark_id = 'hot-1' FOR UPDATE; SELECT pg_sleep(0.2); "
    "COMMIT;"
)
PG_APP_DEADLOCK_TIMEOUT = "100ms"


def postgres_faults(pg: PostgresServer, proxy: FaultProxy) -> list[Fault]:
    async def deadlocks() -> str:
        rounds = victim = 0
        end = time.monotonic() + PG_DEADLOCK_SECONDS
        while rounds < PG_DEADLOCK_ROUNDS and time.monotonic() < end:
            rounds += 1
            try:
                await asyncio.to_thread(pg.admin_query, PG_DEADLOCK, "app")
            except ServerError:  # the locking session was the victim this time
                victim += 1
        total = await asyncio.to_thread(
            pg.admin_query, "SELECT deadlocks FROM pg_stat_database WHERE datname = 'app'"
        )
        return f"{rounds} rounds ({victim} lost by the locker); deadlocks so far: {total}"

    return server_faults(pg, proxy, deadlocks)


# The app's MariaDB sessions wait 1 s for a row lock (innodb_lock_wait_timeout, set on every
# new connection); the hot rows are held 2.5 s, so statements that wait for them fail with
# 1205 mid-way through a batch, a multi-statement text or a transaction.
MY_LOCK_WAIT_TIMEOUT = 1
MY_HOT_ROWS_HELD = 2.5
MY_HOLD_HOT_ROWS = (
    "SET SESSION innodb_lock_wait_timeout = 5; "  # bounded, in case a lock is never released
    "START TRANSACTION; SELECT id FROM accounts WHERE id IN (0, 1) FOR UPDATE; "
    "SELECT mark_id FROM marks WHERE mark_id IN ('hot-0', 'hot-1') FOR UPDATE; "
    f"SELECT SLEEP({MY_HOT_ROWS_HELD}); COMMIT;"
)


async def short_lock_waits(conn: Any) -> None:
    """on_connect for MariaDB: this session waits at most 1 s for a row lock."""
    async with conn.cursor() as cur:
        await cur.execute(f"SET SESSION innodb_lock_wait_timeout = {MY_LOCK_WAIT_TIMEOUT}")


def mysql_faults(server: MariaDBServer, proxy: FaultProxy) -> list[Fault]:
    async def hot_rows() -> str:
        # The locking session may itself be picked as a deadlock victim (1213) by an app
        # transaction holding one of the rows: then it tries again, a bounded number of times.
        lost = 0
        for _ in range(3):
            try:
                await asyncio.to_thread(server.admin_query, MY_HOLD_HOT_ROWS, "app")
                break
            except ServerError:
                lost += 1
        return f"accounts 0, 1 and marks hot-0, hot-1 held {MY_HOT_ROWS_HELD} s ({lost} lost)"

    return server_faults(server, proxy, hot_rows)


@contextlib.asynccontextmanager
async def prepared(server: PostgresServer | MariaDBServer) -> AsyncIterator[Any]:
    """What the server's sessions need for the run; yields the supervisor's on_connect."""
    if not isinstance(server, PostgresServer):
        yield short_lock_waits
        return
    # deadlock_timeout may be set only by a superuser: for the app's role, during the run.
    sql = f"ALTER ROLE app SET deadlock_timeout = '{PG_APP_DEADLOCK_TIMEOUT}'"
    await asyncio.to_thread(server.admin_query, sql)
    try:
        yield None
    finally:
        await asyncio.to_thread(
            lambda: server.ensure_running().admin_query("ALTER ROLE app RESET deadlock_timeout")
        )


Schedule = Callable[[list[Fault]], list[Fault]]


def _once(faults: list[Fault]) -> list[Fault]:
    return faults


async def run_through_proxy(
    server: PostgresServer | MariaDBServer,
    dialect: Dialect,
    faults: Callable[[Any, FaultProxy], list[Fault]],
    command_timeout: float,
    *,
    duration: float = DURATION,
    workers: int = 16,
    schedule: Schedule = _once,
    **ledger_options: Any,
) -> tuple[Report, dict[str, Any]]:
    """The ledger against ``server`` through a fault proxy; the report and the faults fired
    (and, under ``"resolved (committed, aborted, unknown)"``, the lost COMMITs resolved).
    ``ledger_options`` go to ``Ledger`` (``resolve``, ``exactly_once``)."""
    async with FaultProxy(server.host, server.port) as proxy:
        dsn = with_host(parse_dsn(server.dsn()), proxy.host, proxy.port)
        async with prepared(server) as on_connect:
            sup = Supervisor(
                dsn,
                max_size=8,
                command_timeout=command_timeout,
                connect_timeout=1.0,
                gate_timeout=15,
                backoff=Backoff(initial=0.05, maximum=0.5),
                on_connect=on_connect,
            )
            async with sup:
                ledger = Ledger(sup, dialect, **ledger_options)
                await ledger.setup()
                fired = await ledger.run(duration, workers, schedule(faults(server, proxy)))
                st = sup.db.statistics()
                fired[RESOLVED] = (
                    st.resolved_committed,
                    st.resolved_aborted,
                    st.resolved_unknown,
                )
                return await ledger.reconcile(fired), fired


def sqlite_faults(sup: Supervisor, backend: Any, path: Path) -> list[Fault]:
    """SQLite's faults; ``backend`` is the supervised adapter (its raw connections)."""

    async def lock_holder() -> int:
        # Another OS process takes the write lock for a second.
        script = (
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); time.sleep(1.0); c.execute('COMMIT')"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path))
        return await proc.wait()

    async def close_underneath() -> int:
        raws = backend.raw_connections()
        for raw in raws:
            await raw.close()
        return len(raws)

    async def move_away() -> bool:
        aside = path.with_suffix(".aside")
        os.rename(path, aside)
        await asyncio.sleep(0.5)
        # A reconnect must never create an empty database here.
        created = await asyncio.to_thread(path.exists)
        os.rename(aside, path)
        return created

    return [
        (2.0, "write lock held by another process (exit code)", lock_holder),
        (6.0, "connections closed underneath", close_underneath),
        (10.0, "file moved away for 0.5 s (empty db created?)", move_away),
        (14.0, "write lock held again (exit code)", lock_holder),
        (17.0, "connections closed underneath again", close_underneath),
    ]


async def run_sqlite(
    path: Path, *, duration: float = DURATION, workers: int = 8, schedule: Schedule = _once
) -> tuple[Report, dict[str, Any]]:
    """The ledger on a SQLite file, with SQLite's faults; the report and the faults fired."""
    adapters = Adapters()
    sup = Supervisor(
        f"sqlite:///{path}",
        backend_factory=adapters,
        max_size=4,
        gate_timeout=15,
        failed_probe_interval=0.2,
        backoff=Backoff(initial=0.02, maximum=0.2),
    )
    async with sup:
        ledger = Ledger(sup, SQLITE)
        await ledger.setup()
        fired = await ledger.run(
            duration, workers, schedule(sqlite_faults(sup, adapters["default"], path))
        )
        return await ledger.reconcile(fired), fired
