"""One target per backend for the contract suite: a DSN, the backend's dialect (placeholders,
the auto-increment column: ``harness/backends.py``), and a way to kill the app's connections
from outside."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.backends import MYSQL, POSTGRES, SQLITE, Dialect
from harness.servers import MariaDBServer, PostgresServer


@dataclass
class Target:
    dialect: Dialect
    dsn: str
    kill_connections: Callable[[], Awaitable[int]]  # kill the app's connections, server side


def _server(dialect: Dialect, server: PostgresServer | MariaDBServer) -> Target:
    async def kill() -> int:
        return await asyncio.to_thread(server.kill_app_connections)

    return Target(dialect, server.dsn(), kill)


def _sqlite(path: Path) -> Target:
    async def kill() -> int:
        # SQLite has no server: "killing" a connection is closing it underneath the supervisor,
        # which the contract tests do through the adapter (see test_contract.kill_underneath).
        return 0

    sqlite3.connect(path).close()
    return Target(SQLITE, f"sqlite:///{path}", kill)


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    if request.param == "postgres":
        yield _server(POSTGRES, request.getfixturevalue("pg"))
    elif request.param == "mysql":
        yield _server(MYSQL, request.getfixturevalue("mariadb"))
    else:
        yield _sqlite(tmp_path / "contract.db")
