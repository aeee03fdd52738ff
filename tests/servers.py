"""Throwaway PostgreSQL and MariaDB servers for the test suite (test support, not product code).

Each server lives in its own temporary directory, listens only on 127.0.0.1 on a free port and
is torn down by :meth:`cleanup` (the fixtures in ``conftest.py`` call it at session end; an
``atexit`` hook and a SIGTERM handler are a backstop for aborted sessions). The system services
on 5432 / 3306 are never touched.

Accounts on both servers:

* ``app`` (no password) owns / has all privileges on database ``app``;
* ``secure`` with password ``s3cret-pw`` (``SECURE_PASSWORD``) may connect to ``app``;
* the superuser (``postgres`` / MariaDB ``root``) is reachable through the unix socket in the
  temporary directory only, and is what :meth:`admin_query` uses.

All methods are synchronous (they run subprocesses and block). From async tests call the slow
ones through a thread: ``await asyncio.to_thread(server.restart)``. Every server has a lock, so
calls from several threads are serialised.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import ClassVar, NoReturn, Self
from urllib.parse import quote

import psutil
import pytest

HOST = "127.0.0.1"
APP_USER = "app"
APP_DATABASE = "app"
SECURE_USER = "secure"
SECURE_PASSWORD = "s3cret-pw"

START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0

# Directories searched after $PATH: server binaries are often outside a normal user's PATH.
_EXTRA_BIN_DIRS = (
    *sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True),
    "/usr/local/pgsql/bin",
    "/usr/local/sbin",
    "/usr/sbin",
    "/sbin",
    "/usr/libexec",
)

# Older / alternative names of the MariaDB binaries.
_ALIASES: dict[str, tuple[str, ...]] = {
    "mariadb": ("mariadb", "mysql"),
    "mariadbd": ("mariadbd", "mysqld"),
    "mariadb-install-db": ("mariadb-install-db", "mysql_install_db"),
}


class ServerError(RuntimeError):
    """A throwaway server could not be initialised, started, stopped or queried."""


# --------------------------------------------------------------------------------------------
# helpers


def find_binary(name: str) -> str | None:
    """Absolute path of ``name`` (or one of its aliases) on $PATH or in the usual server dirs."""
    for candidate in _ALIASES.get(name, (name,)):
        found = shutil.which(candidate)
        if found:
            return found
        for directory in _EXTRA_BIN_DIRS:
            path = os.path.join(directory, candidate)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    return None


def in_ci() -> bool:
    """True when the environment variable CI says we run in CI (``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require(binary_names: str | Iterable[str], what: str) -> None:
    """Skip the test if a binary is missing, or fail it when ``CI=true``.

    A missing database server in CI is a failure, never a silent skip.
    """
    names = [binary_names] if isinstance(binary_names, str) else list(binary_names)
    missing = [name for name in names if find_binary(name) is None]
    if not missing:
        return
    reason = (
        f"{what} is not available: cannot find {', '.join(missing)} on PATH or in "
        + ", ".join(_EXTRA_BIN_DIRS)
    )
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing server is a failure)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could bind ``127.0.0.1:port`` now (with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _alive(proc: psutil.Process | None) -> bool:
    """The process exists, is the same process (no pid reuse) and is not a zombie."""
    if proc is None:
        return False
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _pid_exists(pid: int) -> bool:
    """Whether ``pid`` is in the process table at all (a zombie counts)."""
    return psutil.pid_exists(pid)


def _clean_env(drop_prefixes: tuple[str, ...]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop_prefixes)}
    env.setdefault("LC_ALL", "C")
    return env


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _temp_parent(base_dir: str | os.PathLike[str] | None) -> str:
    """A parent for the temp dir that another OS user (postgres) can traverse."""
    if base_dir is not None:
        return os.fspath(base_dir)
    parent = tempfile.gettempdir()
    if os.geteuid() == 0:
        path = Path(parent).resolve()
        for part in (path, *path.parents):
            if not os.stat(part).st_mode & 0o001:
                return "/tmp"
    return parent


# --------------------------------------------------------------------------------------------
# registry of live servers: cleaned up at interpreter exit or on SIGTERM

_LIVE: set[_Server] = set()
_LIVE_LOCK = threading.Lock()
_SIGNAL_HOOK_INSTALLED = False


def cleanup_all() -> None:
    """Stop and delete every server this process started and has not cleaned up yet."""
    with _LIVE_LOCK:
        servers = list(_LIVE)
    for server in servers:
        with contextlib.suppress(Exception):
            server.cleanup()


def _on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # Turn SIGTERM (a CI job cancelled, a `timeout` wrapper) into KeyboardInterrupt so that
    # pytest unwinds and runs fixture finalizers, and the atexit hook runs after that.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt(f"received signal {signum}")


def _register(server: _Server) -> None:
    global _SIGNAL_HOOK_INSTALLED
    with _LIVE_LOCK:
        _LIVE.add(server)
        if _SIGNAL_HOOK_INSTALLED:
            return
        _SIGNAL_HOOK_INSTALLED = True
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, OSError):
            if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
                signal.signal(signal.SIGTERM, _on_sigterm)


def _unregister(server: _Server) -> None:
    with _LIVE_LOCK:
        _LIVE.discard(server)


atexit.register(cleanup_all)


# --------------------------------------------------------------------------------------------
# common surface


class _Server:
    """What both servers share: temp dir, port, lock, lifecycle bookkeeping."""

    kind: ClassVar[str] = "server"
    scheme: ClassVar[str] = ""
    BINARIES: ClassVar[tuple[str, ...]] = ()

    host: str = HOST

    def __init__(
        self,
        *,
        port: int | None = None,
        max_connections: int = 200,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self._fixed_port = port is not None
        self.port: int = port if port is not None else free_port()
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self._base_dir = base_dir
        self._lock = threading.RLock()
        self._tmp: Path | None = None
        self._initialised = False
        self._ever_started = False
        self._closed = False

    # -- to implement ---------------------------------------------------------------------
    def _initialise(self) -> None:
        raise NotImplementedError

    def _launch(self) -> None:
        raise NotImplementedError

    def _provision(self) -> None:
        raise NotImplementedError

    def stop(self, mode: str = "fast") -> None:
        raise NotImplementedError

    def kill(self) -> None:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    @property
    def tmp_dir(self) -> Path:
        if self._tmp is None:
            raise ServerError(f"{self.kind} server has not been started yet")
        return self._tmp

    def _make_tmp(self, prefix: str, owner: str | None) -> Path:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=_temp_parent(self._base_dir)))
        if owner is not None:
            entry = pwd.getpwnam(owner)
            os.chown(tmp, entry.pw_uid, entry.pw_gid)
        return tmp

    def start(self) -> None:
        """Start the server (initialising it on first use); returns once it accepts connections."""
        with self._lock:
            if self._closed:
                raise ServerError(f"{self.kind} server was cleaned up; create a new one")
            if self.running:
                return
            _register(self)
            if not self._initialised:
                self._initialise()
                self._initialised = True
            if self._ever_started:
                # Our own previous instance may still be letting go of the port.
                wait_for(lambda: port_is_free(self.port), 10)
            attempts = 1 if (self._fixed_port or self._ever_started) else 3
            for attempt in range(attempts):
                try:
                    self._launch()
                    break
                except ServerError:
                    # Lost the race for the port picked by free_port(): pick another one.
                    if attempt + 1 == attempts or port_is_free(self.port):
                        raise
                    self.port = free_port()
            if not self._ever_started:
                self._provision()
                self._ever_started = True

    def ensure_running(self) -> Self:
        """Start the server if a previous test left it stopped or killed."""
        with self._lock:
            if not self.running:
                self.start()
        return self

    def restart(self, mode: str = "fast") -> None:
        """Stop (``mode`` as for :meth:`stop`) and start again; :attr:`pid` changes."""
        with self._lock:
            self.stop(mode)
            self.start()

    def _wait_port_free(self, timeout: float = 15.0) -> None:
        if not wait_for(lambda: port_is_free(self.port), timeout):
            raise ServerError(f"{self.kind}: port {self.port} still busy {timeout}s after kill")

    def dsn(
        self,
        user: str = APP_USER,
        database: str = APP_DATABASE,
        password: str | None = None,
    ) -> str:
        """A ``<scheme>://user[:password]@127.0.0.1:port/database`` URL."""
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"{self.scheme}://{auth}@{self.host}:{self.port}/{quote(database, safe='')}"

    def cleanup(self) -> None:
        """Stop the server (however it can be stopped) and delete its temp dir. Idempotent."""
        with self._lock:
            if self.running:
                try:
                    self.stop("fast")
                except Exception:
                    with contextlib.suppress(Exception):
                        self.kill()
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            self._closed = True
            _unregister(self)

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

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} pid={self.pid} {state}>"


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
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
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
            "--innodb-flush-log-at-trx-commit=0",
            "--innodb-doublewrite=0",
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
