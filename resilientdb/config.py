"""Frozen, validated configuration: options and per-backend overrides.

Everything here runs at construction, without I/O and without an event loop, so that a bad
DSN or a negative timeout fails at once with a message naming what to fix, never at the first
query hours later. Each option is checked on its own wherever it is given (``Supervisor``
keywords, ``BackendConfig`` overrides); rules between options (``min_size <= max_size``) are
checked on the options a backend ends up with, once overrides are merged. DSN parsing and
redaction live in ``_dsn.py`` and ``_redact.py``, what each driver accepts in the backend
registry (``backends/registry.py``); the DSN names are re-exported here, where the docs put them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from ._backoff import Backoff
from ._credentials import PasswordSource, check_password
from ._dsn import DSN, parse_dsn, with_host
from ._redact import redact
from .backends import registry
from .errors import ConfigurationError

__all__ = ["DSN", "BackendConfig", "Options", "parse_dsn", "redact", "with_host"]


ConnectHook = Callable[[Any], Awaitable[None]]
MEMORY_ACTIONS = frozenset({"gc", "trim"})
# setsockopt(TCP_USER_TIMEOUT) takes milliseconds in a C int; past it, every connect raises.
MAX_TCP_USER_TIMEOUT = 2_147_483


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
    password: PasswordSource | None = field(default=None, repr=False)
    """The password: a string, or a function (``def`` or ``async def``, no arguments)
    returning the current one, called on every connect and probe (credential rotation).
    Never logged. Given here, it may not also be in the DSN or ``connect_kwargs``."""
    auth_grace: float = 5.0
    """Seconds an authentication failure is retried like an outage (callers wait at the
    gate) once the backend has been connected, before ``failed``: a rotated password whose
    secret store lags causes no errors. At first start a wrong password fails at once."""
    outcome_markers: bool = False
    """MySQL/MariaDB and SQLite: resolve a lost COMMIT with a marker row that the transaction
    inserts just before COMMIT into the table ``resilientdb_outcomes`` (created on first use),
    so that ``run_in_transaction`` can tell what happened (PostgreSQL asks its own
    transaction status and ignores this)."""
    outcome_retention: float = 86_400.0
    """Seconds a marker row is kept before the background sweep removes it; must exceed the
    longest call's deadline."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            # Stored back: a check may normalise (memory_actions becomes a frozenset).
            object.__setattr__(self, f.name, _CHECKS[f.name](f.name, getattr(self, f.name)))
        if self.min_size > self.max_size:
            raise ConfigurationError(
                f"min_size ({self.min_size}) must not exceed max_size ({self.max_size})"
            )

    @classmethod
    def check(cls, overrides: Mapping[str, Any]) -> None:
        """Check option names and each value on its own; ``ConfigurationError`` names it.

        Rules between options are left to the merged options (``Options(...)``): an override
        ``min_size=20`` is fine where the supervisor sets ``max_size=50``.
        """
        for key, value in overrides.items():
            if key not in _CHECKS:
                hint = difflib.get_close_matches(key, _CHECKS, n=1)
                tip = f"; did you mean {hint[0]!r}?" if hint else ""
                raise ConfigurationError(f"unknown option {key!r}{tip}")
            _CHECKS[key](key, value)

    @classmethod
    def build(cls, base: Options | None = None, **overrides: Any) -> Options:
        """``base`` with ``overrides`` applied; unknown names raise ``ConfigurationError``."""
        cls.check(overrides)
        if base is None:
            return cls(**overrides)
        return dataclasses.replace(base, **overrides)


# --- one check per option: (name, value) -> the value to store ---------------------------------


def _int(minimum: int, *, optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> Any:
        if optional and value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigurationError(f"{name} must be an integer >= {minimum}, not {value!r}")
        return value

    return check


def _seconds(name: str, value: Any) -> Any:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConfigurationError(f"{name} must be a number of seconds > 0, not {value!r}")
    return value


def _optional_seconds(name: str, value: Any) -> Any:
    return value if value is None else _seconds(name, value)


def _tcp_user_timeout(name: str, value: Any) -> Any:
    _seconds(name, value)
    if value > MAX_TCP_USER_TIMEOUT:
        raise ConfigurationError(
            f"{name} must be at most {MAX_TCP_USER_TIMEOUT} seconds (the kernel takes "
            f"milliseconds in a C int), not {value!r}"
        )
    return value


def _jitter(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise ConfigurationError(f"{name} must be in [0, 1), not {value!r}")
    return value


def _threshold(name: str, value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise ConfigurationError(f"{name} must be a fraction in (0, 1], not {value!r}")
    return value


def _flag(name: str, value: Any) -> Any:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, not {value!r}")
    return value


def _backoff(name: str, value: Any) -> Any:
    if not isinstance(value, Backoff):
        raise ConfigurationError(f"{name} must be a Backoff, not {type(value).__name__}")
    return value


def _is_async_callable(fn: object) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):  # async def, its bound methods, AsyncMock
        return True
    # An object whose __call__ is async. Looked up on the type: for a class that is the
    # metaclass's __call__, which builds an instance, synchronously.
    return callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)


def _hook(name: str, value: Any) -> Any:
    # The adapters await the hook's result on every new connection: a synchronous hook would
    # pass construction and then fail every connect with "can't be used in 'await'".
    if value is None or _is_async_callable(value):
        return value
    if not callable(value):
        why = f"{type(value).__name__!r} object is not callable"
    elif getattr(value, "__name__", None) == "<lambda>":
        why = "a lambda cannot be async, even one returning a coroutine; write an async def"
    else:
        why = f"{getattr(value, '__qualname__', type(value).__name__)!r} is synchronous"
    raise ConfigurationError(
        f"{name} must be async: an `async def` function taking the connection (or an object "
        f"whose __call__ is async, or a functools.partial of one); {why}"
    )


def _mapping(name: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping of driver arguments")
    return value


def _memory_actions(name: str, value: Any) -> Any:
    if isinstance(value, str) or not isinstance(value, Collection):
        raise ConfigurationError(f"{name} must be a set of names, not {type(value).__name__}")
    unknown = set(value) - MEMORY_ACTIONS
    if unknown:
        raise ConfigurationError(
            f"unknown {name} {sorted(map(str, unknown))}; choose from {sorted(MEMORY_ACTIONS)}"
        )
    # Normalised so that Options stays comparable whatever collection was passed.
    return frozenset(value)


def _retention(name: str, value: Any) -> Any:
    _seconds(name, value)
    if value < 60:
        raise ConfigurationError(
            f"{name} must be at least 60 seconds (longer than any call's deadline), not {value!r}"
        )
    return value


def _reader(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise ConfigurationError(f"{name} must be a callable returning (rss, limit)")
    return value


def _grace(name: str, value: Any) -> Any:
    return 0.0 if value == 0 and not isinstance(value, bool) else _seconds(name, value)


_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "min_size": _int(0),
    "max_size": _int(1),
    "connect_timeout": _seconds,
    "acquire_timeout": _seconds,
    "command_timeout": _optional_seconds,
    "gate_timeout": _seconds,
    "max_waiters": _int(0),
    "max_replays": _int(0),
    "backoff": _backoff,
    "max_attempts": _int(1, optional=True),
    "max_downtime": _optional_seconds,
    "failed_probe_interval": _seconds,
    "max_idle": _optional_seconds,
    "max_lifetime": _optional_seconds,
    "lifetime_jitter": _jitter,
    "keepalive_interval": _optional_seconds,
    "tcp_keepalive": _flag,
    "tcp_user_timeout": _tcp_user_timeout,
    "on_connect": _hook,
    "connect_kwargs": _mapping,
    "health_timeout": _seconds,
    "memory_watchdog": _flag,
    "memory_threshold": _threshold,
    "memory_interval": _seconds,
    "memory_actions": _memory_actions,
    "memory_reader": _reader,
    "password": check_password,
    "auth_grace": _grace,
    "outcome_markers": _flag,
    "outcome_retention": _retention,
}
# A field added to Options without a check would be stored unchecked: fail at import instead.
assert _CHECKS.keys() == {f.name for f in dataclasses.fields(Options)}


class BackendConfig:
    """A DSN with options that override the supervisor-wide ones for this backend only.

    ``Supervisor({"main": BackendConfig("postgresql://...", max_size=5), "cache": "sqlite:///c.db"})``

    The DSN, the option names and each value are checked here; rules between options
    (``min_size <= max_size``) once merged with the supervisor's, when the Supervisor is built.
    """

    __slots__ = ("dsn", "overrides")

    def __init__(self, dsn: str, **overrides: Any) -> None:
        self.dsn = parse_dsn(dsn)
        Options.check(overrides)
        self.overrides: dict[str, Any] = overrides

    def __repr__(self) -> str:
        shown = {k: "***" if k == "password" else repr(v) for k, v in self.overrides.items()}
        opts = "".join(f", {k}={v}" for k, v in shown.items())
        return f"BackendConfig({str(self.dsn)!r}{opts})"


def resolve_backend(
    name: str, spec: str | BackendConfig, options: Mapping[str, Any]
) -> tuple[DSN, Options]:
    """One backend's DSN and merged options, with the rules between options, the driver's
    presence and its connect arguments checked; errors name the backend.

    ``options`` are the supervisor-wide keywords, already checked one by one (``Options.check``).
    """
    if isinstance(spec, BackendConfig):
        dsn, merged = spec.dsn, {**options, **spec.overrides}
    else:
        dsn, merged = parse_dsn(spec), dict(options)
    try:
        opts = Options(**merged)
        driver = registry.spec_for(dsn.scheme)
        assert driver is not None  # parse_dsn found it
        driver.check(dsn, opts)
    except ConfigurationError as exc:
        raise ConfigurationError(f"backend {name!r}: {exc}") from None
    return dsn, opts


def supervisor_options(options: Mapping[str, Any]) -> Options:
    """The supervisor-wide settings (the memory watchdog's) from the Supervisor's keywords.

    Only the ``memory_*`` options are taken: the others are per backend, and may be
    inconsistent on their own (``min_size=20``) where every backend's overrides settle them.
    """
    return Options.build(**{k: v for k, v in options.items() if k.startswith("memory_")})
