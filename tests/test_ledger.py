"""The ledger under fire: nothing acknowledged is lost, nothing is applied twice."""

from __future__ import annotations

import asyncio
from typing import Any

from resilientdb import Backoff, Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy
from tests.ledger import POSTGRES, Fault, Ledger
from tests.servers import PostgresServer

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
