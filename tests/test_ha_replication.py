"""A real primary and a synchronous streaming standby (``harness/replication.py``), behind one
multi-host DSN with ``target_session_attrs=read-write``:

- the primary stopped (``-m immediate``) and the standby promoted: reads and idempotent
  writes see no error, plain writes in flight raise ``OutcomeUnknown`` and nothing else, and
  nothing acknowledged is lost (synchronous replication: what the primary acknowledged is on
  the standby);
- a switchover: the old primary fenced read-only while still up, then the standby promoted:
  no error at all (a refused write applied nothing, so even plain writes are replayed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from harness.replication import ReplicatedPostgres, fence
from harness.servers import require_postgres
from resilientdb import OutcomeUnknown, State, Supervisor

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

INSERT = "INSERT INTO repl_items VALUES ($1) ON CONFLICT DO NOTHING"


@pytest.fixture
async def cluster() -> AsyncIterator[ReplicatedPostgres]:
    require_postgres()
    c = ReplicatedPostgres()
    try:
        await asyncio.to_thread(c.start)
        conn = await asyncpg.connect(c.primary.dsn())
        try:
            await conn.execute("CREATE TABLE repl_items (id int PRIMARY KEY)")
        finally:
            await conn.close()
        yield c
    finally:
        await asyncio.to_thread(c.cleanup)


@dataclass
class Load:
    """Readers, idempotent writers and plain writers, and what each saw."""

    sup: Supervisor
    acked: list[int] = field(default_factory=list)
    unknown: list[BaseException] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    write_times: list[float] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._ids = iter(range(1, 10_000_000))

    async def write(self, idempotent: bool) -> None:
        while not self.stop.is_set():
            n = next(self._ids)
            try:
                await self.sup.db.execute(INSERT, n, idempotent=idempotent, timeout=20)
                self.acked.append(n)
                self.write_times.append(time.monotonic())
            except OutcomeUnknown as exc:
                (self.errors if idempotent else self.unknown).append(exc)
            except Exception as exc:
                self.errors.append(exc)
            await asyncio.sleep(0.005)

    async def read(self) -> None:
        while not self.stop.is_set():
            try:
                await self.sup.db.fetchval("SELECT count(*) FROM repl_items", timeout=20)
            except Exception as exc:
                self.errors.append(exc)
            await asyncio.sleep(0.005)

    def start(self) -> list[asyncio.Task[None]]:
        plan = [self.read] * 4
        plan += [lambda: self.write(True)] * 4 + [lambda: self.write(False)] * 2
        return [asyncio.create_task(f()) for f in plan]


async def on_new_primary(cluster: ReplicatedPostgres) -> set[int]:
    assert cluster.standby is not None
    conn = await asyncpg.connect(cluster.standby.dsn())
    try:
        return {r[0] for r in await conn.fetch("SELECT id FROM repl_items")}
    finally:
        await conn.close()


async def test_promote_after_the_primary_dies(cluster: ReplicatedPostgres) -> None:
    assert cluster.standby is not None
    sup = Supervisor(cluster.dsn(), max_size=10, command_timeout=10, keepalive_interval=None)
    load = Load(sup)
    async with sup:
        tasks = load.start()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(cluster.primary.stop, "immediate")
        await asyncio.sleep(0.3)
        await asyncio.to_thread(cluster.standby.promote)
        promoted = time.monotonic()
        await asyncio.sleep(1.5)
        load.stop.set()
        await asyncio.gather(*tasks)
        port = await sup.db.fetchval("SELECT inet_server_port()")
        assert sup.state is State.CONNECTED
    first = min((t for t in load.write_times if t > promoted), default=None)
    print(  # the figures, for whoever runs it with -s
        f"first write {first - promoted:.3f}s after the promote, " if first else "no write, ",
        f"{len(load.acked)} writes acknowledged, {len(load.unknown)} OutcomeUnknown",
    )
    assert load.errors == []
    assert all(isinstance(e, OutcomeUnknown) for e in load.unknown)
    assert set(load.acked) <= await on_new_primary(cluster)  # nothing acknowledged lost
    assert first is not None and port == cluster.standby.port


async def test_switchover_fence_then_promote(cluster: ReplicatedPostgres) -> None:
    assert cluster.standby is not None
    sup = Supervisor(cluster.dsn(), max_size=10, command_timeout=10, keepalive_interval=None)
    load = Load(sup)
    async with sup:
        tasks = load.start()
        await asyncio.sleep(0.5)
        await asyncio.to_thread(fence, cluster.primary, True)  # the old primary stays up
        await asyncio.sleep(0.5)
        before = len(load.acked)
        await asyncio.to_thread(cluster.standby.promote)
        await asyncio.sleep(1.5)
        load.stop.set()
        await asyncio.gather(*tasks)
        port = await sup.db.fetchval("SELECT inet_server_port()")
    assert load.errors == [] and load.unknown == []
    assert len(load.acked) > before
    assert set(load.acked) <= await on_new_primary(cluster)
    assert port == cluster.standby.port
