"""Multi-host URLs and ``target_session_attrs``: parsed and checked at construction, redacted,
and honoured by the drivers (the first host that answers, and fits, is used)."""

from __future__ import annotations

import pytest

from harness.servers import MariaDBServer, PostgresServer, free_port
from resilientdb import ConfigurationError, DatabaseUnavailable, Supervisor
from resilientdb.config import parse_dsn


@pytest.mark.parametrize(
    ("dsn", "hosts"),
    [
        ("postgresql://u@h1:5432,h2:5433/db", (("h1", 5432), ("h2", 5433))),
        ("postgresql://u@h1,h2:5433/db", (("h1", None), ("h2", 5433))),
        ("postgresql://u@[::1]:5432,H2/db", (("::1", 5432), ("h2", None))),
        ("postgresql:///db?host=h1,h2&port=5432,5433", (("h1", 5432), ("h2", 5433))),
        ("postgresql:///db?host=h1,h2&port=6000", (("h1", 6000), ("h2", 6000))),
        ("mysql://u@h1:3306,h2:3307/db", (("h1", 3306), ("h2", 3307))),
        ("postgresql://u@h1:5432/db", (("h1", 5432),)),
    ],
)
def test_host_lists(dsn: str, hosts: tuple[tuple[str, int | None], ...]) -> None:
    parsed = parse_dsn(dsn)
    assert parsed.hosts == hosts
    if "?host=" not in dsn:
        assert (parsed.host, parsed.port) == hosts[0]


@pytest.mark.parametrize(
    ("dsn", "message"),
    [
        ("postgresql://u@h1:99999,h2/db", "port of 'h1' must be in 1..65535"),
        ("postgresql://u@h1:x,h2/db", "port of 'h1' must be in 1..65535"),
        ("postgresql://u@h1,,h2/db", "an empty host"),
        ("postgresql:///db?host=h1,h2&port=1,2,3", "2 hosts but 3 ports"),
        ("postgresql:///db?host=h1,,h2", "an empty name in ?host="),
        ("postgresql://u@h1,h2/db?target_session_attrs=master", "target_session_attrs must be"),
        ("mysql://u@h1,h2/db?target_session_attrs=rw", "target_session_attrs must be one of"),
        ("postgresql://u@[::1,h2/db", "IPv6"),
    ],
)
def test_bad_host_lists_fail_at_construction(dsn: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("?", r"\?")):
        Supervisor(dsn)


def test_host_list_password_is_redacted() -> None:
    dsn = "postgresql://u:hunter2secret@h1:5432,h2:5433/db?target_session_attrs=read-write"
    parsed = parse_dsn(dsn)
    assert parsed.password == "hunter2secret"
    assert "hunter2secret" not in str(parsed) + repr(parsed)
    assert "h1:5432,h2:5433" in str(parsed)
    with pytest.raises(ConfigurationError) as info:
        Supervisor(dsn.replace("read-write", "bogus"))
    assert "hunter2secret" not in str(info.value)


async def test_postgres_first_host_down_uses_the_next(pg: PostgresServer) -> None:
    dead = free_port()
    dsn = f"postgresql://app@127.0.0.1:{dead},127.0.0.1:{pg.port}/app"
    async with Supervisor(dsn, connect_timeout=2) as sup:
        assert await sup.db.fetchval("SELECT inet_server_port()") == pg.port
    dsn = f"postgresql:///app?host=127.0.0.1,127.0.0.1&port={dead},{pg.port}&user=app"
    async with Supervisor(dsn, connect_timeout=2) as sup:
        assert await sup.db.fetchval("SELECT inet_server_port()") == pg.port


async def test_mysql_host_list_in_order(mariadb: MariaDBServer) -> None:
    dead = free_port()
    dsn = f"mysql://app@127.0.0.1:{dead},127.0.0.1:{mariadb.port}/app"
    async with Supervisor(dsn, connect_timeout=2) as sup:
        assert await sup.db.fetchval("SELECT @@port") == mariadb.port


async def test_mysql_read_only_node_is_skipped_for_read_write(mariadb: MariaDBServer) -> None:
    base = f"mysql://app@127.0.0.1:{mariadb.port},127.0.0.1:{mariadb.port}/app"
    mariadb.admin_query("SET GLOBAL read_only = 1")
    try:
        async with Supervisor(base, connect_timeout=2) as sup:  # any: a read-only node will do
            assert await sup.db.fetchval("SELECT 1") == 1
        sup = Supervisor(
            base + "?target_session_attrs=read-write", connect_timeout=2, gate_timeout=0.5
        )
        async with sup:
            with pytest.raises(DatabaseUnavailable, match="none of the hosts"):
                await sup.db.fetchval("SELECT 1")
    finally:
        mariadb.admin_query("SET GLOBAL read_only = 0")
