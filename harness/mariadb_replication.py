"""A throwaway MariaDB primary with a semi-synchronous replica (binary log, GTID,
``CHANGE MASTER TO``), for the host-list failover test (dev-only harness code).

The replica runs ``read_only`` (the ``app`` user has no privilege past it), so a DSN asking
for ``target_session_attrs=read-write`` skips it until ``promote()``: the replica applies
what it has received, stops replicating and turns ``read_only`` off. Semi-synchronous
replication (``AFTER_SYNC``): a commit the primary acknowledged is in the replica's relay
log, so after a promote "nothing acknowledged lost" is a fair test of the client.
"""

from __future__ import annotations

import contextlib
import time

from harness._mariadb_server import MariaDBServer
from harness._server_base import APP_DATABASE, APP_USER, HOST, ServerError

__all__ = ["ReplicatedMariaDB"]


class _Node(MariaDBServer):
    """A MariaDB server with a binary log and its own server id."""

    def __init__(self, server_id: int) -> None:
        super().__init__()
        self.server_id = server_id

    def _server_options(self) -> list[str]:
        options = [o for o in super()._server_options() if o != "--skip-log-bin"]
        return [
            *options,
            "--log-bin=binlog",
            f"--server-id={self.server_id}",
            "--binlog-format=ROW",
        ]


class ReplicatedMariaDB:
    """A primary and its replica; ``dsn()`` names both, in that order."""

    def __init__(self) -> None:
        self.primary = _Node(1)
        self.replica = _Node(2)

    def start(self) -> None:
        primary, replica = self.primary, self.replica
        primary.start()
        replica.start()
        primary.admin_query(
            f"CREATE USER 'repl'@'{HOST}'; GRANT REPLICATION SLAVE ON *.* TO 'repl'@'{HOST}';"
            "SET GLOBAL rpl_semi_sync_master_enabled = 1;"
            "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC;"
            "SET GLOBAL rpl_semi_sync_master_timeout = 30000;"
        )
        position = primary.admin_query("SELECT @@GLOBAL.gtid_binlog_pos")
        replica.admin_query(
            "SET GLOBAL read_only = 1;"
            "SET GLOBAL rpl_semi_sync_slave_enabled = 1;"
            f"SET GLOBAL gtid_slave_pos = '{position}';"
            f"CHANGE MASTER TO MASTER_HOST = '{HOST}', MASTER_PORT = {primary.port}, "
            "MASTER_USER = 'repl', MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1;"
            "START SLAVE;"
        )
        for _ in range(100):  # bounded: 10 s for the replica to connect semi-synchronously
            clients = primary.admin_query("SHOW STATUS LIKE 'Rpl_semi_sync_master_clients'")
            if clients.split()[-1] == "1":
                return
            time.sleep(0.1)
        raise ServerError("the replica did not connect semi-synchronously within 10 s")

    def promote(self) -> None:
        """Apply what was received, stop replicating, take writes."""
        replica = self.replica
        for _ in range(100):  # bounded: 10 s to apply the relay log
            caught_up = replica.admin_query(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                "WHERE STATE LIKE '%read all relay log%'"
            )
            if caught_up == "1":
                break
            time.sleep(0.1)
        else:
            raise ServerError("the replica did not apply its relay log within 10 s")
        replica.admin_query("STOP SLAVE; RESET SLAVE ALL; SET GLOBAL read_only = 0;")

    def dsn(self, attrs: str = "read-write") -> str:
        return (
            f"mysql://{APP_USER}@{HOST}:{self.primary.port},{HOST}:{self.replica.port}/"
            f"{APP_DATABASE}?target_session_attrs={attrs}"
        )

    def cleanup(self) -> None:
        for server in (self.replica, self.primary):
            with contextlib.suppress(Exception):
                server.cleanup()
