"""Attack round 2: db.statistics() under cancellation storms."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from harness.servers import MariaDBServer, PostgresServer
from resilientdb import Supervisor
from resilientdb.testing import FaultProxy
from tests.audit_support import via


def consistent(st: Any, max_size: int) -> list[str]:
    bad = []
    p = st.pool
    if p.size != p.idle + p.in_use:
        bad.append(f"size {p.size} != idle {p.idle} + in_use {p.in_use}")
    if p.size > max_size or p.in_use > max_size:
        bad.append(f"size {p.size} / in_use {p.in_use} > max_size {max_size}")
    if min(p.size, p.idle, p.in_use, st.releasing, st.waiting) < 0:
        bad.append(f"negative figure {st}")
    return bad


async def storm(dsn: str, host: str, port: int, sleep_sql: str, rounds: int) -> None:
    max_size = 4
    async with (
        FaultProxy(host, port) as proxy,
        Supervisor(via(proxy, dsn), min_size=1, max_size=max_size, connect_timeout=2) as sup,
    ):
        db = sup.db
        rng = random.Random(7)
        problems: list[str] = []
        for r in range(rounds):
            proxy.set_latency(rng.choice([0, 0.01, 0.05]))
            if r % 4 == 3:
                proxy.blackhole()

            async def call(i: int) -> Any:
                kind = i % 4
                if kind == 0:
                    return await db.fetchval(sleep_sql)
                if kind == 1:
                    async with db.transaction() as tx:
                        return await tx.fetchval(sleep_sql)
                if kind == 2:
                    return await db.fetchval("SELECT 1", timeout=0.2)
                async with db.acquire() as conn:
                    return conn

            tasks = [asyncio.create_task(call(i)) for i in range(40)]
            for _ in range(5):
                await asyncio.sleep(rng.uniform(0.0, 0.05))
                problems += consistent(db.statistics(), max_size)
                for t in rng.sample(tasks, 8):
                    t.cancel()
            await asyncio.sleep(0.2)
            proxy.pass_through()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            problems += consistent(db.statistics(), max_size)
        # Settled: nothing waiting, nothing being given back, nothing in use.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = db.statistics()
            if st.waiting == 0 and st.releasing == 0 and st.pool.in_use == 0:
                break
            await asyncio.sleep(0.1)
        st = db.statistics()
        assert not problems, problems[:5]
        assert (st.waiting, st.releasing, st.pool.in_use) == (0, 0, 0), st
        assert await db.fetchval("SELECT 1", timeout=5) == 1
        assert db.statistics().pool.size <= max_size


async def test_stats2_pg_cancellation_storm(pg: PostgresServer) -> None:
    await storm(pg.dsn(), pg.host, pg.port, "SELECT pg_sleep(0.05)", 8)


async def test_stats2_mysql_cancellation_storm(mariadb: MariaDBServer) -> None:
    await storm(mariadb.dsn(), mariadb.host, mariadb.port, "SELECT SLEEP(0.05)", 8)
