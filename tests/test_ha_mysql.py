"""MariaDB under ``read_only`` with a DSN asking for a writable node: a refused write (1290)
is "the wrong node", not the caller's error; the write waits at the gate and is replayed
(the server applied nothing) once a writable node answers."""

from __future__ import annotations

import asyncio

import pytest

from harness.servers import MariaDBServer
from resilientdb import State, Supervisor

pytestmark = pytest.mark.slow


async def test_write_refused_by_read_only_waits_for_a_writer(mariadb: MariaDBServer) -> None:
    dsn = mariadb.dsn() + "?target_session_attrs=read-write"
    sup = Supervisor(dsn, keepalive_interval=None)
    async with sup:
        await sup.db.execute("CREATE TABLE IF NOT EXISTS ha_rw (id INT PRIMARY KEY)")
        await sup.db.execute("DELETE FROM ha_rw")
        await sup.db.execute("INSERT INTO ha_rw VALUES (1)")
        await asyncio.to_thread(mariadb.admin_query, "SET GLOBAL read_only = 1")
        try:
            # A plain write, not idempotent: refused for the role, so safe to replay.
            write = asyncio.create_task(sup.db.execute("INSERT INTO ha_rw VALUES (2)", timeout=10))
            for _ in range(50):  # bounded: 5 s
                await asyncio.sleep(0.1)
                if sup.state is State.RECONNECTING:
                    break
            assert sup.state is State.RECONNECTING  # the probe found no writable node
            assert not write.done()
        finally:
            await asyncio.to_thread(mariadb.admin_query, "SET GLOBAL read_only = 0")
        assert await write == 1
        assert await sup.db.fetchval("SELECT count(*) FROM ha_rw") == 2
        await sup.db.execute("DROP TABLE ha_rw")


async def test_without_target_session_attrs_the_refusal_is_the_callers(
    mariadb: MariaDBServer,
) -> None:
    sup = Supervisor(mariadb.dsn(), keepalive_interval=None)
    async with sup:
        await sup.db.execute("CREATE TABLE IF NOT EXISTS ha_any (id INT PRIMARY KEY)")
        await asyncio.to_thread(mariadb.admin_query, "SET GLOBAL read_only = 1")
        try:
            with pytest.raises(Exception, match=r"(?i)read.only") as info:
                await sup.db.execute("INSERT INTO ha_any VALUES (1)")
            assert info.value.args[0] == 1290
            assert sup.state is State.CONNECTED
        finally:
            await asyncio.to_thread(mariadb.admin_query, "SET GLOBAL read_only = 0")
        await sup.db.execute("DROP TABLE ha_any")
