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
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # types only: the registry and DSN parsing import this module
    from .._dsn import DSN
    from ..config import Options

__all__ = [
    "Backend",
    "BackendFacts",
    "ConnectPaused",
    "Connection",
    "Cursor",
    "ErrorKind",
    "LooksUpFunctions",
    "Maintains",
    "PoolClosed",
    "PoolStats",
    "ResolvesOutcomes",
    "Streams",
    "TrimsIdle",
    "is_client_error",
    "with_closed_flag",
]


class ConnectPaused(ConnectionError):
    """The pool tried to open a connection while the supervisor was reconnecting.

    Raised by adapters instead of connecting, so that during an outage only the supervisor's
    probe knocks on the server. Nothing was sent: the caller waits at the gate and replays.
    """


class PoolClosed(ConnectionError):
    """The adapter's pool is closed (or not open yet). Raised by every adapter's own pool
    before anything is sent, so every adapter reports it as a lost connection, unsent."""


class ErrorKind(enum.Enum):
    """What an error means for the supervisor (docs/design.md, "When an operation is replayed")."""

    CONNECTION = "connection"  # the connection or server is gone: reconnect, replay if safe
    RETRYABLE = "retryable"  # the connection is fine; the transaction lost a race
    PERMANENT = "permanent"  # reconnecting will not help (credentials, missing database)
    QUERY = "query"  # the statement itself is wrong: surface unchanged


@dataclass(frozen=True, slots=True)
class BackendFacts:
    """What the replay and transaction rules need to know about a backend's server."""

    family: str
    """How its server reads SQL: ``"postgresql"``, ``"mysql"`` or ``"sqlite"``."""
    atomic_batch: bool
    """``executemany`` applies every row or none (one transaction on the server)."""
    readonly_guard: tuple[str, str] | None = None
    """Statements that open a read-only transaction and roll it back: a replay judged
    read-only by its text runs inside them, so that a write the text did not show is refused
    by the server, and what a read-only transaction still allows (a notification) is undone."""
    status_statement: str | None = None
    """A statement that does nothing but bring the driver's transaction status up to date,
    for drivers whose error replies carry none (MySQL): sent only after a failed statement
    that may have committed the transaction implicitly."""
    stream_in_transaction: bool = False
    """A cursor exists only inside a transaction (PostgreSQL): ``db.iterate()`` outside the
    caller's transaction opens a read-only one (``readonly_guard``) for the stream."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """Pool gauges at one instant (``Backend.stats()``; read by metrics, health and ``watch``)."""

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
    facts: BackendFacts

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

    def in_transaction(self, conn: Connection) -> bool:
        """Whether the server (as of its last reply) has a transaction open on ``conn``; no
        round trip. After an error some drivers keep the previous answer."""
        ...

    def commit_applied(self, result: Any) -> bool:
        """Whether the result of a successful ``COMMIT`` says it committed (PostgreSQL answers
        COMMIT of an aborted transaction with the tag ``ROLLBACK``)."""
        ...

    def write_refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the server refusing a write in a read-only transaction."""
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


class LooksUpFunctions(Protocol):
    """Optional adapter capability (PostgreSQL): the catalog facts the replay rules need."""

    async def harmless_functions(
        self, conn: Connection, names: frozenset[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """Of ``names``, those whose every overload is STABLE or IMMUTABLE; and the names of
        the operators implemented by a VOLATILE function."""
        ...


class Cursor(Protocol):
    """One open result read in batches (``Streams.open_cursor``); used by one task at a time."""

    async def fetch(self, n: int, timeout: float | None) -> list[Any]:
        """The next ``n`` rows at most; fewer than ``n`` only at the end of the result.
        ``timeout`` as for a ``Connection`` call."""
        ...

    async def close(self, timeout: float | None, *, drain: bool) -> None:
        """End the result, and the transaction ``open_cursor`` began, leaving the connection
        as it was before. ``drain=False`` allows closing the connection instead (its caller
        then discards it) when the rest of the result cannot be skipped cheaply."""
        ...


class Streams(Protocol):
    """Adapter capability: streaming results (``db.iterate()``)."""

    async def open_cursor(
        self,
        conn: Connection,
        query: str,
        args: tuple[Any, ...],
        *,
        begin: str | None,
        end: str | None,
        timeout: float | None,
    ) -> Cursor:
        """Send ``query`` (after ``begin``, when given) on a cursor that reads its result in
        batches; ``end`` is what closing the cursor sends to end what ``begin`` opened."""


class ResolvesOutcomes(Protocol):
    """Optional adapter capability (PostgreSQL): learn a transaction's id before COMMIT, and
    ask the server afterwards what became of it (``_outcomes.py``)."""

    async def transaction_mark(self, conn: Connection) -> tuple[str | None, str]:
        """The open transaction's id (``None``: it has none) and the server run's identity."""
        ...

    async def transaction_status(self, conn: Connection, xid: str) -> tuple[str | None, str]:
        """``"committed"``, ``"aborted"``, ``"in progress"``, ``"future"`` or ``None``, and
        the server run's identity."""
        ...


def is_client_error(exc: BaseException) -> bool:
    """An error the client raised about the caller's own input before sending it (a string
    the connection's encoding cannot carry). Some drivers close the connection after it; that
    is still the caller's error, not a lost connection."""
    return isinstance(exc, UnicodeEncodeError)


def with_closed_flag(kind: ErrorKind, conn: Connection | None, exc: BaseException) -> ErrorKind:
    """``kind``, except that an unfamiliar (QUERY) error on a connection that is now closed
    is a lost connection (the closed flag decides too), unless it was the client's own."""
    if kind is ErrorKind.QUERY and conn is not None and not is_client_error(exc):
        try:
            if conn.is_closed():
                return ErrorKind.CONNECTION
        except Exception:  # a proxy already detached from its connection: no verdict
            pass
    return kind
