"""Shared fixtures.

Database servers (see ``harness/servers.py``):

* ``pg_server`` / ``mariadb_server`` (session): one throwaway server per pytest session, started
  on first use and removed at session end. A missing binary skips the test, or fails it when
  ``CI=true``.
* ``pg`` / ``mariadb`` (function): the same server, restarted first if an earlier test left it
  stopped or killed. Use these in tests; destructive tests may stop or kill the server freely.

Tests that use any of them are marked ``postgres`` / ``mysql`` automatically, so
``pytest -m "not postgres and not mysql"`` runs without servers.
"""

from __future__ import annotations

import gc
from collections.abc import Generator, Iterator

import pytest

from harness.servers import MariaDBServer, PostgresServer, require

# Fixtures (directly or through other fixtures) that imply the marker.
_MARKER_FIXTURES = {
    "postgres": frozenset({"pg", "pg_server"}),
    "mysql": frozenset({"mariadb", "mariadb_server"}),
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects anything
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in _MARKER_FIXTURES.items():
            if used & fixtures:
                item.add_marker(marker)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, None, None]:
    # CPython 3.11.7: a garbage collection that runs finalizers (a failed test leaves sockets,
    # frames and coroutines in reference cycles) while pytest parses a source file for the
    # failure report raises "SystemError: AST constructor recursion depth mismatch", an
    # INTERNALERROR that ends the whole session. Collect the failed test's garbage first.
    if call.excinfo is not None:
        gc.collect()
    yield


# --- database servers -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    require(PostgresServer.BINARIES, "PostgreSQL")
    server = PostgresServer()  # registered for atexit/SIGTERM cleanup on start
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    require(MariaDBServer.BINARIES, "MariaDB")
    server = MariaDBServer()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def pg(pg_server: PostgresServer) -> PostgresServer:
    return pg_server.ensure_running()


@pytest.fixture
def mariadb(mariadb_server: MariaDBServer) -> MariaDBServer:
    return mariadb_server.ensure_running()
