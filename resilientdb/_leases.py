"""Getting and giving back connections for the call engine, and the errors that end a call.

The part of the engine (``_engine.py``) that is the same whatever is being run: through the
gate to a connection, attempts that sent nothing made again within the deadline, a release
that never outlives the caller's deadline, and the final error that tells the truth
(``OutcomeUnknown`` once an attempt may have been applied).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._catalog import Catalog
from ._monitor import Monitor
from ._redact import describe
from ._states import State
from .backends.base import Connection, ErrorKind
from .errors import DatabaseUnavailable, OutcomeUnknown, ResilientDBError

if TYPE_CHECKING:
    from ._transaction import Transaction

__all__ = ["Attempts", "Leases", "deadline_after"]

_CONNECTED = State.CONNECTED


def deadline_after(timeout: float | None) -> float | None:
    """``loop.time()`` at which a call given ``timeout=`` seconds must have ended."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    if timeout == float("inf"):
        return None
    return asyncio.get_running_loop().time() + timeout


class Attempts:
    """What the failed attempts of one call have taught (created at its first failure)."""

    __slots__ = ("applied", "limit", "replays", "tries")

    def __init__(self, limit: float) -> None:
        self.tries = 1  # attempts so far
        self.replays = 0  # attempts that may have reached the server, made again
        self.limit = limit  # loop.time() after which nothing more is tried
        # The first error after which the call may have been applied; once set, every final
        # error is OutcomeUnknown.
        self.applied: BaseException | None = None


class Leases:
    """Connections and deadlines for one backend (the base of ``Engine``)."""

    __slots__ = ("_catalog", "_facts", "_joins", "backend", "gate", "monitor", "name", "options")

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        self.gate = monitor.gate
        self.backend = monitor.backend
        self._facts = monitor.backend.facts
        self.options = monitor.options
        self._catalog = Catalog()
        self.name = monitor.name
        # The transaction each task has open on this backend: calls made by that task join it.
        self._joins: contextvars.ContextVar[tuple[asyncio.Task[Any] | None, Transaction] | None]
        self._joins = contextvars.ContextVar(f"resilientdb-tx-{monitor.name}", default=None)

    # -- the transaction a task has open ---------------------------------------------------

    def joined(self) -> Transaction | None:
        """The transaction the current task has open on this backend, if any."""
        joined = self._joins.get()
        if joined is None or joined[0] is not asyncio.current_task():
            return None
        return joined[1]

    def join(self, tx: Transaction) -> contextvars.Token[Any]:
        """From now on, this task's calls on this backend run in ``tx``."""
        return self._joins.set((asyncio.current_task(), tx))

    def leave(self, token: contextvars.Token[Any]) -> None:
        """Undo ``join``; a token from another context (nothing to undo) is ignored."""
        with contextlib.suppress(ValueError):
            self._joins.reset(token)

    # -- connections ------------------------------------------------------------------------

    @asynccontextmanager
    async def lease(self, deadline: float | None) -> AsyncIterator[Any]:
        """The raw driver connection through the gate (``db.acquire()``). Nothing on it is
        replayed; a lost connection is reported and its error re-raised unchanged."""
        cm, conn, generation = await self.checkout(deadline)
        backend = self.backend
        try:
            yield backend.raw(conn)
        except BaseException as exc:
            lost = isinstance(exc, Exception) and (
                backend.classify(exc, conn) is ErrorKind.CONNECTION
            )
            if lost:
                self.monitor.report_lost(generation, exc, "acquire")
            if lost or not isinstance(exc, Exception):
                # Lost, or cancelled mid-use: its state is unknown. Closed now, given back in
                # the background: the caller never waits on the network to leave.
                backend.discard(conn)
                self.monitor.release_later(cm.__aexit__(type(exc), exc, exc.__traceback__))
            else:
                await cm.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            await cm.__aexit__(None, None, None)

    async def pass_gate(self, deadline: float | None, tried: Attempts | None) -> None:
        """Wait at the gate (the caller checked it is not open); its error ends the call."""
        try:
            await self.gate.wait(self.gate_deadline(deadline))
        except ResilientDBError as exc:
            raise self.final(exc, tried)  # noqa: B904 (the gate chained the cause)

    async def checkout(
        self, deadline: float | None
    ) -> tuple[AbstractAsyncContextManager[Any], Connection, int]:
        """A connection through the gate (for a transaction or ``acquire()``); attempts that
        sent nothing are made again within the deadline."""
        gate, backend = self.gate, self.backend
        tried: Attempts | None = None
        while True:
            if gate.state is not _CONNECTED:
                await self.pass_gate(deadline, tried)
            generation = self.monitor.generation
            try:
                cm = backend.acquire(self.bound(self.options.acquire_timeout, deadline))
                conn = await cm.__aenter__()
            except Exception as exc:
                tried = tried or self._attempts(deadline)
                self.acquire_failed(exc, generation, deadline, "acquire", tried)
                await self.pause("acquire", tried, exc)
                continue
            return cm, conn, generation

    def _within_budget(self, op: str, tried: Attempts, cause: BaseException) -> None:
        if tried.replays > self.options.max_replays:
            raise self.final(
                DatabaseUnavailable(
                    f"backend {self.name!r}: {op} still failing after "
                    f"{self.options.max_replays} replays: {describe(cause)}"
                ),
                tried,
                cause,
            )

    async def pause(self, op: str, tried: Attempts, cause: BaseException) -> None:
        """Before the next attempt: wait for the monitor's verdict, respect the deadline, back
        off after a lost race, and count the replay."""
        await self.monitor.settled(tried.limit)
        loop = asyncio.get_running_loop()
        if loop.time() >= tried.limit:
            raise self.final(
                DatabaseUnavailable(
                    f"backend {self.name!r}: {op} reached its deadline: {describe(cause)}"
                ),
                tried,
                cause,
            )
        self.monitor.replayed(op, tried.tries, cause)
        tried.tries += 1
        if self.backend.classify(cause) is ErrorKind.RETRYABLE:
            delay = self.options.backoff.delay(tried.replays)
            await asyncio.sleep(min(delay, max(tried.limit - loop.time(), 0.0)))

    def final(
        self,
        exc: BaseException,
        tried: Attempts | None,
        cause: BaseException | None = None,
    ) -> BaseException:
        """The error that ends a call: ``exc``, or OutcomeUnknown once an attempt may have
        been applied. ``cause`` (when ``exc`` is new) becomes its ``__cause__``."""
        if cause is not None and exc.__cause__ is None:
            exc.__cause__ = cause
        if tried is None or tried.applied is None or isinstance(exc, OutcomeUnknown):
            return exc
        self.monitor.count_outcome_unknown()
        unknown = OutcomeUnknown(
            f"backend {self.name!r}: an earlier attempt of this call may have been applied "
            f"before its connection was lost ({describe(tried.applied)}); the call then "
            f"ended with {describe(exc)}"
        )
        unknown.__cause__ = exc
        return unknown

    def unknown(self, op: str, exc: BaseException, why: str) -> OutcomeUnknown:
        """OutcomeUnknown for a call that may have been applied and cannot be replayed."""
        self.monitor.count_outcome_unknown()
        err = OutcomeUnknown(
            f"backend {self.name!r}: {op} failed after it may have reached the server, and "
            f"{why} ({describe(exc)}). Pass idempotent=True if running it twice is harmless."
        )
        err.__cause__ = exc
        return err

    def _attempts(self, deadline: float | None) -> Attempts:
        return Attempts(self.gate_deadline(deadline))

    def classify_sent(self, exc: Exception, conn: Connection) -> ErrorKind:
        """The kind of an error raised by a call on ``conn``; a lost one is discarded."""
        if isinstance(exc, TimeoutError):
            # Slow statement or half-open socket: either way this connection's state is
            # unknown (a reply may still arrive), so it never goes back to the pool.
            self.backend.discard(conn)
            return ErrorKind.CONNECTION
        kind = self.backend.classify(exc, conn)
        if kind is ErrorKind.CONNECTION:
            self.backend.discard(conn)
        return kind

    def acquire_failed(
        self, exc: Exception, generation: int, deadline: float | None, op: str, tried: Attempts
    ) -> None:
        """Nothing was sent: try again after the gate, unless the error is the caller's own."""
        monitor = self.monitor
        if isinstance(exc, TimeoutError):
            # The pool had no free connection in time, or opening one hung: let the monitor
            # check the server in the background; a busy pool is not an outage.
            monitor.report_suspect(generation, exc, op)
            if deadline is None or asyncio.get_running_loop().time() >= deadline:
                raise self.final(
                    DatabaseUnavailable(
                        f"backend {self.name!r}: no connection within the acquire timeout "
                        f"(pool exhausted or server unreachable)"
                    ),
                    tried,
                    exc,
                )
            return
        kind = self.backend.classify_connect(exc)
        if kind is ErrorKind.PERMANENT:
            # Opening connections fails the same way each time (credentials, a broken
            # on_connect hook): count it, so that a hook bug does not spin until the deadline.
            tried.replays += 1
            self._within_budget(op, tried, exc)
        if kind is ErrorKind.CONNECTION or kind is ErrorKind.PERMANENT:
            # The gate now shows the monitor's verdict: RECONNECTING waits, FAILED fails fast.
            monitor.report_lost(generation, exc, op)
            return
        raise self.final(exc, tried)

    async def release(
        self,
        cm: AbstractAsyncContextManager[Any],
        generation: int,
        op: str,
        deadline: float | None,
    ) -> None:
        """Give the connection back after a success; the result stands whatever happens."""
        try:
            if deadline is None:
                await cm.__aexit__(None, None, None)
                return
            bound = asyncio.timeout_at(deadline)
            try:
                async with bound:
                    await cm.__aexit__(None, None, None)
            except TimeoutError:
                if bound.expired():
                    return  # the call's deadline: the adapter finishes the release itself
                raise
        except Exception as exc:
            # Only giving the connection back failed: replaying could apply a write twice.
            kind = self.backend.classify(exc)
            if kind is ErrorKind.CONNECTION or isinstance(exc, TimeoutError):
                self.monitor.report_lost(generation, exc, f"{op} (release)")

    async def release_after_failure(
        self, cm: AbstractAsyncContextManager[Any], exc: BaseException, deadline: float | None
    ) -> None:
        """Give the connection back after an error, in the background past the deadline."""
        task = self.monitor.release_later(cm.__aexit__(type(exc), exc, exc.__traceback__))
        if isinstance(exc, TimeoutError):
            return  # the driver may wait for its cancel request: never the caller
        remaining = None
        if deadline is not None:
            remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
        await asyncio.wait({task}, timeout=remaining)

    def gate_deadline(self, deadline: float | None) -> float:
        if deadline is not None:
            return deadline
        return asyncio.get_running_loop().time() + self.options.gate_timeout

    @staticmethod
    def bound(limit: float | None, deadline: float | None) -> float | None:
        """``limit`` seconds, cut to what is left before ``deadline``."""
        if deadline is None:
            return limit
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        return remaining if limit is None else min(limit, remaining)
