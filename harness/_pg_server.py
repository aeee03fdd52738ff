"""The throwaway PostgreSQL server (see ``harness/servers.py``)."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
from pathlib import Path

import psutil

from harness._server_base import (
    APP_DATABASE,
    APP_USER,
    SECURE_PASSWORD,
    SECURE_USER,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ServerError,
    _alive,
    _clean_env,
    _pid_exists,
    _Server,
    _tail,
    find_binary,
)
from harness.polling import wait_for

# --------------------------------------------------------------------------------------------
# PostgreSQL


class PostgresServer(_Server):
    """A throwaway PostgreSQL cluster (initdb + pg_ctl), run as the ``postgres`` OS user when root.

    ``stop(mode)`` accepts pg_ctl's modes: ``"smart"``, ``"fast"`` (default), ``"immediate"``.
    ``kill()`` SIGKILLs the postmaster (a crash; the next start does crash recovery).
    """

    kind = "PostgreSQL"
    scheme = "postgresql"
    BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
    superuser = "postgres"
    STOP_MODES = ("smart", "fast", "immediate")

    def __init__(
        self,
        *,
        port: int | None = None,
        max_connections: int = 200,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__(
            port=port,
            max_connections=max_connections,
            base_dir=base_dir,
            start_timeout=start_timeout,
        )
        initdb = find_binary("initdb")
        if initdb is None:
            raise ServerError("initdb not found")
        # Take every binary from initdb's real directory so that the versions match.
        bindir = Path(os.path.realpath(initdb)).parent

        def binary(name: str) -> str:
            path = bindir / name
            found = str(path) if path.exists() else find_binary(name)
            if found is None:
                raise ServerError(f"{name} not found")
            return found

        self._initdb = str(bindir / "initdb")
        self._pg_ctl = binary("pg_ctl")
        self._postgres = binary("postgres")
        self._psql_bin = binary("psql")
        self._run_as: list[str] = []
        self._os_user: str | None = None
        if os.geteuid() == 0:
            # PostgreSQL refuses to run as root.
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise ServerError("running as root but there is no `postgres` OS user") from None
            runuser = find_binary("runuser")
            if runuser is None:
                raise ServerError("running as root but `runuser` is missing")
            self._run_as = [runuser, "-u", "postgres", "--"]
            self._os_user = "postgres"
        self._proc: psutil.Process | None = None
        self._env = _clean_env(("PG",))

    # -- paths ----------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.tmp_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.tmp_dir / "sock"

    @property
    def log_path(self) -> Path:
        return self.tmp_dir / "postgres.log"

    # -- state ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs (a new one after every restart)."""
        proc = self._proc
        return proc.pid if _alive(proc) and proc is not None else None

    @property
    def running(self) -> bool:
        return _alive(self._proc)

    # -- subprocess helpers ---------------------------------------------------------------
    def _run(
        self, args: list[str], *, as_owner: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        cmd = [*self._run_as, *args] if as_owner else args
        try:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self._tmp,
                env=self._env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{self.kind}: {' '.join(args)} timed out after {timeout}s") from exc
        if result.returncode != 0:
            raise ServerError(
                f"{self.kind}: {' '.join(args)} exited with {result.returncode}\n"
                f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}\n"
                f"server log:\n{_tail(self.log_path) if self._tmp else ''}"
            )
        return result

    # -- lifecycle ------------------------------------------------------------------------
    def _initialise(self) -> None:
        self._tmp = self._make_tmp("resilientdb-pg-", self._os_user)
        self.socket_dir.mkdir(mode=0o700)
        if self._os_user is not None:
            entry = pwd.getpwnam(self._os_user)
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
        self._run(
            [
                self._initdb,
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": str(self.max_connections),
            "shared_buffers": "'16MB'",
            # Durable, as a production server (these are the defaults, stated because the
            # suite's crash tests rely on them): an acknowledged COMMIT survives a crash.
            "fsync": "on",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "password_encryption": "'scram-sha-256'",
            "ssl": "off",
            "logging_collector": "off",
            "timezone": "'UTC'",
        }
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# --- resilientdb test server ---\n")
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        hba = [
            "# TYPE  DATABASE  USER      ADDRESS       METHOD",
            "local   all       postgres                trust",
            "host    all       postgres  127.0.0.1/32  trust",
            "local   all       app                     trust",
            "host    all       app       127.0.0.1/32  trust",
            "local   all       secure                  scram-sha-256",
            "host    all       secure    127.0.0.1/32  scram-sha-256",
            # Roles that tests create themselves need a password.
            "host    all       all       127.0.0.1/32  scram-sha-256",
        ]
        (self.data_dir / "pg_hba.conf").write_text("\n".join(hba) + "\n")

    def _launch(self) -> None:
        self._clear_stale_lock_files()
        timeout = int(self.start_timeout)
        self._run(
            [
                self._pg_ctl,
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(timeout),
                "-o",
                f"-p {self.port}",
            ],
            timeout=timeout + 10,
        )
        pid = self._read_pidfile()
        if pid is None:
            raise ServerError(f"{self.kind}: started but postmaster.pid is missing")
        self._proc = psutil.Process(pid)
        if not wait_for(self._accepts_tcp, self.start_timeout):
            raise ServerError(
                f"{self.kind}: not accepting TCP on {self.port}\n{_tail(self.log_path)}"
            )

    def _provision(self) -> None:
        self._psql(
            f"CREATE ROLE {APP_USER} LOGIN",
            f"CREATE DATABASE {APP_DATABASE} OWNER {APP_USER}",
            f"CREATE ROLE {SECURE_USER} LOGIN PASSWORD '{SECURE_PASSWORD}'",
            f"GRANT CONNECT ON DATABASE {APP_DATABASE} TO {SECURE_USER}",
        )

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` and wait until the postmaster is gone. No-op when stopped."""
        if mode not in self.STOP_MODES:
            raise ValueError(f"mode must be one of {self.STOP_MODES}, not {mode!r}")
        with self._lock:
            if not self.running:
                self._proc = None
                return
            timeout = int(STOP_TIMEOUT)
            self._run(
                [
                    self._pg_ctl,
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(timeout),
                ],
                timeout=timeout + 10,
            )
            if not wait_for(lambda: not _alive(self._proc), 10):
                raise ServerError(f"{self.kind}: postmaster still alive after pg_ctl stop")
            self._proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster, wait for its backends to go and leave a startable cluster."""
        with self._lock:
            proc = self._proc
            if not _alive(proc) or proc is None:
                self._proc = None
                return
            try:
                children = proc.children(recursive=True)
                proc.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                children = []
            wait_for(lambda: not _alive(proc), 10)
            # Backends notice the postmaster's death and exit on their own; be firm if they
            # linger. (Zombies count as gone: nobody may reap these orphans for a while.)
            if not wait_for(lambda: not any(_alive(c) for c in children), 10):
                for child in children:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.kill()
                wait_for(lambda: not any(_alive(c) for c in children), 5)
            self._proc = None
            self._clear_stale_lock_files()
            self._wait_port_free()

    def _read_pidfile(self) -> int | None:
        try:
            first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first.strip())
        except (OSError, ValueError):
            return None

    def _clear_stale_lock_files(self) -> None:
        # PostgreSQL removes a stale lock file itself unless its pid still exists; a killed
        # postmaster that nobody reaped yet (a zombie) still does. Keep the file otherwise:
        # it lets the next postmaster clean up the old shared memory segment.
        locks = [self.data_dir / "postmaster.pid", self.socket_dir / f".s.PGSQL.{self.port}.lock"]
        for lock in locks:
            try:
                pid = int(lock.read_text().split("\n", 1)[0].strip())
            except (OSError, ValueError):
                continue
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if _pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    continue  # a live process: not stale
            lock.unlink(missing_ok=True)
            if lock.name.endswith(".lock"):
                (self.socket_dir / f".s.PGSQL.{self.port}").unlink(missing_ok=True)

    def _accepts_tcp(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1):
                return True
        except OSError:
            return False

    # -- admin ----------------------------------------------------------------------------
    def _psql(self, *statements: str, database: str = "postgres") -> str:
        args = [
            self._psql_bin,
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.socket_dir),
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database,
        ]
        for statement in statements:
            args += ["-c", statement]
        return self._run(args, as_owner=False, timeout=60).stdout.rstrip("\n")

    def admin_query(self, sql: str, database: str = "postgres") -> str:
        """Run ``sql`` as the superuser with ``psql -Atc`` over the unix socket; return stdout.

        Example:
        ``int(pg.admin_query("SELECT count(*) FROM pg_stat_activity WHERE usename='app'"))``.
        Raises :class:`ServerError` on any SQL error.
        """
        return self._psql(sql, database=database)

    def kill_app_connections(self) -> int:
        """Terminate every session of the ``app`` user from outside; how many there were."""
        return int(
            self.admin_query(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE usename = 'app'"
            )
        )
