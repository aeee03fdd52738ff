"""Database: the calls a service makes, each through the gate, replayed only when safe.

The hot path (state CONNECTED, no failure) is: one state check, the pool's acquire, the
driver's call. No lock, no extra await, no clock read unless the call passed ``timeout=``.
Everything else (classification, reports to the monitor, replay decisions) runs only after
an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar

from . import _transaction as _tx
from ._monitor import Monitor
from ._redact import describe
from ._replay import may_replay
from ._states import State
from ._transaction import Transaction
from .backends.base import Connection, ErrorKind
from .errors import DatabaseUnavailable, OutcomeUnknown
from .health import HealthReport
from .health import check as check_health

T = TypeVar("T")

__all__ = ["Database"]

_CONNECTED = State.CONNECTED


class Database:
    """One backend as the application sees it: ``supervisor.db`` or ``supervisor[name]``.

    Every method takes ``timeout=`` (seconds for the whole call: waiting at the gate, acquiring,
    running, replaying) and the query methods take ``idempotent=``: ``True`` allows replaying
    a write whose outcome is unknown, ``False`` forbids replaying even a SELECT that may have
    run, ``None`` (default) decides by the statement's leading keyword. SQL goes to the driver
    untouched, in its own paramstyle.
    """

    __slots__ = ("_backend", "_gate", "_monitor", "_options", "name")

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._gate = monitor.gate
        self._backend = monitor.backend
        self._options = monitor.options
        self.name = monitor.name

    def __repr__(self) -> str:
        return f"<Database {self.name!r} {self._backend.dsn} {self.state.value}>"

    @property
    def state(self) -> State:
        """This backend's state."""
        return self._gate.state

    # -- queries ------------------------------------------------------------------------------

    async def fetch(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool | None = None
    ) -> list[Any]:
        """All rows of ``query``: a list of rows (``row[0]``, ``row["name"]``, ``dict(row)``)."""
        result: list[Any] = await self._run("fetch", query, args, timeout, idempotent)
        return result

    async def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool | None = None
    ) -> Any:
        """The first row of ``query``, or ``None``."""
        return await self._run("fetchrow", query, args, timeout, idempotent)

    async def fetchval(
        self,
        query: str,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """One value of the first row (``column`` picks which), or ``None`` without rows."""
        return await self._run("fetchval", query, args, timeout, idempotent, column)

    async def execute(
        self, query: str, *args: Any, timeout: float | None = None, idempotent: bool | None = None
    ) -> Any:
        """Run a statement; returns the driver's status (asyncpg: the command tag)."""
        return await self._run("execute", query, args, timeout, idempotent)

    async def executemany(
        self,
        command: str,
        args: Sequence[Sequence[Any]],
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> Any:
        """Run ``command`` once per argument tuple.

        Replayed only when nothing was sent, or when ``idempotent=True``: a batch that fails
        midway may have applied part of its rows.
        """
        # sql=None for the replay rule: a batch is never judged read-only by its keyword.
        return await self._run("executemany", command, (args,), timeout, idempotent, batch=True)

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:
        """The raw driver connection, through the gate: the escape hatch.

        Nothing done on it is replayed; a connection error raised inside the block is
        reported to the supervisor (which reconnects) and re-raised unchanged.
        """
        cm, conn, generation = await self._checkout(timeout)
        try:
            yield self._backend.raw(conn)
        except BaseException as exc:
            if isinstance(exc, Exception) and (
                self._backend.classify(exc, conn) is ErrorKind.CONNECTION
            ):
                self._monitor.report_lost(generation, exc, "acquire")
            # Shielded: the connection must go back to the pool even if we are cancelled.
            await asyncio.shield(cm.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        else:
            await asyncio.shield(cm.__aexit__(None, None, None))

    def transaction(
        self,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        timeout: float | None = None,
    ) -> AbstractAsyncContextManager[Transaction]:
        """``async with db.transaction() as tx:`` runs ``tx.fetch`` / ``execute`` / ... on one
        connection, committed when the block ends, rolled back if it raises.

        Nothing inside is replayed: a lost connection raises ``TransactionLost`` (the server
        rolled back), a connection lost during COMMIT raises ``OutcomeUnknown``.
        ``isolation`` is ``"read_committed"``, ``"repeatable_read"``, ``"serializable"`` or
        ``"read_uncommitted"`` where the backend has them; ``readonly`` opens a read-only
        transaction; ``timeout`` bounds getting a connection. ``tx.transaction()`` nests a
        savepoint.
        """
        return _tx.transaction(self, isolation=isolation, readonly=readonly, timeout=timeout)

    async def run_in_transaction(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retries: int = 3,
        idempotent: bool = False,
        timeout: float | None = None,
        isolation: str | None = None,
        readonly: bool = False,
    ) -> T:
        """``await fn(tx, *args)`` in a transaction, re-run whole when that is safe.

        Re-run, with backoff, up to ``retries`` times: when the connection was lost before
        COMMIT was sent, and on serialization failures and deadlocks. A connection lost during
        COMMIT raises ``OutcomeUnknown`` unless ``idempotent=True``. When retries run out the
        last error is raised. ``fn`` may run more than once: keep side effects outside the
        database (emails, queues) out of it.
        """
        return await _tx.run_in_transaction(
            self,
            fn,
            args,
            retries=retries,
            idempotent=idempotent,
            timeout=timeout,
            isolation=isolation,
            readonly=readonly,
        )

    # -- the engine ---------------------------------------------------------------------------

    async def _checkout(
        self, timeout: float | None
    ) -> tuple[AbstractAsyncContextManager[Connection], Connection, int]:
        """A connection through the gate; acquisition (nothing sent yet) is retried."""
        deadline = _deadline(timeout)
        attempts = 0
        while True:
            await self._gate.wait(self._gate_deadline(deadline))
            generation = self._monitor.generation
            try:
                cm = self._backend.acquire(self._bound(self._options.acquire_timeout, deadline))
                conn = await cm.__aenter__()
            except Exception as exc:
                await self._acquire_failed(exc, generation, deadline, "acquire")
                attempts += 1
                if attempts > self._options.max_replays:
                    raise DatabaseUnavailable(
                        f"backend {self.name!r}: no connection after {attempts} attempts: "
                        f"{describe(exc)}"
                    ) from exc
                continue
            return cm, conn, generation

    async def _run(
        self,
        op: str,
        query: str,
        args: tuple[Any, ...],
        timeout: float | None,
        idempotent: bool | None,
        column: int = 0,
        batch: bool = False,
    ) -> Any:
        opts = self._options
        deadline = None if timeout is None else _deadline(timeout)
        replays = 0
        while True:
            if self._gate.state is not _CONNECTED:
                await self._gate.wait(self._gate_deadline(deadline))
            generation = self._monitor.generation
            acquire_timeout: float | None
            command_timeout: float | None
            if deadline is None:
                # None: the adapter applies the configured command_timeout itself.
                acquire_timeout, command_timeout = opts.acquire_timeout, None
            else:
                acquire_timeout = self._bound(opts.acquire_timeout, deadline)
                command_timeout = self._bound(opts.command_timeout, deadline)
            kind: ErrorKind | None = None
            try:
                cm = self._backend.acquire(acquire_timeout)
                conn = await cm.__aenter__()
            except Exception as exc:
                await self._acquire_failed(exc, generation, deadline, op)
                cause: Exception = exc
            else:
                try:
                    if column:
                        result = await conn.fetchval(
                            query, *args, column=column, timeout=command_timeout
                        )
                    else:
                        result = await getattr(conn, op)(query, *args, timeout=command_timeout)
                except Exception as exc:
                    # Classified before release, while the closed flag of `conn` is readable.
                    kind = self._classify_sent(exc, conn)
                    await self._release_after_failure(cm, exc)
                    self._sent_failed(exc, kind, generation, op, query, idempotent, batch)
                    cause = exc
                except BaseException as exc:  # cancelled: give the connection back, shielded
                    await asyncio.shield(cm.__aexit__(type(exc), exc, exc.__traceback__))
                    raise
                else:
                    try:
                        await cm.__aexit__(None, None, None)
                    except Exception as exc:
                        # Only giving the connection back failed. The result stands:
                        # replaying here could apply a write twice.
                        self._release_failed(exc, generation, op)
                    return result
            replays += 1
            self._before_replay(op, replays, deadline, cause)
            if kind is ErrorKind.RETRYABLE:
                await asyncio.sleep(opts.backoff.delay(replays))

    def _classify_sent(self, exc: Exception, conn: Connection) -> ErrorKind:
        if isinstance(exc, TimeoutError):
            # Slow statement or half-open socket: either way this connection's state is
            # unknown (a reply may still arrive), so it never goes back to the pool.
            self._backend.discard(conn)
            return ErrorKind.CONNECTION
        kind = self._backend.classify(exc, conn)
        if kind is ErrorKind.CONNECTION:
            self._backend.discard(conn)
        return kind

    async def _release_after_failure(
        self, cm: AbstractAsyncContextManager[Any], exc: Exception
    ) -> None:
        release = cm.__aexit__(type(exc), exc, exc.__traceback__)
        if isinstance(exc, TimeoutError):
            # After a timeout the driver may wait for its cancel request before releasing
            # (asyncpg does); through a partition that outlasts the caller's deadline.
            self._monitor.release_later(release)
            return
        # The failure being handled is the one that matters to the caller, not this one.
        with contextlib.suppress(Exception):
            await asyncio.shield(release)

    def _release_failed(self, exc: Exception, generation: int, op: str) -> None:
        kind = self._backend.classify(exc)
        if kind is ErrorKind.CONNECTION or isinstance(exc, TimeoutError):
            self._monitor.report_lost(generation, exc, f"{op} (release)")

    async def _acquire_failed(
        self, exc: Exception, generation: int, deadline: float | None, op: str
    ) -> None:
        """Nothing was sent: replay after the gate, unless the error is the caller's own."""
        if isinstance(exc, TimeoutError):
            # The pool had no free connection in time, or opening one hung: let the monitor
            # check the server in the background; a busy pool is not an outage.
            self._monitor.report_suspect(generation, exc, op)
            if deadline is None or asyncio.get_running_loop().time() >= deadline:
                raise DatabaseUnavailable(
                    f"backend {self.name!r}: no connection within the acquire timeout "
                    f"(pool exhausted or server unreachable)"
                ) from exc
            return
        kind = self._backend.classify_connect(exc)
        if kind is ErrorKind.CONNECTION or kind is ErrorKind.PERMANENT:
            # The gate now shows the monitor's verdict: RECONNECTING waits, FAILED fails fast.
            self._monitor.report_lost(generation, exc, op)
            return
        raise exc

    def _sent_failed(
        self,
        exc: Exception,
        kind: ErrorKind,
        generation: int,
        op: str,
        query: str,
        idempotent: bool | None,
        batch: bool,
    ) -> None:
        """The request may have reached the server: replay only what rule 1 or 2 allows."""
        if kind is ErrorKind.RETRYABLE:
            return  # a deadlock or serialization failure rolled the statement back: replay
        if kind is not ErrorKind.CONNECTION:
            raise exc  # query errors reach the caller unchanged, after exactly one attempt
        monitor = self._monitor
        if isinstance(exc, TimeoutError):
            monitor.report_suspect(generation, exc, op)
        else:
            monitor.report_lost(generation, exc, op)
        unsent = self._backend.unsent(exc)
        if may_replay(unsent=unsent, sql=None if batch else query, idempotent=idempotent):
            return
        monitor.outcome_unknown += 1
        raise OutcomeUnknown(
            f"backend {self.name!r}: {op} failed after it may have reached the server, and it "
            f"is not known to be safe to replay ({describe(exc)}). Pass idempotent=True if "
            f"running it twice is harmless."
        ) from exc

    def _before_replay(
        self, op: str, replays: int, deadline: float | None, cause: Exception
    ) -> None:
        if replays > self._options.max_replays:
            raise DatabaseUnavailable(
                f"backend {self.name!r}: {op} still failing after "
                f"{self._options.max_replays} replays: {describe(cause)}"
            ) from cause
        if deadline is not None and asyncio.get_running_loop().time() >= deadline:
            raise DatabaseUnavailable(
                f"backend {self.name!r}: {op} reached its deadline: {describe(cause)}"
            ) from cause
        self._monitor.replayed(op, replays, cause)

    async def health(self, timeout: float | None = None) -> HealthReport:
        """This backend's :class:`HealthReport` (see ``Supervisor.health``); never raises for
        a database problem, never takes longer than ``timeout`` (default ``health_timeout``)."""
        return await check_health([self._monitor], timeout)

    # -- deadlines ----------------------------------------------------------------------------

    def _gate_deadline(self, deadline: float | None) -> float:
        if deadline is not None:
            return deadline
        return asyncio.get_running_loop().time() + self._options.gate_timeout

    @staticmethod
    def _bound(limit: float | None, deadline: float | None) -> float | None:
        if deadline is None:
            return limit
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        return remaining if limit is None else min(limit, remaining)


def _deadline(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    return asyncio.get_running_loop().time() + timeout
