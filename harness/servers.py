"""Throwaway PostgreSQL and MariaDB servers for the test suite and the benchmarks (dev-only
harness code, not shipped in the wheel).

Each server lives in its own temporary directory, listens only on 127.0.0.1 on a free port and
is torn down by :meth:`cleanup` (the fixtures in ``tests/conftest.py`` call it at session end; an
``atexit`` hook and a SIGTERM handler are a backstop for aborted sessions). The system services
on 5432 / 3306 are never touched.

Accounts on both servers:

* ``app`` (no password) owns / has all privileges on database ``app``;
* ``secure`` with password ``s3cret-pw`` (``SECURE_PASSWORD``) may connect to ``app``;
* the superuser (``postgres`` / MariaDB ``root``) is reachable through the unix socket in the
  temporary directory only, and is what :meth:`admin_query` uses.

Both run with the servers' durable settings (PostgreSQL ``fsync``, ``synchronous_commit``
and ``full_page_writes`` on; InnoDB ``innodb_flush_log_at_trx_commit=1`` and the doublewrite
buffer): a commit acknowledged to a client survives ``kill()`` or an immediate stop, so a
write missing after a crash test is the client's doing, never the harness's.

All methods are synchronous (they run subprocesses and block). From async tests call the slow
ones through a thread: ``await asyncio.to_thread(server.restart)``. Every server has a lock, so
calls from several threads are serialised.

The code lives in ``_server_base.py`` (helpers, the registry, the shared base class),
``_pg_server.py`` and ``_mariadb_server.py``; import the names from here.
"""

from __future__ import annotations

from harness._mariadb_server import MariaDBServer
from harness._pg_server import PostgresServer
from harness._server_base import (
    APP_DATABASE,
    APP_USER,
    HOST,
    SECURE_PASSWORD,
    SECURE_USER,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ServerError,
    cleanup_all,
    find_binary,
    free_port,
    in_ci,
    port_is_free,
    require,
)
from harness.polling import wait_for

__all__ = [
    "APP_DATABASE",
    "APP_USER",
    "HOST",
    "SECURE_PASSWORD",
    "SECURE_USER",
    "START_TIMEOUT",
    "STOP_TIMEOUT",
    "MariaDBServer",
    "PostgresServer",
    "ServerError",
    "cleanup_all",
    "find_binary",
    "free_port",
    "in_ci",
    "port_is_free",
    "require",
    "wait_for",
]
