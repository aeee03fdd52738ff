"""Frozen, validated configuration: options, per-backend overrides, DSN parsing and redaction.

Everything here runs at construction, without I/O and without an event loop, so that a bad
DSN or a negative timeout fails at once with a message naming what to fix, never at the first
query hours later.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import re
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from ._backoff import Backoff
from .errors import ConfigurationError

__all__ = ["DSN", "BackendConfig", "Options", "parse_dsn", "redact"]

REDACTED = "***"


@dataclass(frozen=True, slots=True)
class _Driver:
    backend: str  # adapter name: "postgres", "mysql", "sqlite"
    module: str  # the driver package that must be importable
    extra: str  # the pip extra that installs it
    adapter: str  # "package.module:Class", imported lazily
    options: frozenset[str]  # query-string options the driver understands


_PG_OPTIONS = frozenset(
    {
        "host", "port", "user", "password", "passfile", "database", "dbname", "sslmode",
        "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "ssl_min_protocol_version",
        "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib", "service",
        "application_name",
    }
)  # fmt: skip
_MYSQL_OPTIONS = frozenset({"charset", "unix_socket", "ssl", "init_command", "program_name"})
_SQLITE_OPTIONS = frozenset({"mode", "cache", "timeout", "journal_mode"})

_ADAPTERS = "resilientdb.backends."
_PG = _Driver(
    "postgres", "asyncpg", "postgres", _ADAPTERS + "postgres:PostgresBackend", _PG_OPTIONS
)
_MY = _Driver("mysql", "aiomysql", "mysql", _ADAPTERS + "mysql:MySQLBackend", _MYSQL_OPTIONS)
_LITE = _Driver(
    "sqlite", "aiosqlite", "sqlite", _ADAPTERS + "sqlite:SQLiteBackend", _SQLITE_OPTIONS
)
SCHEMES: dict[str, _Driver] = {
    "postgresql": _PG,
    "postgres": _PG,
    "mysql": _MY,
    "mariadb": _MY,
    "sqlite": _LITE,
}


def _find_spec(name: str) -> object | None:
    # A module set to None in sys.modules is "blocked"; find_spec raises for it.
    if name in sys.modules and sys.modules[name] is None:
        return None
    try:
        return importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class DSN:
    """A parsed connection URL. ``str(dsn)`` and ``repr(dsn)`` are redacted."""

    raw: str = field(repr=False)
    scheme: str
    backend: str
    host: str | None
    port: int | None
    user: str | None
    password: str | None = field(repr=False)
    database: str | None
    path: str | None  # SQLite: the file path, or ":memory:"
    options: Mapping[str, str]

    def __str__(self) -> str:
        return redact(self.raw)

    def __repr__(self) -> str:
        return f"DSN({redact(self.raw)!r})"

    @property
    def driver(self) -> _Driver:
        return SCHEMES[self.scheme]


_PASSWORD_QUERY = re.compile(r"(?i)([?&](?:password|sslpassword)=)[^&#]*")


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (also in the query string).

    Safe on malformed input: it never raises and never returns the secret.
    """
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return "<unparseable DSN>"
    netloc = parts.netloc
    out = dsn
    if "@" in netloc:
        userinfo, _, hostinfo = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.split(":", 1)[0]
            netloc = f"{user}:{REDACTED}@{hostinfo}"
            out = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    # Edited as text, not rebuilt: urlunsplit would drop the empty host of sqlite:///x.db.
    return _PASSWORD_QUERY.sub(lambda m: m.group(1) + REDACTED, out)


def parse_dsn(dsn: str) -> DSN:
    """Parse and validate a connection URL; ``ConfigurationError`` names what is wrong."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise ConfigurationError(f"a DSN must be a non-empty string, not {type(dsn).__name__}")
    shown = redact(dsn)
    scheme = dsn.split(":", 1)[0].lower() if "://" in dsn else ""
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        what = f"unknown scheme {scheme + '://'!r}" if scheme else "no scheme"
        raise ConfigurationError(f"DSN {shown!r} has {what}; use one of {known}")
    driver = SCHEMES[scheme]
    try:
        parts = urlsplit(dsn)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"malformed DSN {shown!r}: {exc}") from None
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in driver.options:
            hint = difflib.get_close_matches(key, driver.options, n=1)
            tip = f"; did you mean {hint[0]!r}?" if hint else ""
            raise ConfigurationError(
                f"DSN {shown!r}: unknown option {key!r} for {driver.backend}{tip} "
                f"(pass driver arguments through connect_kwargs=)"
            )
        options[key] = value
    if driver.backend == "sqlite":
        # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:
        if parts.netloc:
            raise ConfigurationError(
                f"DSN {shown!r}: SQLite takes no host; write sqlite:///relative.db or "
                f"sqlite:////absolute/path.db"
            )
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not path:
            raise ConfigurationError(f"DSN {shown!r}: SQLite needs a file path or :memory:")
        return DSN(dsn, scheme, driver.backend, None, None, None, None, None, path, options)
    if not parts.hostname and "host" not in options and "unix_socket" not in options:
        raise ConfigurationError(f"DSN {shown!r} has no host")
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else None
    if database is not None and "/" in database:
        raise ConfigurationError(f"DSN {shown!r}: the database name may not contain '/'")
    return DSN(
        dsn,
        scheme,
        driver.backend,
        parts.hostname,
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        database or None,
        None,
        options,
    )


def with_host(dsn: DSN, host: str, port: int) -> str:
    """The DSN's URL pointed at another host and port (tests put a proxy in between)."""
    parts = urlsplit(dsn.raw)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


ConnectHook = Callable[[Any], Awaitable[None]]
MEMORY_ACTIONS = frozenset({"gc", "trim"})


@dataclass(frozen=True, kw_only=True)
class Options:
    """Every tunable, with its default. Supervisor keyword arguments build one of these.

    Timeouts are in seconds. ``None`` where allowed means "no bound of this kind" (the call's
    own ``timeout=`` still applies).
    """

    min_size: int = 1
    """Connections opened at start; the floor the memory watchdog trims down to. Idle
    connections past ``max_idle`` may close below it and reopen on demand."""
    max_size: int = 10
    """Connections the pool opens at most."""
    connect_timeout: float = 5.0
    """Bound on opening one connection, greeting and authentication included."""
    acquire_timeout: float = 30.0
    """Bound on waiting for a free pool connection."""
    command_timeout: float | None = None
    """Bound on one statement; also what finds a half-open socket mid-query."""
    gate_timeout: float = 30.0
    """How long a call waits at the gate for a reconnect before ``DatabaseUnavailable``."""
    max_waiters: int = 10_000
    """Callers allowed to wait at the gate at once; past it, ``Overloaded`` at once."""
    max_replays: int = 3
    """Replays allowed per call before its error is raised."""
    backoff: Backoff = field(default_factory=Backoff)
    """Delays between reconnect attempts."""
    max_attempts: int | None = None
    """Reconnect attempts before giving up (FAILED); ``None`` retries until max_downtime."""
    max_downtime: float | None = None
    """Seconds of reconnecting before giving up (FAILED); ``None``: no limit."""
    failed_probe_interval: float = 5.0
    """While FAILED, the supervisor keeps probing so the service heals itself: quickly at
    first (doubling from the backoff's first delay), then every this many seconds."""
    max_idle: float | None = 300.0
    """Idle connections older than this are closed (``None``: never)."""
    max_lifetime: float | None = 3600.0
    """Idle connections older than this are replaced (never one in use); each connection's
    lifetime is shortened by up to ``lifetime_jitter`` so a fleet does not recycle at once."""
    lifetime_jitter: float = 0.2
    """Fraction of ``max_lifetime`` taken off at random, per connection."""
    keepalive_interval: float | None = 30.0
    """How often idle connections are pinged, so that one killed or cut off while idle is
    replaced before a call meets it (``None``: never)."""
    tcp_keepalive: bool = True
    """Set SO_KEEPALIVE and TCP_USER_TIMEOUT on the driver's TCP sockets where the platform
    allows, so the kernel detects a silently vanished peer."""
    tcp_user_timeout: float = 30.0
    """Seconds of unacknowledged data (and the keepalive probing budget) before the kernel
    drops a connection to a vanished peer."""
    on_connect: ConnectHook | None = None
    """``async def hook(raw_connection)`` run on every new connection (SET search_path...)."""
    connect_kwargs: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments passed through to the driver's connect call."""
    health_timeout: float = 1.0
    """Bound on one health check, its ping's own acquire included (never ``acquire_timeout``)."""
    memory_watchdog: bool = True
    """Run the memory watchdog (supervisor-wide: per-backend ``memory_*`` overrides are ignored)."""
    memory_threshold: float = 0.85
    """Fraction of the memory limit (cgroup, else system) above which the watchdog acts."""
    memory_interval: float = 10.0
    """Seconds between two memory samples."""
    memory_actions: Collection[str] = frozenset({"gc", "trim"})
    """What the watchdog does past the threshold besides emitting ``MemoryPressure``:
    ``"gc"`` (``gc.collect()``) and ``"trim"`` (close idle connections down to ``min_size``)."""
    memory_reader: Callable[[], tuple[int, int]] | None = None
    """``() -> (resident_bytes, limit_bytes)``; ``None`` reads the process through psutil."""

    def __post_init__(self) -> None:
        _check_int("min_size", self.min_size, minimum=0)
        _check_int("max_size", self.max_size, minimum=1)
        if self.min_size > self.max_size:
            raise ConfigurationError(
                f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})"
            )
        _check_int("max_waiters", self.max_waiters, minimum=0)
        _check_int("max_replays", self.max_replays, minimum=0)
        if self.max_attempts is not None:
            _check_int("max_attempts", self.max_attempts, minimum=1)
        for name in ("connect_timeout", "acquire_timeout", "gate_timeout", "failed_probe_interval"):
            _check_seconds(name, getattr(self, name))
        for name in ("command_timeout", "max_downtime", "max_idle"):
            value = getattr(self, name)
            if value is not None:
                _check_seconds(name, value)
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError(
                f"backoff must be a Backoff, not {type(self.backoff).__name__}"
            )
        if self.on_connect is not None and not callable(self.on_connect):
            raise ConfigurationError("on_connect must be an async callable taking the connection")
        if not isinstance(self.connect_kwargs, Mapping):
            raise ConfigurationError("connect_kwargs must be a mapping of driver arguments")
        self._check_operations()

    def _check_operations(self) -> None:
        _check_seconds("health_timeout", self.health_timeout)
        _check_seconds("tcp_user_timeout", self.tcp_user_timeout)
        for name in ("max_lifetime", "keepalive_interval"):
            value = getattr(self, name)
            if value is not None:
                _check_seconds(name, value)
        jitter = self.lifetime_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < 1:
            raise ConfigurationError(f"lifetime_jitter must be in [0, 1), not {jitter!r}")
        if not isinstance(self.tcp_keepalive, bool):
            raise ConfigurationError(
                f"tcp_keepalive must be True or False, not {self.tcp_keepalive!r}"
            )
        _check_seconds("memory_interval", self.memory_interval)
        if not isinstance(self.memory_watchdog, bool):
            raise ConfigurationError(
                f"memory_watchdog must be True or False, not {self.memory_watchdog!r}"
            )
        threshold = self.memory_threshold
        if (
            isinstance(threshold, bool)
            or not isinstance(threshold, int | float)
            or not 0 < threshold <= 1
        ):
            raise ConfigurationError(
                f"memory_threshold must be a fraction in (0, 1], not {threshold!r}"
            )
        actions = self.memory_actions
        if isinstance(actions, str) or not isinstance(actions, Collection):
            raise ConfigurationError(
                f"memory_actions must be a set of names, not {type(actions).__name__}"
            )
        unknown = set(actions) - MEMORY_ACTIONS
        if unknown:
            raise ConfigurationError(
                f"unknown memory_actions {sorted(map(str, unknown))}; "
                f"choose from {sorted(MEMORY_ACTIONS)}"
            )
        # Normalised so that Options stays comparable whatever collection was passed.
        object.__setattr__(self, "memory_actions", frozenset(actions))
        if self.memory_reader is not None and not callable(self.memory_reader):
            raise ConfigurationError("memory_reader must be a callable returning (rss, limit)")

    @classmethod
    def build(cls, base: Options | None = None, **overrides: Any) -> Options:
        """``base`` with ``overrides`` applied; unknown names raise ``ConfigurationError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in overrides:
            if key not in names:
                hint = difflib.get_close_matches(key, names, n=1)
                tip = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigurationError(f"unknown option {key!r}{tip}")
        if base is None:
            return cls(**overrides)
        return dataclasses.replace(base, **overrides)


def _check_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, not {value!r}")


def _check_seconds(name: str, value: object) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")


class BackendConfig:
    """A DSN with options that override the supervisor-wide ones for this backend only.

    ``Supervisor({"main": BackendConfig("postgresql://...", max_size=5), "cache": "sqlite:///c.db"})``
    """

    __slots__ = ("dsn", "overrides")

    def __init__(self, dsn: str, **overrides: Any) -> None:
        self.dsn = parse_dsn(dsn)
        Options.build(**overrides)  # validates names and values now, at construction
        self.overrides: dict[str, Any] = overrides

    def __repr__(self) -> str:
        opts = "".join(f", {k}={v!r}" for k, v in self.overrides.items())
        return f"BackendConfig({str(self.dsn)!r}{opts})"


def check_driver(dsn: DSN) -> None:
    """Raise ``ConfigurationError`` naming the extra to install when the driver is missing."""
    driver = dsn.driver
    if _find_spec(driver.module) is None:
        raise ConfigurationError(
            f"the {driver.backend} backend needs the {driver.module!r} package: "
            f"pip install 'resilientdb[{driver.extra}]'"
        )
