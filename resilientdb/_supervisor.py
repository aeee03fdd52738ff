"""Supervisor: the object a service creates once, holding one supervised pool per backend."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from types import TracebackType
from typing import Any, TypeVar

from . import metrics
from ._database import Database
from ._engine import Engine
from ._monitor import Monitor
from ._states import SEVERITY, State
from ._statistics import BackendStatistics
from ._tasks import TaskGroup
from .backends import registry
from .backends.base import Backend
from .config import DSN, BackendConfig, Options, resolve_backend, supervisor_options
from .errors import ConfigurationError, DatabaseUnavailable, SupervisorClosed
from .events import ErrorOccurred, Event, EventBus
from .health import HealthReport
from .health import check as check_health
from .memory import MemoryWatchdog

__all__ = ["BackendFactory", "Supervisor", "default_backend"]

E = TypeVar("E", bound=Event)
# (backend name, parsed DSN, merged options) -> the adapter for that backend.
BackendFactory = Callable[[str, DSN, Options], Backend]
DEFAULT_NAME = "default"


class Supervisor:
    """Supervises one connection pool per backend and routes every call through a gate.

    ``Supervisor("postgresql://app@db/app")`` has one backend named ``"default"``;
    ``Supervisor({"main": dsn, "cache": BackendConfig(dsn2, max_size=2)})`` has several.
    Keyword arguments are the options of :class:`resilientdb.Options`, applied to every
    backend; a :class:`BackendConfig` overrides them for its backend. Everything is validated
    here, without I/O: a bad DSN, option or missing driver raises ``ConfigurationError``.

    Use ``async with supervisor:`` (or ``await supervisor.start()`` / ``await
    supervisor.aclose()``). Starting returns once every backend has made its first connection
    attempt, whether it succeeded or not: calls made while the database is still down wait at
    the gate and go through when it comes up.

    ``on_error`` receives an :class:`ErrorOccurred` event for every error the supervisor
    handles (lost connections, failed probes, unknown outcomes): for Sentry, Slack, paging.

    ``backend_factory(name, dsn, options)`` builds each backend's adapter instead of the one
    the DSN's scheme names: for a custom adapter, or for a test that wants a handle on the
    adapter it supervises (wrap :func:`default_backend`).
    """

    def __init__(
        self,
        dsn: str | BackendConfig | Mapping[str, str | BackendConfig],
        /,
        *,
        on_error: Callable[[ErrorOccurred], Awaitable[None] | None] | None = None,
        backend_factory: BackendFactory | None = None,
        **options: Any,
    ) -> None:
        # Names and values one by one here; the rules between options (min_size <= max_size)
        # on each backend's merged options, so that an override can settle them.
        Options.check(options)
        specs = _backend_specs(dsn)
        if backend_factory is not None and not callable(backend_factory):
            raise ConfigurationError(
                "backend_factory must be a callable taking (name, dsn, options) and returning "
                "a backend adapter"
            )
        factory = default_backend if backend_factory is None else backend_factory
        self._bus = EventBus()
        self._tasks = TaskGroup("supervisor")
        # The supervisor owns each backend's monitor (state machine, reconnect loop) and
        # engine (the call rules); a Database is the face the application holds.
        self._monitors: dict[str, Monitor] = {}
        self._databases: dict[str, Database] = {}
        for name, spec in specs.items():
            parsed, opts = resolve_backend(name, spec, options)
            monitor = Monitor(name, _built(factory, name, parsed, opts), opts, self._bus)
            self._monitors[name] = monitor
            self._databases[name] = Database(Engine(monitor))
            self._databases[name]._closer = self.aclose
        if on_error is not None:
            if not callable(on_error):
                raise ConfigurationError("on_error must be a callable taking an ErrorOccurred")
            self._bus.on(ErrorOccurred, on_error)
        self._started = False
        self._closed = False
        self._closing: asyncio.Future[None] | None = None
        self._options = supervisor_options(options)  # the memory watchdog's settings
        self._watchdog: MemoryWatchdog | None = None

    def __repr__(self) -> str:
        parts = ", ".join(
            f"{name}={m.backend.dsn!s} ({m.state.value})" for name, m in self._monitors.items()
        )
        return f"<Supervisor {parts}>"

    # -- access -------------------------------------------------------------------------------

    @property
    def db(self) -> Database:
        """The first (or only) backend's Database."""
        return next(iter(self._databases.values()))

    def __getitem__(self, name: str) -> Database:
        try:
            return self._databases[name]
        except KeyError:
            known = ", ".join(repr(n) for n in self._databases)
            raise KeyError(f"no backend named {name!r}; known: {known}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._databases)

    def __len__(self) -> int:
        return len(self._databases)

    @property
    def databases(self) -> Mapping[str, Database]:
        """Every backend's Database by name."""
        return dict(self._databases)

    @property
    def memory_watchdog(self) -> MemoryWatchdog | None:
        """The running memory watchdog (its counters, ``check()`` on demand), or None when
        it is disabled or the supervisor is not running."""
        return self._watchdog

    @property
    def state(self) -> State:
        """The worst state over all backends (FAILED beats RECONNECTING beats CONNECTED)."""
        return max((db.state for db in self._databases.values()), key=SEVERITY.__getitem__)

    def on(self, event_type: type[E], handler: Callable[[E], Awaitable[None] | None]) -> None:
        """Call ``handler`` (sync or async) for every event of ``event_type``, in order.

        ``supervisor.on(Event, handler)`` receives every event. A handler that raises is
        logged and never disturbs the supervisor.
        """
        self._bus.on(event_type, handler)

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the supervisor tasks and make the first connection attempt of each backend.

        ``SupervisorClosed`` when the supervisor was closed before or while it started."""
        if self._closed:
            raise SupervisorClosed("a closed supervisor cannot be started again; create a new one")
        if self._started:
            return
        self._started = True
        tasks = self._tasks
        await tasks.start()
        if self._closed:  # aclose() ran while the group opened: start nothing
            raise SupervisorClosed("the supervisor was closed while it started")
        self._bus.start(tasks.spawn)
        monitors = list(self._monitors.values())
        for monitor in monitors:
            monitor.start(tasks.spawn)
        opts = self._options
        if opts.memory_watchdog:
            self._watchdog = MemoryWatchdog(
                monitors,
                self._bus,
                threshold=opts.memory_threshold,
                interval=opts.memory_interval,
                actions=opts.memory_actions,
                reader=opts.memory_reader,
            )
            self._watchdog.start(tasks.spawn)
        bound = max(m.options.connect_timeout for m in monitors) * 2
        await asyncio.gather(*(m.wait_first_attempt(bound) for m in monitors))
        if self._closed:
            raise SupervisorClosed("the supervisor was closed while it started")

    async def aclose(self) -> None:
        """Close every pool and stop every task; waiting callers get ``SupervisorClosed``.

        Idempotent, and safe to call concurrently: every caller returns once the close is
        complete. The close runs to its end even if the caller is cancelled (it is bounded:
        connections still being given back get a few seconds)."""
        if self._closing is None:
            self._closed = True
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        try:
            # Listeners first: their subscribers end and their connections close while the
            # gates are still open.
            await asyncio.gather(*(db._listener.aclose() for db in self._databases.values()))
            if watchdog is not None:
                await watchdog.aclose()
            await asyncio.gather(*(m.aclose() for m in self._monitors.values()))
        finally:
            try:
                await self._bus.aclose()  # after the monitors: their last events delivered
            finally:
                await self._tasks.aclose()

    async def close(self) -> None:
        """Alias of :meth:`aclose` (asyncpg's and psycopg_pool's name)."""
        await self.aclose()

    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def wait_until_connected(self, timeout: float | None = None) -> None:
        """Return once every backend is CONNECTED; ``DatabaseUnavailable`` after ``timeout``.

        Unlike a call at the gate, this keeps waiting through FAILED (which heals itself).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        for name, monitor in self._monitors.items():
            gate = monitor.gate
            while gate.state is not State.CONNECTED:
                if gate.state is State.CLOSED:
                    raise SupervisorClosed(gate.closed_reason)
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise DatabaseUnavailable(
                        f"backend {name!r} is still {gate.state.value} after {timeout}s"
                    ) from gate.last_error
                try:
                    await gate.wait_change(remaining)
                except TimeoutError:
                    continue

    # -- figures --------------------------------------------------------------------------------

    def stats(self) -> dict[str, dict[str, Any]]:
        """A snapshot per backend: OpenTelemetry-style pool gauges plus resilientdb counters,
        as plain dicts (``metrics`` documents the keys)."""
        return metrics.snapshot(self._monitors)

    def statistics(self) -> dict[str, BackendStatistics]:
        """Every backend's figures now, as frozen objects (``db.statistics()`` for one)."""
        now = time.monotonic()
        return {name: m.statistics(now) for name, m in self._monitors.items()}

    async def health(self, timeout: float | None = None) -> HealthReport:
        """Check every backend now (concurrently) and return a :class:`HealthReport`.

        Each backend's check (state, pool figures, a ``SELECT 1`` with its own short acquire)
        is bounded by ``timeout`` seconds, or by the backend's ``health_timeout`` option. It
        never raises for a database problem: an outage is a ``fail`` in the report.
        """
        return await check_health((db._engine for db in self._databases.values()), timeout)

    async def expire_connections(self) -> None:
        """``expire_connections()`` on every backend (see ``Database.expire_connections``)."""
        for db in self._databases.values():
            await db.expire_connections()


def _backend_specs(
    dsn: str | BackendConfig | Mapping[str, str | BackendConfig],
) -> dict[str, str | BackendConfig]:
    if isinstance(dsn, str | BackendConfig):
        return {DEFAULT_NAME: dsn}
    if not isinstance(dsn, Mapping):
        raise ConfigurationError(
            f"Supervisor takes a DSN string or a mapping of names to DSNs, not {type(dsn).__name__}"
        )
    if not dsn:
        raise ConfigurationError("Supervisor needs at least one backend")
    for name, spec in dsn.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"backend names must be non-empty strings, not {name!r}")
        if not isinstance(spec, str | BackendConfig):
            raise ConfigurationError(
                f"backend {name!r}: expected a DSN string or BackendConfig, "
                f"not {type(spec).__name__}"
            )
    return dict(dsn)


def _built(factory: BackendFactory, name: str, dsn: DSN, options: Options) -> Backend:
    backend = factory(name, dsn, options)
    missing = [m for m in _ADAPTER_METHODS if not callable(getattr(backend, m, None))]
    if missing or getattr(backend, "facts", None) is None:
        raise ConfigurationError(
            f"backend {name!r}: backend_factory returned {type(backend).__name__}, not a "
            f"backend adapter (missing: {', '.join(missing) or 'facts'})"
        )
    return backend


# What a backend_factory's result must have (the Backend protocol's methods).
_ADAPTER_METHODS = ("open", "probe", "refresh", "close", "acquire", "classify", "classify_connect")


def default_backend(name: str, dsn: DSN, options: Options) -> Backend:
    """The adapter the DSN's scheme names in the backend registry (the default
    ``backend_factory``)."""
    return registry.create(dsn, options)
