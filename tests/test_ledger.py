"""The ledger under fire: nothing acknowledged is lost, nothing is applied twice."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from resilientdb import Backoff, Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy
from tests.ledger import MYSQL, POSTGRES, SQLITE, Dialect, Fault, Ledger, Report
from tests.servers import MariaDBServer, PostgresServer

DURATION = 20.0


def server_faults(
    server: PostgresServer | MariaDBServer,
    proxy: FaultProxy,
    kill: tuple[str, Callable[[], Awaitable[int]]],
    lock_sql: str,
) -> list[Fault]:
    """The schedule for a network database: the proxy's faults, a restart, killed
    connections, and a lock held by another session."""

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

    async def contention() -> str:
        await asyncio.to_thread(server.admin_query, lock_sql, "app")
        return "accounts 0 and 1 locked 0.8 s"

    return [
        (2.0, "proxy reset (connections)", reset),
        (5.0, "blackhole", blackhole),
        (8.5, "server restart (old pid, new pid)", restart),
        (12.0, kill[0], kill[1]),
        (14.5, "lock contention", contention),
        (17.0, "proxy reset again (connections)", reset),
    ]


def postgres_faults(pg: PostgresServer, proxy: FaultProxy) -> list[Fault]:
    async def terminate() -> int:
        out = await asyncio.to_thread(
            pg.admin_query,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'app'",
        )
        return int(out)

    lock = (
        "BEGIN; SELECT * FROM accounts WHERE id IN (0, 1) FOR UPDATE; SELECT pg_sleep(0.8); COMMIT;"
    )
    return server_faults(pg, proxy, ("killed connections", terminate), lock)


def mysql_faults(server: MariaDBServer, proxy: FaultProxy) -> list[Fault]:
    async def kill() -> int:
        ids = await asyncio.to_thread(
            server.admin_query, "SELECT id FROM information_schema.processlist WHERE user = 'app'"
        )
        killed = 0
        for line in ids.split():
            try:
                await asyncio.to_thread(server.admin_query, f"KILL {int(line)}")
                killed += 1
            except Exception:  # it ended by itself meanwhile
                pass
        return killed

    lock = (
        "START TRANSACTION; SELECT * FROM accounts WHERE id IN (0, 1) FOR UPDATE; "
        "SELECT SLEEP(0.8); COMMIT;"
    )
    return server_faults(server, proxy, ("killed connections", kill), lock)


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
) -> tuple[Report, dict[str, Any]]:
    """The ledger against ``server`` through a fault proxy; the report and the faults fired."""
    async with FaultProxy(server.host, server.port) as proxy:
        dsn = with_host(parse_dsn(server.dsn()), proxy.host, proxy.port)
        sup = Supervisor(
            dsn,
            max_size=8,
            command_timeout=command_timeout,
            connect_timeout=1.0,
            gate_timeout=15,
            backoff=Backoff(initial=0.05, maximum=0.5),
        )
        async with sup:
            ledger = Ledger(sup, dialect)
            await ledger.setup()
            fired = await ledger.run(duration, workers, schedule(faults(server, proxy)))
            return await ledger.reconcile(fired), fired


def _check(report: Report, fired: dict[str, Any], min_ok: int) -> None:
    print("\n" + report.table())
    assert report.clean, report.table()
    assert not report.errors, report.errors
    assert sum(c["ok"] for c in report.kind_counts.values()) > min_ok


async def test_ledger_postgres(pg: PostgresServer) -> None:
    report, fired = await run_through_proxy(pg, POSTGRES, postgres_faults, 1.0)
    _check(report, fired, 500)
    # The faults really happened.
    assert fired["proxy reset (connections)"] > 0
    old, new = fired["server restart (old pid, new pid)"]
    assert old != new
    assert fired["killed connections"] > 0


async def test_ledger_mysql(mariadb: MariaDBServer) -> None:
    report, fired = await run_through_proxy(mariadb, MYSQL, mysql_faults, 2.0)
    _check(report, fired, 300)
    assert fired["proxy reset (connections)"] > 0
    old, new = fired["server restart (old pid, new pid)"]
    assert old != new
    assert fired["killed connections"] > 0


def sqlite_faults(sup: Supervisor, path: Path) -> list[Fault]:
    async def lock_holder() -> int:
        # Another OS process takes the write lock for a second.
        script = (
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); time.sleep(1.0); c.execute('COMMIT')"
        )
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", script, str(path))
        return await proc.wait()

    async def close_underneath() -> int:
        backend: Any = sup.db._backend
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
    sup = Supervisor(
        f"sqlite:///{path}",
        max_size=4,
        gate_timeout=15,
        failed_probe_interval=0.2,
        backoff=Backoff(initial=0.02, maximum=0.2),
    )
    async with sup:
        ledger = Ledger(sup, SQLITE)
        await ledger.setup()
        fired = await ledger.run(duration, workers, schedule(sqlite_faults(sup, path)))
        return await ledger.reconcile(fired), fired


async def test_ledger_sqlite(tmp_path: Path) -> None:
    report, fired = await run_sqlite(tmp_path / "ledger.db")
    _check(report, fired, 300)
    assert fired["write lock held by another process (exit code)"] == 0
    assert fired["connections closed underneath"] > 0
    assert fired["file moved away for 0.5 s (empty db created?)"] is False
