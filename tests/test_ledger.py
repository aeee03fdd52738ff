"""The ledger under fire: nothing acknowledged is lost, nothing is applied twice."""

from __future__ import annotations

import asyncio
from typing import Any

from resilientdb import Backoff, Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy
from tests.ledger import MYSQL, POSTGRES, Fault, Ledger
from tests.servers import MariaDBServer, PostgresServer

DURATION = 20.0


def postgres_faults(pg: PostgresServer, proxy: FaultProxy) -> list[Fault]:
    async def reset() -> int:
        return proxy.reset()

    async def blackhole() -> str:
        proxy.blackhole()
        await asyncio.sleep(1.0)
        proxy.pass_through()
        return "1.0 s"

    async def restart() -> tuple[int | None, int | None]:
        old = pg.pid
        await asyncio.to_thread(pg.restart, "fast")
        return old, pg.pid

    async def terminate() -> int:
        out = await asyncio.to_thread(
            pg.admin_query,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'app'",
        )
        return int(out)

    async def contention() -> str:
        await asyncio.to_thread(
            pg.admin_query,
            "BEGIN; SELECT * FROM accounts WHERE id IN (0, 1) FOR UPDATE; "
            "SELECT pg_sleep(0.8); COMMIT;",
            "app",
        )
        return "accounts 0 and 1 locked 0.8 s"

    return [
        (2.0, "proxy reset (connections)", reset),
        (5.0, "blackhole", blackhole),
        (8.5, "server restart (old pid, new pid)", restart),
        (12.0, "pg_terminate_backend (backends)", terminate),
        (14.5, "lock contention", contention),
        (17.0, "proxy reset again (connections)", reset),
    ]


async def test_ledger_postgres(pg: PostgresServer) -> None:
    async with FaultProxy(pg.host, pg.port) as proxy:
        dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
        sup = Supervisor(
            dsn,
            max_size=8,
            command_timeout=1.0,
            connect_timeout=1.0,
            gate_timeout=15,
            backoff=Backoff(initial=0.05, maximum=0.5),
        )
        async with sup:
            ledger = Ledger(sup, POSTGRES)
            await ledger.setup()
            fired = await ledger.run(DURATION, workers=16, faults=postgres_faults(pg, proxy))
            report = await ledger.reconcile(fired)
    print("\n" + report.table())
    assert report.clean, report.table()
    # The faults really happened.
    assert fired["proxy reset (connections)"] > 0
    old, new = fired["server restart (old pid, new pid)"]
    assert old != new
    assert fired["pg_terminate_backend (backends)"] > 0
    counts: dict[str, Any] = report.kind_counts
    assert sum(c["ok"] for c in counts.values()) > 500
    assert not report.errors, report.errors


def mysql_faults(server: MariaDBServer, proxy: FaultProxy) -> list[Fault]:
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

    async def contention() -> str:
        await asyncio.to_thread(
            server.admin_query,
            "START TRANSACTION; SELECT * FROM accounts WHERE id IN (0, 1) FOR UPDATE; "
            "SELECT SLEEP(0.8); COMMIT;",
            "app",
        )
        return "accounts 0 and 1 locked 0.8 s"

    return [
        (2.0, "proxy reset (connections)", reset),
        (5.0, "blackhole", blackhole),
        (8.5, "server restart (old pid, new pid)", restart),
        (12.0, "KILL (connections)", kill),
        (14.5, "lock contention", contention),
        (17.0, "proxy reset again (connections)", reset),
    ]


async def test_ledger_mysql(mariadb: MariaDBServer) -> None:
    async with FaultProxy(mariadb.host, mariadb.port) as proxy:
        dsn = with_host(parse_dsn(mariadb.dsn()), proxy.host, proxy.port)
        sup = Supervisor(
            dsn,
            max_size=8,
            command_timeout=2.0,
            connect_timeout=1.0,
            gate_timeout=15,
            backoff=Backoff(initial=0.05, maximum=0.5),
        )
        async with sup:
            ledger = Ledger(sup, MYSQL)
            await ledger.setup()
            fired = await ledger.run(DURATION, workers=16, faults=mysql_faults(mariadb, proxy))
            report = await ledger.reconcile(fired)
    print("\n" + report.table())
    assert report.clean, report.table()
    assert fired["proxy reset (connections)"] > 0
    old, new = fired["server restart (old pid, new pid)"]
    assert old != new
    assert fired["KILL (connections)"] > 0
    assert sum(c["ok"] for c in report.kind_counts.values()) > 300
    assert not report.errors, report.errors
