"""Connection hygiene on the real PostgreSQL: lifetime, keepalive, TCP options, blackholes."""

from __future__ import annotations

import asyncio
import socket
import time

from harness.servers import PostgresServer
from resilientdb import State, Supervisor
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

COUNT_APP = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
PIDS_APP = (
    "SELECT pid || ' ' || extract(epoch FROM backend_start) FROM pg_stat_activity "
    "WHERE usename = 'app'"
)


async def _server_pids(pg: PostgresServer) -> dict[int, float]:
    out = await asyncio.to_thread(pg.admin_query, PIDS_APP)
    pairs = (line.split() for line in out.splitlines() if line.strip())
    return {int(pid): float(start) for pid, start in pairs}


async def test_lifetime_recycles_idle_connections_with_spread(pg: PostgresServer) -> None:
    sup = Supervisor(
        pg.dsn(),
        min_size=3,
        max_size=3,
        max_lifetime=1.0,
        lifetime_jitter=0.6,
        keepalive_interval=0.1,
        max_idle=None,
    )
    seen: dict[int, float] = {}
    errors: list[BaseException] = []
    async with sup:
        first = set(await _server_pids(pg))
        assert len(first) == 3
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            try:
                await sup.db.fetchval("SELECT 1")
            except Exception as exc:  # recycling must never fail a call
                errors.append(exc)
            seen.update(await _server_pids(pg))
            await asyncio.sleep(0.05)
    assert errors == []
    replaced = set(seen) - first
    assert len(replaced) >= 3, seen  # every first-generation connection was retired
    starts = sorted(seen[p] for p in replaced)
    assert starts[-1] - starts[0] > 0.2  # retired at different times, not in one burst


async def test_keepalive_replaces_connection_killed_while_idle(pg: PostgresServer) -> None:
    sup = Supervisor(pg.dsn(), min_size=2, max_size=4, keepalive_interval=0.2, max_idle=None)
    async with sup:
        before = set(await _server_pids(pg))
        assert len(before) == 2
        await asyncio.to_thread(
            pg.admin_query,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'app'",
        )
        deadline = time.monotonic() + 5
        now: set[int] = set()
        while time.monotonic() < deadline:
            now = set(await _server_pids(pg))
            if len(now) == 2 and not now & before:
                break
            await asyncio.sleep(0.1)
        # Replaced by the keepalive's top-up, before any call was made.
        assert len(now) == 2 and not now & before, (before, now)
        assert sup.db.statistics().pool.size == 2
        assert await sup.db.fetchval("SELECT 1") == 1


async def test_blackhole_detected_while_idle_within_bound(pg: PostgresServer) -> None:
    async with FaultProxy(pg.host, pg.port) as proxy:
        dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
        sup = Supervisor(dsn, min_size=2, keepalive_interval=0.3, connect_timeout=0.5)
        async with sup:
            assert proxy.stats.active_connections >= 2
            proxy.blackhole()
            started = time.monotonic()
            while sup.state is State.CONNECTED:
                assert time.monotonic() - started < 4, "blackhole not detected"
                await asyncio.sleep(0.02)
            detected = time.monotonic() - started
            # Bound: keepalive interval + ping timeout + the check's connect timeout (+ slack).
            assert detected < 0.3 + 0.5 + 0.5 + 1.0
            proxy.pass_through()
            await sup.wait_until_connected(timeout=5)
            assert await sup.db.fetchval("SELECT 1") == 1


async def test_tcp_keepalive_and_user_timeout_are_set(pg: PostgresServer) -> None:
    sup = Supervisor(pg.dsn(), tcp_user_timeout=12.0)
    async with sup, sup.db.acquire() as conn:
        sock = conn._con._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 12000
        if hasattr(socket, "TCP_KEEPIDLE"):
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 4
