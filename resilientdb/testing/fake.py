"""A scripted, in-memory backend for unit tests of the state machine, the gate and replay.

``Supervisor("fake://name")`` uses it once this module is imported. The test reaches the
adapter through ``supervisor.db.backend`` and scripts it: take the "server" down and up,
queue connect outcomes, make the next statement fail before or after it was "sent". It does
no I/O, so every transition can be driven deterministically.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from ..backends.base import BackendFacts, Connection, ErrorKind, PoolStats
from ..backends.registry import register
from ..config import DSN, Options

__all__ = [
    "FakeBackend",
    "FakeConnectionLost",
    "FakeNotSent",
    "FakePermanent",
    "FakeRetryable",
]


class FakeConnectionLost(ConnectionError):
    """The connection died after the request may have been sent."""


class FakeNotSent(ConnectionError):
    """The connection was found closed before anything was written."""


class FakePermanent(Exception):
    """Bad credentials: reconnecting will not help."""


class FakeRetryable(Exception):
    """A deadlock or serialization failure: the statement was rolled back."""


@dataclass
class FakeConnection:
    """A pooled fake connection. ``calls`` records what it ran."""

    backend: FakeBackend
    generation: int
    closed: bool = False
    in_tx: bool = False
    calls: list[tuple[str, str]] = field(default_factory=list)

    async def _run(self, op: str, query: str, result: Any, timeout: float | None) -> Any:
        b = self.backend
        if self.closed or not b.up or self.generation < b.retired_below:
            self.closed = True
            raise FakeNotSent("connection is closed")
        if b.failures:
            exc, sent = b.failures.popleft()
            if sent:
                self.calls.append((op, query))
                b.executed.append((op, query))
            raise exc
        self.calls.append((op, query))
        if b.delay:
            async with asyncio.timeout(timeout):
                await asyncio.sleep(b.delay)
        b.executed.append((op, query))
        word = query.split(None, 1)[0].upper() if query.strip() else ""
        if word in ("BEGIN", "START"):
            self.in_tx = True
        elif word in ("COMMIT", "ROLLBACK", "END"):
            self.in_tx = False
        return result

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        rows: list[Any] = await self._run("fetch", query, [self.backend.value], timeout)
        return rows

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run("fetchrow", query, (self.backend.value,), timeout)

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        return await self._run("fetchval", query, self.backend.value, timeout)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        return await self._run("execute", query, "OK", timeout)

    async def executemany(
        self, command: str, args: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> Any:
        return await self._run("executemany", command, None, timeout)

    def is_closed(self) -> bool:
        return self.closed


class FakeBackend:
    """The scripted adapter. Public attributes are the script and the record."""

    facts = BackendFacts("postgresql", atomic_batch=True, readonly_guard=None)

    def __init__(self, dsn: DSN, options: Options) -> None:
        self.dsn = dsn
        self.options = options
        self.up = True  # is the "server" accepting connections and answering?
        self.permanent = False  # connects fail with FakePermanent while True
        self.connect_outcomes: collections.deque[BaseException | None] = collections.deque()
        self.failures: collections.deque[tuple[BaseException, bool]] = collections.deque()
        self.value: Any = 1
        self.delay = 0.0  # seconds each statement takes
        self.connect_delay = 0.0
        self.opens = 0
        self.probes = 0
        self.refreshes = 0
        self.acquired = 0
        self.in_use = 0
        self.retired_below = 0
        self.generation = 0
        self.executed: list[tuple[str, str]] = []
        self.trimmable = 0  # idle connections trim_idle() reports closing (then 0)
        self.trims = 0
        self._opened = False
        self.closed = False
        self.may_connect: Callable[[], bool] = lambda: True

    # -- the script -----------------------------------------------------------------------

    def fail_next(self, exc: BaseException, *, sent: bool = True) -> None:
        """Make the next statement raise ``exc`` (recorded as executed when ``sent``)."""
        self.failures.append((exc, sent))

    # -- the Backend protocol -------------------------------------------------------------

    @property
    def opened(self) -> bool:
        return self._opened

    async def _connect(self) -> None:
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        if self.connect_outcomes:
            outcome = self.connect_outcomes.popleft()
            if outcome is not None:
                raise outcome
            return
        if self.permanent:
            raise FakePermanent("password authentication failed")
        if not self.up:
            raise ConnectionRefusedError("connection refused")

    async def open(self) -> None:
        self.opens += 1
        await self._connect()
        self._opened = True

    async def probe(self) -> None:
        self.probes += 1
        await self._connect()

    async def refresh(self) -> None:
        self.refreshes += 1
        self.generation += 1
        self.retired_below = self.generation

    async def close(self) -> None:
        self.closed = True
        self._opened = False

    def begin_statements(self, isolation: str | None, readonly: bool) -> tuple[str, ...]:
        return ("BEGIN",)

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        self.may_connect = may_connect

    def acquire(self, timeout: float | None) -> AbstractAsyncContextManager[Connection]:
        return self._acquire()

    @asynccontextmanager
    async def _acquire(self) -> AsyncIterator[Connection]:
        if not self.up:
            raise ConnectionRefusedError("connection refused")
        self.acquired += 1
        self.in_use += 1
        try:
            yield FakeConnection(self, self.generation)
        finally:
            self.in_use -= 1

    def raw(self, conn: Connection) -> Any:
        return conn

    def discard(self, conn: Connection) -> None:
        if isinstance(conn, FakeConnection):
            conn.closed = True

    def classify(self, exc: BaseException, conn: Connection | None = None) -> ErrorKind:
        if isinstance(exc, FakeRetryable):
            return ErrorKind.RETRYABLE
        if isinstance(exc, FakePermanent):
            return ErrorKind.PERMANENT
        if isinstance(exc, OSError | TimeoutError):
            return ErrorKind.CONNECTION
        if conn is not None and conn.is_closed():
            return ErrorKind.CONNECTION
        return ErrorKind.QUERY

    def classify_connect(self, exc: BaseException) -> ErrorKind:
        kind = self.classify(exc)
        return ErrorKind.CONNECTION if kind is ErrorKind.RETRYABLE else kind

    def unsent(self, exc: BaseException) -> bool:
        return isinstance(exc, FakeNotSent)

    async def trim_idle(self) -> int:
        self.trims += 1
        trimmed, self.trimmable = self.trimmable, 0
        return trimmed

    def stats(self) -> PoolStats:
        return PoolStats(self.in_use, 0, self.in_use, self.options.min_size, self.options.max_size)

    def in_transaction(self, conn: Connection) -> bool:
        return isinstance(conn, FakeConnection) and conn.in_tx

    def commit_applied(self, result: Any) -> bool:
        return True

    def write_refused(self, exc: BaseException) -> bool:
        return False


register("fake", FakeBackend)
