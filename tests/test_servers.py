"""Smoke tests of the throwaway database servers (harness/servers.py) and their fixtures."""

from __future__ import annotations

import asyncio
import socket
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness.servers import (
    SECURE_PASSWORD,
    MariaDBServer,
    PostgresServer,
    free_port,
    port_is_free,
    require,
)

# --- harness helpers (no server needed) ------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    assert port_is_free(port)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert not port_is_free(port)


def test_require_skips_locally_and_fails_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        require(["no-such-binary-resilientdb"], "Nothing")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no-such-binary-resilientdb"):
        require(["no-such-binary-resilientdb"], "Nothing")
    require(["sh"], "a shell")  # present: no-op


def test_dsn_quotes_credentials() -> None:
    server = PostgresServer.__new__(PostgresServer)
    server.port = 5999
    parts = urlsplit(server.dsn("secure", "app", "p@ss:w/rd"))
    assert (parts.scheme, parts.hostname, parts.port, parts.path) == (
        "postgresql",
        "127.0.0.1",
        5999,
        "/app",
    )
    assert parts.username == "secure"
    assert parts.password == "p%40ss%3Aw%2Frd"


# --- PostgreSQL ------------------------------------------------------------------------------


async def _pg_user(dsn: str) -> tuple[str, str]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        row = await conn.fetchrow("SELECT current_user, current_database()")
        assert row is not None
        return row[0], row[1]
    finally:
        await conn.close()


async def test_pg_accepts_app(pg: PostgresServer) -> None:
    assert pg.running and pg.pid
    assert pg.dsn() == f"postgresql://app@127.0.0.1:{pg.port}/app"
    assert await _pg_user(pg.dsn()) == ("app", "app")


async def test_pg_password_auth(pg: PostgresServer) -> None:
    import asyncpg

    assert await _pg_user(pg.dsn("secure", password=SECURE_PASSWORD)) == ("secure", "app")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await _pg_user(pg.dsn("secure", password="wrong"))


async def test_pg_admin_query_sees_app_connections(pg: PostgresServer) -> None:
    import asyncpg

    sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'"
    conn = await asyncpg.connect(pg.dsn())
    try:
        assert int(await asyncio.to_thread(pg.admin_query, sql)) == 1
    finally:
        await conn.close()


async def test_pg_restart_changes_pid(pg: PostgresServer) -> None:
    old = pg.pid
    await asyncio.to_thread(pg.restart)
    assert pg.running and pg.pid not in (None, old)
    assert await _pg_user(pg.dsn()) == ("app", "app")


async def test_pg_kill_then_start(pg: PostgresServer) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg.dsn())
    try:
        old = pg.pid
        await asyncio.to_thread(pg.kill)
        assert not pg.running and pg.pid is None
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()
    await asyncio.to_thread(pg.start)
    assert pg.running and pg.pid != old
    assert await _pg_user(pg.dsn()) == ("app", "app")


def test_pg_stop_modes_and_ensure_running(pg: PostgresServer) -> None:
    pg.stop("immediate")
    assert not pg.running
    pg.stop()  # already stopped: no-op
    with pytest.raises(ValueError):
        pg.stop("sideways")
    assert pg.ensure_running() is pg and pg.running


# --- MariaDB ---------------------------------------------------------------------------------


async def _my_user(server: MariaDBServer, user: str = "app", password: str = "") -> str:
    import aiomysql

    conn = await aiomysql.connect(
        host=server.host,
        port=server.port,
        user=user,
        password=password,
        db="app",
        connect_timeout=10,
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT CURRENT_USER(), DATABASE()")
            row = await cur.fetchone()
        return f"{row[0]} {row[1]}"
    finally:
        conn.close()


async def test_mariadb_accepts_app(mariadb: MariaDBServer) -> None:
    assert mariadb.running and mariadb.pid
    assert mariadb.dsn() == f"mysql://app@127.0.0.1:{mariadb.port}/app"
    assert await _my_user(mariadb) == "app@127.0.0.1 app"


async def test_mariadb_password_auth(mariadb: MariaDBServer) -> None:
    import pymysql

    assert await _my_user(mariadb, "secure", SECURE_PASSWORD) == "secure@127.0.0.1 app"
    with pytest.raises(pymysql.err.OperationalError) as excinfo:
        await _my_user(mariadb, "secure", "wrong")
    assert excinfo.value.args[0] == 1045


async def test_mariadb_admin_query(mariadb: MariaDBServer) -> None:
    sql = "SELECT @@max_connections, @@bind_address"
    assert await asyncio.to_thread(mariadb.admin_query, sql) == "200\t127.0.0.1"


async def test_mariadb_restart_changes_pid(mariadb: MariaDBServer) -> None:
    old = mariadb.pid
    await asyncio.to_thread(mariadb.restart)
    assert mariadb.running and mariadb.pid not in (None, old)
    assert await _my_user(mariadb) == "app@127.0.0.1 app"


async def test_mariadb_kill_then_start(mariadb: MariaDBServer) -> None:
    old = mariadb.pid
    await asyncio.to_thread(mariadb.kill)
    assert not mariadb.running and mariadb.pid is None
    await asyncio.to_thread(mariadb.start)
    assert mariadb.running and mariadb.pid != old
    assert await _my_user(mariadb) == "app@127.0.0.1 app"


def test_mariadb_left_stopped_is_restarted(mariadb: MariaDBServer) -> None:
    mariadb.stop()
    assert not mariadb.running
    assert mariadb.ensure_running() is mariadb and mariadb.running


# --- durability: an acknowledged commit survives a crash of the server -------------------------

CRASH_ROWS = 300


async def test_pg_runs_with_durable_settings(pg: PostgresServer) -> None:
    import asyncpg

    conn = await asyncpg.connect(pg.dsn())
    try:
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            assert await conn.fetchval(f"SHOW {setting}") == "on", setting
    finally:
        await conn.close()


@pytest.mark.parametrize("crash", ["kill", "immediate"])
async def test_pg_acknowledged_commits_survive_a_crash(pg: PostgresServer, crash: str) -> None:
    import asyncpg

    table = f"crash_{crash}"
    conn = await asyncpg.connect(pg.dsn())
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (n integer)")
        for n in range(CRASH_ROWS):
            await conn.execute(f"INSERT INTO {table} (n) VALUES ($1)", n)  # each its own commit
        # At once, after the last acknowledgement: SIGKILL of the postmaster, or SIGQUIT to
        # every backend (pg_ctl stop -m immediate). No checkpoint, no WAL flush on the way out.
        if crash == "kill":
            await asyncio.to_thread(pg.kill)
        else:
            await asyncio.to_thread(pg.stop, "immediate")
    finally:
        conn.terminate()
    await asyncio.to_thread(pg.start)  # crash recovery replays the WAL
    conn = await asyncpg.connect(pg.dsn())
    try:
        found = [r[0] for r in await conn.fetch(f"SELECT n FROM {table} ORDER BY n")]
        await conn.execute(f"DROP TABLE {table}")
    finally:
        await conn.close()
    assert found == list(range(CRASH_ROWS)), f"{CRASH_ROWS - len(found)} acknowledged rows lost"


async def _my_connect(server: MariaDBServer) -> Any:
    import aiomysql

    return await aiomysql.connect(
        host=server.host, port=server.port, user="app", db="app", autocommit=True
    )


async def test_mariadb_runs_with_durable_settings(mariadb: MariaDBServer) -> None:
    conn = await _my_connect(mariadb)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT @@innodb_flush_log_at_trx_commit, @@innodb_doublewrite, @@sync_binlog"
            )
            assert await cur.fetchone() == (1, 1, 1)
    finally:
        conn.close()


async def test_mariadb_acknowledged_commits_survive_a_crash(mariadb: MariaDBServer) -> None:
    conn = await _my_connect(mariadb)
    try:
        async with conn.cursor() as cur:
            await cur.execute("CREATE OR REPLACE TABLE crash_kill (n integer) ENGINE=InnoDB")
            for n in range(CRASH_ROWS):
                await cur.execute("INSERT INTO crash_kill (n) VALUES (%s)", (n,))  # autocommit
        await asyncio.to_thread(mariadb.kill)  # SIGKILL at once after the last acknowledgement
    finally:
        conn.close()
    await asyncio.to_thread(mariadb.start)  # InnoDB crash recovery
    conn = await _my_connect(mariadb)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT n FROM crash_kill ORDER BY n")
            found = [r[0] for r in await cur.fetchall()]
            await cur.execute("DROP TABLE crash_kill")
    finally:
        conn.close()
    assert found == list(range(CRASH_ROWS)), f"{CRASH_ROWS - len(found)} acknowledged rows lost"
