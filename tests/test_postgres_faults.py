"""Fault scenarios against a real, throwaway PostgreSQL server that only this backend's suite
runs (tests 2 and 6 of the original issue). The behaviours every server backend shares (a
restart and a reset, kills mid-INSERT and while idle, refused connects, query errors, a
blackhole, cancellation) are in ``tests/backends/test_faults.py``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from harness.servers import PostgresServer
from resilientdb import DatabaseUnavailable, State, Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

pytestmark = pytest.mark.slow


@pytest.fixture
async def proxy(pg: PostgresServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(pg.host, pg.port) as p:
        yield p


def via(proxy: FaultProxy, dsn: str) -> str:
    return with_host(parse_dsn(dsn), proxy.host, proxy.port)


async def test_outage_longer_than_gate_timeout(pg: PostgresServer) -> None:
    """Test 2: DatabaseUnavailable at the deadline, then the same supervisor recovers."""
    sup = Supervisor(pg.dsn(), gate_timeout=1.0, connect_timeout=1.0)
    async with sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        await asyncio.to_thread(pg.stop, "immediate")
        started = time.monotonic()
        results = await asyncio.gather(
            *(sup.db.fetchval("SELECT 1") for _ in range(10)), return_exceptions=True
        )
        elapsed = time.monotonic() - started
        assert all(isinstance(r, DatabaseUnavailable) for r in results), results
        assert 0.9 <= elapsed < 2.0  # at the deadline: not earlier, not hung
        assert all(isinstance(r.__cause__, OSError) for r in results if isinstance(r, Exception))
        await asyncio.to_thread(pg.start)
        assert await sup.db.fetchval("SELECT 1", timeout=10) == 1
        assert sup.state is State.CONNECTED


async def test_waiting_callers_do_not_multiply_connection_attempts(
    pg: PostgresServer, proxy: FaultProxy
) -> None:
    """Test 6: 200 callers through a 3 s outage: attempts follow backoff steps, not callers."""
    sup = Supervisor(via(proxy, pg.dsn()), max_size=10)
    async with sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        await asyncio.to_thread(pg.stop, "fast")
        proxy.reset_stats()
        reach = sup._monitors["default"].reach
        knocks = reach.knocks
        calls = [asyncio.create_task(sup.db.fetchval("SELECT 1")) for _ in range(200)]
        await asyncio.sleep(3.0)
        # The knocks between attempts (bare TCP connects, no handshake) are not attempts.
        knocks = reach.knocks - knocks
        during_outage = proxy.connection_attempts - knocks
        assert knocks > 0
        await asyncio.to_thread(pg.start)
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert results == [1] * 200
    # Backoff 50 ms doubling to 1 s: about 7 probes in 3 s, plus at most the pool's
    # connections (10) that tried before the outage was noticed. 200 callers would be 200+.
    print(f"connection attempts during a 3 s outage with 200 callers: {during_outage}")
    assert 3 <= during_outage <= 20
