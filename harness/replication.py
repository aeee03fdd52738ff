"""A throwaway PostgreSQL primary with a synchronous streaming standby (``pg_basebackup -R``),
for the failover tests (dev-only harness code, not shipped in the wheel).

``ReplicatedPostgres().start()`` starts the primary, lets the local ``postgres`` superuser
replicate, clones the standby, starts it streaming, and then makes the primary commit
synchronously to it (``synchronous_standby_names``): a commit acknowledged by the primary is
on the standby, so after a promote "nothing acknowledged lost" is a fair test of the client.
``promote()`` promotes the standby; ``fence(server)`` makes a server refuse writes
(``default_transaction_read_only``, as failover tools fence a primary). Synchronous: call the
slow parts through a thread.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import time
from pathlib import Path

import pytest

from harness._pg_server import PostgresServer
from harness._server_base import APP_DATABASE, APP_USER, HOST, ServerError, in_ci

__all__ = ["ReplicatedPostgres", "StandbyServer", "fence"]

STANDBY_NAME = "standby1"


def fence(server: PostgresServer, on: bool = True) -> None:
    """Every new transaction read-only (``on``), or writable again."""
    if on:
        server.admin_query("ALTER SYSTEM SET default_transaction_read_only = on")
    else:
        server.admin_query("ALTER SYSTEM RESET default_transaction_read_only")
    server.admin_query("SELECT pg_reload_conf()")


class StandbyServer(PostgresServer):
    """A streaming standby of ``primary``, cloned with ``pg_basebackup -R``."""

    def __init__(self, primary: PostgresServer) -> None:
        super().__init__()
        self.primary = primary
        self._basebackup = primary.install.binary("pg_basebackup")
        if not Path(self._basebackup).exists():
            message = f"no pg_basebackup beside {primary.install.binary('postgres')}"
            if in_ci():
                pytest.fail(message)
            pytest.skip(message)

    def _initialise(self) -> None:
        self._tmp = self._make_tmp("resilientdb-pg-standby-", self._os_user)
        self.socket_dir.mkdir(mode=0o700)
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        primary = self.primary
        self._run(
            [
                self._basebackup,
                "-D",
                str(self.data_dir),
                "-h",
                HOST,
                "-p",
                str(primary.port),
                "-U",
                primary.superuser,
                "-R",  # standby.signal and primary_conninfo
                "-X",
                "stream",
                "--no-sync",
                "--checkpoint=fast",  # a spread checkpoint takes minutes
            ]
        )
        conninfo = (
            f"host={HOST} port={primary.port} user={primary.superuser} "
            f"application_name={STANDBY_NAME}"
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{self.socket_dir}'\n")
            conf.write("hot_standby = on\n")
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"primary_conninfo = '{conninfo}'\n")  # the last one read wins

    def _provision(self) -> None:
        """The roles and the database came with the base backup."""

    def promote(self) -> None:
        """``pg_ctl promote``: returns once the standby takes writes."""
        self._run([self._pg_ctl, "promote", "-D", str(self.data_dir), "-w", "-t", "60"])


class ReplicatedPostgres:
    """A primary and its synchronous standby; ``dsn()`` names both, in that order."""

    def __init__(self) -> None:
        self.primary = PostgresServer()
        self.standby: StandbyServer | None = None

    def start(self) -> None:
        primary = self.primary
        primary.start()
        hba = primary.data_dir / "pg_hba.conf"
        rule = f"host replication {primary.superuser} {HOST}/32 trust\n"
        if rule not in hba.read_text():
            primary._run(["sh", "-c", f"printf '%s' '{rule}' >> '{hba}'"])
            primary.admin_query("SELECT pg_reload_conf()")
        self.standby = StandbyServer(primary)
        self.standby.start()
        primary.admin_query(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
        primary.admin_query("SELECT pg_reload_conf()")
        for _ in range(100):  # bounded: 10 s for the standby to stream synchronously
            state = primary.admin_query(
                "SELECT sync_state FROM pg_stat_replication "
                f"WHERE application_name = '{STANDBY_NAME}'"
            )
            if state == "sync":
                return
            time.sleep(0.1)
        raise ServerError("the standby did not become synchronous within 10 s")

    def dsn(self, attrs: str = "read-write") -> str:
        assert self.standby is not None
        return (
            f"postgresql://{APP_USER}@{HOST}:{self.primary.port},{HOST}:{self.standby.port}/"
            f"{APP_DATABASE}?target_session_attrs={attrs}"
        )

    def cleanup(self) -> None:
        for server in (self.standby, self.primary):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.cleanup()
