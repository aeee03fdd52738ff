"""A throwaway PgBouncer (the Debian package ``pgbouncer``) in front of a throwaway PostgreSQL
server, for the tests (dev-only harness code, not shipped in the wheel).

It listens on 127.0.0.1 on a free port, trusts the ``app`` user (the server behind trusts it
too), pools in ``transaction`` mode unless told otherwise, and runs as the unprivileged user
the PostgreSQL harness runs the server as when we are root (PgBouncer refuses root).
``pause()`` / ``resume()`` use its admin console; ``restart()`` stops and starts it on the
same port. Synchronous, like the server classes: call the slow parts through a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

import pytest

from harness._pg_server import PostgresServer
from harness._server_base import free_port, in_ci
from harness.polling import wait_for
from resilientdb.testing._pg_install import server_user

__all__ = ["PgBouncer", "require_pgbouncer"]


def _binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )


def require_pgbouncer() -> str:
    """The pgbouncer binary; skips the test without one (fails it when ``CI=true``)."""
    found = _binary()
    if found is None:
        message = "pgbouncer is not installed (apt-get install pgbouncer)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


class PgBouncer:
    """A PgBouncer process pooling ``server``'s database ``app``."""

    host = "127.0.0.1"

    def __init__(self, server: PostgresServer, *, pool_mode: str = "transaction") -> None:
        self.server = server
        self.pool_mode = pool_mode
        self.port = free_port()
        self._binary = require_pgbouncer()
        self._dir = Path(tempfile.mkdtemp(prefix="resilientdb-pgbouncer-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._user = server_user()
        ini = f"""[databases]
app = host={server.host} port={server.port} dbname=app
[pgbouncer]
listen_addr = {self.host}
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self._dir / "users.txt"}
admin_users = app
pool_mode = {pool_mode}
default_pool_size = 4
max_client_conn = 200
server_reset_query =
server_login_retry = 0.2
logfile = {self._dir / "pgbouncer.log"}
pidfile = {self._dir / "pgbouncer.pid"}
"""
        (self._dir / "pgbouncer.ini").write_text(ini)
        (self._dir / "users.txt").write_text('"app" ""\n')
        if self._user is not None:
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)

    def dsn(self) -> str:
        return f"postgresql://app@{self.host}:{self.port}/app"

    def start(self) -> None:
        """Start it; returns once it accepts connections."""
        if self._proc is not None and self._proc.poll() is None:
            return
        user = self._user
        self._proc = subprocess.Popen(
            [self._binary, str(self._dir / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
            start_new_session=True,
        )
        if not wait_for(self._accepts, timeout=15):
            log = self._dir / "pgbouncer.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            self.stop()
            raise RuntimeError(f"pgbouncer did not start on port {self.port}:\n{tail}")

    def _accepts(self) -> bool:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            return sock.connect_ex((self.host, self.port)) == 0

    def stop(self) -> None:
        """SIGTERM (immediate shutdown: clients see their connections end)."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    @property
    def pid(self) -> int | None:
        """The running PgBouncer's process id (a restart changes it)."""
        proc = self._proc
        return None if proc is None or proc.poll() is not None else proc.pid

    def restart(self) -> None:
        self.stop()
        self.start()

    def admin(self, command: str) -> str:
        """Run a command on the admin console (``PAUSE``, ``RESUME``, ``SHOW POOLS``)."""
        args = [self.server._psql_bin, "-X", "-A", "-t", "-h", self.host, "-p", str(self.port)]
        args += ["-U", "app", "-d", "pgbouncer", "-c", command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        result = subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)
        if result.returncode != 0:
            raise RuntimeError(f"pgbouncer {command}: {result.stderr.strip()}")
        return result.stdout.strip()

    def cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
