"""What the throwaway servers share: constants, helpers, the registry of live servers and
the ``_Server`` base class. Import from ``harness.servers``, which re-exports the public names."""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from types import FrameType, TracebackType
from typing import ClassVar, NoReturn, Self
from urllib.parse import quote

import psutil
import pytest

from harness.polling import wait_for

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
