"""One target per backend for the contract suite: a DSN, the paramstyle, a way to kill the
app's connections from outside, and the table DDL that differs."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.servers import MariaDBServer, PostgresServer


@dataclass
class Target:
    name: str
    dsn: str
    p: Callable[[int], str]  # placeholder for parameter n
    kill_connections: Callable[[], Awaitable[int]]  # kill the app's connections, server side
    serial: str

    def sql(self, text: str) -> str:
        """``text`` with ``{1}``, ``{2}`` ... replaced by this backend's placeholders."""
        for n in range(9, 0, -1):
            text = text.replace("{" + str(n) + "}", self.p(n))
        return text


def _postgres(pg: PostgresServer) -> Target:
    async def kill() -> int:
        out = await asyncio.to_thread(
            pg.admin_query,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'app'",
        )
        return int(out)

    return Target("postgres", pg.dsn(), lambda n: f"${n}", kill, "bigserial PRIMARY KEY")


def _mysql(server: MariaDBServer) -> Target:
    async def kill() -> int:
        ids = await asyncio.to_thread(
            server.admin_query,
            "SELECT id FROM information_schema.processlist WHERE user = 'app'",
        )
        killed = 0
        for line in ids.split():
            try:
                await asyncio.to_thread(server.admin_query, f"KILL {int(line)}")
                killed += 1
            except Exception:  # the connection went away by itself meanwhile
                pass
        return killed

    return Target("mysql", server.dsn(), lambda n: "%s", kill, "bigint AUTO_INCREMENT PRIMARY KEY")


def _sqlite(path: Path) -> Target:
    async def kill() -> int:
        # SQLite has no server: "killing" a connection is closing it underneath the supervisor,
        # which the contract tests do through the adapter (see test_contract.kill_underneath).
        return 0

    sqlite3.connect(path).close()
    return Target(
        "sqlite", f"sqlite:///{path}", lambda n: "?", kill, "integer PRIMARY KEY AUTOINCREMENT"
    )


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "postgres":
        yield _postgres(request.getfixturevalue("pg"))
    elif request.param == "mysql":
        yield _mysql(request.getfixturevalue("mariadb"))
    else:
        yield _sqlite(tmp_path / "contract.db")
