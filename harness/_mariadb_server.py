"""The throwaway MariaDB server (see ``harness/servers.py``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from harness._server_base import (
    APP_DATABASE,
    APP_USER,
    SECURE_PASSWORD,
    SECURE_USER,
    START_TIMEOUT,
    STOP_TIMEOUT,
    ServerError,
    _clean_env,
    _Server,
    _tail,
    find_binary,
)

# --------------------------------------------------------------------------------------------
# MariaDB


class MariaDBServer(_Server):
    """A throwaway MariaDB server (mariadb-install-db + mariadbd as a child process).

    ``stop(mode)``: ``"fast"`` (default), ``"smart"`` or ``"graceful"`` send SIGTERM and wait for
    the shutdown; ``"immediate"`` is :meth:`kill` (SIGKILL; the next start does crash recovery).
    """

    kind = "MariaDB"
    scheme = "mysql"
    BINARIES = ("mariadb-install-db", "mariadbd", "mariadb")
    superuser = "root"
    STOP_MODES = ("smart", "fast", "graceful", "immediate")

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
        found = {name: find_binary(name) for name in self.BINARIES}
        missing = [name for name, path in found.items() if path is None]
        if missing:
            raise ServerError(f"{', '.join(missing)} not found")
        self._install_db = str(found["mariadb-install-db"])
        self._mariadbd = str(found["mariadbd"])
        self._client = str(found["mariadb"])
        self._user_args = ["--user=root"] if os.geteuid() == 0 else []
        self._proc: subprocess.Popen[bytes] | None = None
        self._env = _clean_env(("MYSQL", "MARIADB"))

    # -- paths ----------------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self.tmp_dir / "data"

    @property
    def socket_path(self) -> Path:
        return self.tmp_dir / "mysql.sock"

    @property
    def pid_file(self) -> Path:
        return self.tmp_dir / "mariadbd.pid"

    @property
    def log_path(self) -> Path:
        return self.tmp_dir / "mariadbd.log"

    # -- state ----------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def running(self) -> bool:
        proc = self._proc
        return proc is not None and proc.poll() is None

    # -- subprocess helpers ---------------------------------------------------------------
    def _run(self, args: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self._tmp,
                env=self._env,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(f"{self.kind}: {args[0]} timed out after {timeout}s") from exc
        if result.returncode != 0:
            raise ServerError(
                f"{self.kind}: {' '.join(args)} exited with {result.returncode}\n"
                f"stdout: {result.stdout.strip()}\nstderr: {result.stderr.strip()}"
            )
        return result

    def _server_options(self) -> list[str]:
        return [
            "--no-defaults",  # must come first
            *self._user_args,
            f"--datadir={self.data_dir}",
            f"--tmpdir={self.tmp_dir / 'tmp'}",
            "--skip-name-resolve",
            "--innodb-buffer-pool-size=16M",
            "--innodb-log-file-size=8M",
            # Durable, as a production server: InnoDB writes and flushes its log at every
            # commit (=1, the default, stated here because the suite's crash tests rely on it),
            # with the doublewrite buffer on.
            "--innodb-flush-log-at-trx-commit=1",
            "--innodb-doublewrite=1",
            "--sync-binlog=1",  # no binary log here (--skip-log-bin); durable if one is enabled
            "--innodb-use-native-aio=0",
            "--skip-log-bin",
            "--performance-schema=OFF",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]

    # -- lifecycle ------------------------------------------------------------------------
    def _initialise(self) -> None:
        self._tmp = self._make_tmp("resilientdb-mariadb-", None)
        (self._tmp / "tmp").mkdir()
        self._run(
            [
                self._install_db,
                *self._server_options(),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ]
        )

    def _launch(self) -> None:
        self._clear_stale_files()
        cmd = [
            self._mariadbd,
            *self._server_options(),
            f"--port={self.port}",
            "--bind-address=127.0.0.1",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--max-connections={self.max_connections}",
        ]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._tmp,
                env=self._env,
                start_new_session=True,  # a ^C to pytest must not kill it before cleanup runs
            )
        deadline = time.monotonic() + self.start_timeout
        while not (self._greets() and self.socket_path.exists()):
            if self._proc.poll() is not None:
                self._proc = None
                raise ServerError(f"{self.kind} exited during startup:\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                self._reap(signal.SIGKILL)
                raise ServerError(f"{self.kind}: not ready in {self.start_timeout}s")
            time.sleep(0.02)

    def _greets(self) -> bool:
        """A TCP connect gets the protocol-10 handshake (not an error packet)."""
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                header = sock.recv(5)
        except OSError:
            return False
        return len(header) == 5 and header[4] == 10

    def _provision(self) -> None:
        app = f"'{APP_USER}'@'127.0.0.1', '{APP_USER}'@'localhost'"
        pw = f"IDENTIFIED BY '{SECURE_PASSWORD}'"
        secure = f"'{SECURE_USER}'@'127.0.0.1' {pw}, '{SECURE_USER}'@'localhost' {pw}"
        secure_names = f"'{SECURE_USER}'@'127.0.0.1', '{SECURE_USER}'@'localhost'"
        self.admin_query(
            f"DROP USER IF EXISTS ''@'localhost';"
            f"CREATE DATABASE IF NOT EXISTS `{APP_DATABASE}`;"
            f"CREATE USER {app};"
            f"GRANT ALL PRIVILEGES ON `{APP_DATABASE}`.* TO {app};"
            f"CREATE USER {secure};"
            f"GRANT ALL PRIVILEGES ON `{APP_DATABASE}`.* TO {secure_names};"
        )

    def _reap(self, sig: signal.Signals, timeout: float = STOP_TIMEOUT) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = None

    def stop(self, mode: str = "fast") -> None:
        """Graceful shutdown: SIGTERM and wait (``mode="immediate"`` is :meth:`kill`)."""
        if mode not in self.STOP_MODES:
            raise ValueError(f"mode must be one of {self.STOP_MODES}, not {mode!r}")
        if mode == "immediate":
            self.kill()
            return
        with self._lock:
            self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL mariadbd (a crash); the next :meth:`start` does InnoDB crash recovery."""
        with self._lock:
            if self._proc is None:
                return
            self._reap(signal.SIGKILL)
            self._clear_stale_files()
            self._wait_port_free()

    def _clear_stale_files(self) -> None:
        if self.running:
            return
        self.pid_file.unlink(missing_ok=True)
        self.socket_path.unlink(missing_ok=True)

    # -- admin ----------------------------------------------------------------------------
    def admin_query(self, sql: str, database: str | None = None) -> str:
        """Run ``sql`` as root with ``mariadb -N -B -e`` over the unix socket; return stdout.

        Several statements separated by ``;`` are allowed. Raises :class:`ServerError`.
        """
        args = [
            self._client,
            "--no-defaults",
            "--protocol=socket",
            f"--socket={self.socket_path}",
            f"--user={self.superuser}",
            "--batch",
            "--skip-column-names",
        ]
        if database is not None:
            args.append(f"--database={database}")
        args += ["-e", sql]
        return self._run(args, timeout=60).stdout.rstrip("\n")

    def kill_app_connections(self) -> int:
        """KILL every connection of the ``app`` user from outside; how many were killed."""
        ids = self.admin_query("SELECT id FROM information_schema.processlist WHERE user = 'app'")
        killed = 0
        for line in ids.split():
            try:
                self.admin_query(f"KILL {int(line)}")
                killed += 1
            except Exception:  # the connection went away by itself meanwhile
                pass
        return killed
