"""The contract between the supervisor and a driver adapter.

An adapter owns one driver pool and knows the driver's habits: how to open and probe, which
errors mean what, and which failures provably happened before a request reached the wire.
Everything outside ``resilientdb/backends/`` talks to drivers only through this Protocol.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..config import DSN, Options

__all__ = [
    "Backend",
    "ConnectPaused",
    "Connection",
    "ErrorKind",
    "Maintains",
    "PoolStats",
    "TrimsIdle",
    "with_closed_flag",
]


class ConnectPaused(ConnectionError):
    """The pool tried to open a connection while the supervisor was reconnecting.

    Raised by adapters instead of connecting, so that during an outage only the supervisor's
    probe knocks on the server. Nothing was sent: the caller waits at the gate and replays.
    """


class ErrorKind(enum.Enum):
    """What an error means for the supervisor (DESIGN.md section 5)."""

    CONNECTION = "connection"  # the connection or server is gone: reconnect, replay if safe
    RETRYABLE = "retryable"  # the connection is fine; the transaction lost a race
    PERMANENT = "permanent"  # reconnecting will not help (credentials, missing database)
    QUERY = "query"  # the statement itself is wrong: surface unchanged


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Pool gauges at one instant."""

    size: int  # connections open
    idle: int
    in_use: int
    min_size: int
    max_size: int


class Connection(Protocol):
    """The uniform connection API: asyncpg's own, which the other adapters imitate.

    ``timeout`` is the statement's bound in seconds; ``None`` means the backend's configured
    ``Options.command_timeout`` (which may itself be ``None``: unbounded). A statement that
    exceeds it raises ``TimeoutError`` and its connection is discarded by the caller.
    """

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]: ...

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any: ...

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any: ...

    async def executemany(
        self, command: str, args: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> Any: ...

    def is_closed(self) -> bool: ...


class Backend(Protocol):
    """One driver pool and the driver's error semantics.

    Lifecycle: ``open()`` once (retried by the supervisor until it succeeds), ``probe()``
    while reconnecting, ``refresh()`` after each recovery, ``close()`` at the end. Only
    ``acquire`` is on the hot path.
    """

    dsn: DSN
    options: Options

    @property
    def opened(self) -> bool:
        """Whether ``open()`` has succeeded (a pool exists)."""
        ...

    async def open(self) -> None:
        """Create the pool and its first connections, bounded by ``connect_timeout``."""
        ...

    async def probe(self) -> None:
        """Open one fresh connection, check it answers, close it: the reconnect test."""
        ...

    async def refresh(self) -> None:
        """Retire every connection of the old generation; new ones run ``on_connect``."""
        ...

    async def close(self) -> None:
        """Close the pool and every connection, bounded in time; idempotent."""
        ...

    def begin_statements(self, isolation: str | None, readonly: bool) -> tuple[str, ...]:
        """The SQL that opens a transaction. ``isolation`` is normalised (``"SERIALIZABLE"``,
        ``"REPEATABLE READ"``, ``"READ COMMITTED"``, ``"READ UNCOMMITTED"``) or None."""
        ...

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        """Install the check the pool must pass before opening any new connection.

        While it returns False the adapter raises ``ConnectPaused`` instead of connecting.
        """
        ...

    def acquire(self, timeout: float | None) -> AbstractAsyncContextManager[Connection]:
        """A pooled connection for one operation, released (or discarded) on exit."""
        ...

    def raw(self, conn: Connection) -> Any:
        """The driver's own connection object behind ``conn`` (``db.acquire()``)."""
        ...

    def discard(self, conn: Connection) -> None:
        """Close ``conn`` hard so the pool never hands it out again (state unknown)."""
        ...

    def classify(self, exc: BaseException, conn: Connection | None = None) -> ErrorKind:
        """The kind of ``exc``. ``conn`` (when given) is checked for its closed flag."""
        ...

    def classify_connect(self, exc: BaseException) -> ErrorKind:
        """The kind of an error raised while opening a connection (CONNECTION or PERMANENT)."""
        ...

    def unsent(self, exc: BaseException) -> bool:
        """True when ``exc`` was raised before anything of the request was written."""
        ...

    def stats(self) -> PoolStats:
        """Pool gauges now (zeros when not open)."""
        ...


class TrimsIdle(Protocol):
    """Optional adapter capability, used by the memory watchdog (called through ``getattr``).

    An adapter without it is simply not trimmed.
    """

    async def trim_idle(self) -> int:
        """Close idle pooled connections beyond ``min_size`` now; return how many closed.

        Connections in use are never touched.
        """
        ...


class Maintains(Protocol):
    """Optional adapter capability: the background keepalive and lifetime pass, run by the
    supervisor every ``keepalive_interval`` while connected (called through ``getattr``)."""

    async def maintain(self) -> int:
        """Ping idle connections, retire expired ones, top up to ``min_size``; return how
        many idle connections were found dead (the supervisor then checks the server)."""
        ...


def with_closed_flag(kind: ErrorKind, conn: Connection | None) -> ErrorKind:
    """``kind``, except that an unfamiliar (QUERY) error on a connection that is now closed
    is a lost connection: DESIGN.md decides "connection lost" from the closed flag too."""
    if kind is ErrorKind.QUERY and conn is not None:
        try:
            if conn.is_closed():
                return ErrorKind.CONNECTION
        except Exception:  # a proxy already detached from its connection: no verdict
            pass
    return kind
