"""Throwaway servers for the benchmarks, shared by every benchmark run in one process.

``make bench`` runs all benchmarks in one process, so one PostgreSQL and one MariaDB are
started once (a few seconds each) and removed at the end. Each lives in a temporary
directory on a free loopback port; the system services are never touched.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from harness.servers import MariaDBServer, PostgresServer

_pg: PostgresServer | None = None
_maria: MariaDBServer | None = None

# The storm benchmark runs 100 supervisors of up to 2 connections each, plus their probes.
PG_MAX_CONNECTIONS = 400


async def postgres() -> PostgresServer:
    """The shared PostgreSQL, running (started, or restarted if a benchmark left it down)."""
    global _pg
    if _pg is None:
        _pg = PostgresServer(max_connections=PG_MAX_CONNECTIONS)
    await asyncio.to_thread(_pg.ensure_running)
    return _pg


async def mariadb() -> MariaDBServer:
    """The shared MariaDB, running."""
    global _maria
    if _maria is None:
        _maria = MariaDBServer()
    await asyncio.to_thread(_maria.ensure_running)
    return _maria


def cleanup() -> None:
    """Stop and delete the shared servers (also done at interpreter exit)."""
    global _pg, _maria
    for server in (_pg, _maria):
        if server is not None:
            server.cleanup()
    _pg = _maria = None


async def accepting_again(server: PostgresServer, limit: float) -> float:
    """The ``perf_counter`` instant a direct connect succeeds (polled every 10 ms, bounded):
    when the server accepts connections again after a restart. Not through any proxy, so
    it adds nothing to the attempts a proxy counts."""
    deadline = time.perf_counter() + limit
    while time.perf_counter() < deadline:
        try:
            conn = await asyncpg.connect(server.dsn(), timeout=1)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            await asyncio.sleep(0.01)
            continue
        t = time.perf_counter()
        await conn.close()
        return t
    raise RuntimeError(f"the server did not accept connections within {limit} s")
