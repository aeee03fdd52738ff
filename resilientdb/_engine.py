"""The call engine: one statement through the gate, replayed only when that is safe.

The hot path (state CONNECTED, no failure) is: one state check, the pool's acquire, the
driver's call, the release. No lock, no extra await, no clock read unless the call passed
``timeout=``. Everything else runs only after an exception.

The replay rules (docs/design.md, "When an operation is replayed"):

* an attempt that provably sent nothing (acquire failed, the driver's closed check) is made
  again, bounded only by the call's deadline (``gate_timeout`` when it has none);
* a lost connection after the request may have been sent: replayed when the caller said
  ``idempotent=True``, or when the text is read-only (``_replay.verdict``) and every function
  it calls is harmless (PostgreSQL asks its catalog, ``_catalog``); such a replay runs inside
  a read-only transaction where the backend has one, so a write the text did not show is
  refused; otherwise ``OutcomeUnknown``;
* a deadlock, serialization failure or lock wait timeout rolled back one statement: only a
  single statement is replayed, never a batch, a multi-statement text or ``idempotent=False``
  (an earlier part may have committed: ``OutcomeUnknown``, unless nothing could have);
* replays that may have reached the server are bounded by ``max_replays``;
* the final error tells the truth: once an attempt may have been applied, whatever ends the
  call afterwards is raised as ``OutcomeUnknown`` (the error chained).

A connection lost by one caller starts a check of the server (``Monitor.report_lost``); a
caller about to replay waits for its verdict first, so that during an outage only the
monitor's probe knocks on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AbstractAsyncContextManager
from typing import Any

from ._catalog import Catalog, operators_harmless
from ._monitor import Monitor
from ._redact import describe
from ._replay import Verdict, verdict
from ._states import State
from .backends.base import Connection, ErrorKind
from .errors import DatabaseUnavailable, OutcomeUnknown, ResilientDBError

__all__ = ["Engine", "deadline_after"]

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


class _Attempts:
    """What the failed attempts of one call have taught (created at its first failure)."""

    __slots__ = ("applied", "limit", "replays", "tries")

    def __init__(self, limit: float) -> None:
        self.tries = 1  # attempts so far
        self.replays = 0  # attempts that may have reached the server, made again
        self.limit = limit  # loop.time() after which nothing more is tried
        # The first error after which the call may have been applied; once set, every final
        # error is OutcomeUnknown.
        self.applied: BaseException | None = None


class Engine:
    """Runs calls for one backend (the Database's machinery)."""

    __slots__ = ("_backend", "_catalog", "_facts", "_gate", "_monitor", "_options", "name")

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor
        self._gate = monitor.gate
        self._backend = monitor.backend
        self._facts = monitor.backend.facts
        self._options = monitor.options
        self._catalog = Catalog()
        self.name = monitor.name

    async def run(
        self,
        op: str,
        query: str,
        args: tuple[Any, ...],
        timeout: float | None,
        idempotent: bool | None,
        column: int = 0,
        batch: bool = False,
    ) -> Any:
        """Run ``op`` (a Connection method) with the replay rules; see the module docstring."""
        opts, gate, backend = self._options, self._gate, self._backend
        deadline = None if timeout is None else deadline_after(timeout)
        tried: _Attempts | None = None
        guard = False  # the next attempt runs read-only (a replay judged by its text)
        while True:
            if gate.state is not _CONNECTED:
                try:
                    await gate.wait(self._gate_deadline(deadline))
                except ResilientDBError as exc:
                    raise self.final(exc, tried)  # noqa: B904 (the gate chained the cause)
            generation = self._monitor.generation
            acquire_timeout: float | None
            command_timeout: float | None
            if deadline is None:
                # None: the adapter applies the configured command_timeout itself.
                acquire_timeout, command_timeout = opts.acquire_timeout, None
            else:
                acquire_timeout = self.bound(opts.acquire_timeout, deadline)
                command_timeout = self.bound(opts.command_timeout, deadline)
            try:
                cm = backend.acquire(acquire_timeout)
                conn = await cm.__aenter__()
            except Exception as exc:
                tried = tried or self._attempts(deadline)
                self.acquire_failed(exc, generation, deadline, op, tried)
                await self.pause(op, tried, exc)
                continue
            try:
                if guard:
                    result = await self._guarded(conn, op, query, args, column, deadline)
                elif column:
                    result = await conn.fetchval(
                        query, *args, column=column, timeout=command_timeout
                    )
                else:
                    result = await getattr(conn, op)(query, *args, timeout=command_timeout)
            except Exception as exc:
                # Classified before release, while the closed flag of `conn` is readable.
                kind = self.classify_sent(exc, conn)
                await self.release_after_failure(cm, exc, deadline)
                tried = tried or self._attempts(deadline)
                guard = await self._decide(
                    exc, kind, generation, op, query, idempotent, batch, guard, tried, deadline
                )
                await self.pause(op, tried, exc)
                continue
            except BaseException as exc:
                # Cancelled: the connection goes back in the background, where the driver
                # finishes the statement's cancellation and resets it (or closes it, past the
                # release bound): the caller never waits on the network (a cancel request
                # through a partition) to leave.
                self._monitor.release_later(cm.__aexit__(type(exc), exc, exc.__traceback__))
                raise
            await self.release(cm, generation, op, deadline)
            return result

    async def checkout(
        self, deadline: float | None
    ) -> tuple[AbstractAsyncContextManager[Any], Connection, int]:
        """A connection through the gate (for a transaction or ``acquire()``); attempts that
        sent nothing are made again within the deadline."""
        gate, backend = self._gate, self._backend
        tried: _Attempts | None = None
        while True:
            if gate.state is not _CONNECTED:
                try:
                    await gate.wait(self._gate_deadline(deadline))
                except ResilientDBError as exc:
                    raise self.final(exc, tried)  # noqa: B904 (the gate chained the cause)
            generation = self._monitor.generation
            try:
                cm = backend.acquire(self.bound(self._options.acquire_timeout, deadline))
                conn = await cm.__aenter__()
            except Exception as exc:
                tried = tried or self._attempts(deadline)
                self.acquire_failed(exc, generation, deadline, "acquire", tried)
                await self.pause("acquire", tried, exc)
                continue
            return cm, conn, generation

    # -- deciding after a failure ----------------------------------------------------------

    async def _decide(
        self,
        exc: Exception,
        kind: ErrorKind,
        generation: int,
        op: str,
        query: str,
        idempotent: bool | None,
        batch: bool,
        guarded: bool,
        tried: _Attempts,
        deadline: float | None,
    ) -> bool:
        """Raise the call's final error, or return whether the replay runs read-only."""
        if guarded and self._backend.write_refused(exc):
            # The statement tried to write when replayed read-only: its first run may have.
            raise self.unknown(op, exc, "it wrote when replayed read-only")
        if kind is ErrorKind.RETRYABLE:
            return self._after_lost_race(exc, op, query, idempotent, batch, tried)
        if kind is not ErrorKind.CONNECTION:
            if not self._atomic(query, batch):
                # A later statement (or row) failed: the earlier ones stay committed.
                raise self.unknown(op, exc, "an earlier part of it may have committed")
            raise self.final(exc, tried)  # the statement's own error, after one attempt
        monitor = self._monitor
        if isinstance(exc, TimeoutError):
            monitor.report_suspect(generation, exc, op)
        else:
            monitor.report_lost(generation, exc, op)
        if self._backend.unsent(exc):
            return guarded  # nothing was sent: bounded by the deadline only
        tried.replays += 1
        v = None if batch else verdict(query, self._facts.family)
        if idempotent is True:
            if v is None or not v.read_only or v.lookup:
                tried.applied = tried.applied or exc
            self._within_budget(op, tried, exc)
            return False
        if idempotent is False or v is None or not v.read_only:
            raise self.unknown(op, exc, "it is not known to be safe to replay")
        if not await self._harmless(v, deadline):
            raise self.unknown(op, exc, "it calls a function that may write")
        self._within_budget(op, tried, exc)
        return self._facts.readonly_guard is not None and not v.locks

    def _after_lost_race(
        self,
        exc: Exception,
        op: str,
        query: str,
        idempotent: bool | None,
        batch: bool,
        tried: _Attempts,
    ) -> bool:
        """A deadlock, serialization failure or lock wait timeout rolled back the failing
        statement only: replay a single statement, else say what may have been applied."""
        v = None if batch else verdict(query, self._facts.family)
        if v is not None and v.single and idempotent is not False:
            tried.replays += 1
            self._within_budget(op, tried, exc)
            return False
        if self._atomic(query, batch):
            raise self.final(exc, tried)  # nothing of it was applied: the driver's error
        raise self.unknown(op, exc, "part of it may have committed before the failure")

    def _atomic(self, query: str, batch: bool) -> bool:
        """Whether a failure of the whole call leaves nothing of it applied."""
        if batch:
            return self._facts.atomic_batch
        v = verdict(query, self._facts.family)
        return v.atomic or (v.read_only and not v.lookup)

    async def _harmless(self, v: Verdict, deadline: float | None) -> bool:
        """Whether the functions and operators of a read-only text are harmless."""
        catalog = self._catalog
        known = catalog.known(self._monitor.generation, v.lookup)
        if known is None:
            looked = await self._look_up(v.lookup, deadline)
            if looked is None:
                return False
            harmless, volatile = looked
            catalog.remember(self._monitor.generation, v.lookup, harmless, volatile)
            return v.lookup <= harmless and operators_harmless(v.operators, volatile)
        found, cached_ops = known
        return all(found.values()) and operators_harmless(v.operators, cached_ops)

    async def _look_up(
        self, names: frozenset[str], deadline: float | None
    ) -> tuple[frozenset[str], frozenset[str]] | None:
        """Ask the server's catalog, through the gate, within the deadline; None: no answer."""
        lookup = getattr(self._backend, "harmless_functions", None)
        if lookup is None:
            return None
        limit = self._gate_deadline(deadline)
        try:
            async with asyncio.timeout_at(limit):
                await self._monitor.settled(limit)
                await self._gate.wait(limit)
                cm = self._backend.acquire(self.bound(self._options.acquire_timeout, limit))
                conn = await cm.__aenter__()
                try:
                    answer: tuple[frozenset[str], frozenset[str]] = await lookup(conn, names)
                finally:
                    self._monitor.release_later(cm.__aexit__(None, None, None))
                return answer
        except Exception:
            return None

    async def _guarded(
        self,
        conn: Connection,
        op: str,
        query: str,
        args: tuple[Any, ...],
        column: int,
        deadline: float | None,
    ) -> Any:
        """Run the call inside the backend's read-only transaction."""
        guard = self._facts.readonly_guard
        assert guard is not None
        begin, end = guard
        bound = self.bound(self._options.command_timeout, deadline)
        await conn.execute(begin, timeout=bound)
        try:
            if column:
                result = await conn.fetchval(query, *args, column=column, timeout=bound)
            else:
                result = await getattr(conn, op)(query, *args, timeout=bound)
        except Exception:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK", timeout=bound)
            raise
        await conn.execute(end, timeout=self.bound(self._options.command_timeout, deadline))
        return result

    def _within_budget(self, op: str, tried: _Attempts, cause: BaseException) -> None:
        if tried.replays > self._options.max_replays:
            raise self.final(
                DatabaseUnavailable(
                    f"backend {self.name!r}: {op} still failing after "
                    f"{self._options.max_replays} replays: {describe(cause)}"
                ),
                tried,
                cause,
            )

    async def pause(self, op: str, tried: _Attempts, cause: BaseException) -> None:
        """Before the next attempt: wait for the monitor's verdict, respect the deadline, back
        off after a lost race, and count the replay."""
        await self._monitor.settled(tried.limit)
        loop = asyncio.get_running_loop()
        if loop.time() >= tried.limit:
            raise self.final(
                DatabaseUnavailable(
                    f"backend {self.name!r}: {op} reached its deadline: {describe(cause)}"
                ),
                tried,
                cause,
            )
        self._monitor.replayed(op, tried.tries, cause)
        tried.tries += 1
        if self._backend.classify(cause) is ErrorKind.RETRYABLE:
            delay = self._options.backoff.delay(tried.replays)
            await asyncio.sleep(min(delay, max(tried.limit - loop.time(), 0.0)))

    # -- errors ------------------------------------------------------------------------------

    def final(
        self,
        exc: BaseException,
        tried: _Attempts | None,
        cause: BaseException | None = None,
    ) -> BaseException:
        """The error that ends a call: ``exc``, or OutcomeUnknown once an attempt may have
        been applied. ``cause`` (when ``exc`` is new) becomes its ``__cause__``."""
        if cause is not None and exc.__cause__ is None:
            exc.__cause__ = cause
        if tried is None or tried.applied is None or isinstance(exc, OutcomeUnknown):
            return exc
        self._monitor.outcome_unknown += 1
        unknown = OutcomeUnknown(
            f"backend {self.name!r}: an earlier attempt of this call may have been applied "
            f"before its connection was lost ({describe(tried.applied)}); the call then "
            f"ended with {describe(exc)}"
        )
        unknown.__cause__ = exc
        return unknown

    def unknown(self, op: str, exc: BaseException, why: str) -> OutcomeUnknown:
        """OutcomeUnknown for a call that may have been applied and cannot be replayed."""
        self._monitor.outcome_unknown += 1
        err = OutcomeUnknown(
            f"backend {self.name!r}: {op} failed after it may have reached the server, and "
            f"{why} ({describe(exc)}). Pass idempotent=True if running it twice is harmless."
        )
        err.__cause__ = exc
        return err

    def _attempts(self, deadline: float | None) -> _Attempts:
        return _Attempts(self._gate_deadline(deadline))

    # -- connections -------------------------------------------------------------------------

    def classify_sent(self, exc: Exception, conn: Connection) -> ErrorKind:
        """The kind of an error raised by a call on ``conn``; a lost one is discarded."""
        if isinstance(exc, TimeoutError):
            # Slow statement or half-open socket: either way this connection's state is
            # unknown (a reply may still arrive), so it never goes back to the pool.
            self._backend.discard(conn)
            return ErrorKind.CONNECTION
        kind = self._backend.classify(exc, conn)
        if kind is ErrorKind.CONNECTION:
            self._backend.discard(conn)
        return kind

    def acquire_failed(
        self, exc: Exception, generation: int, deadline: float | None, op: str, tried: _Attempts
    ) -> None:
        """Nothing was sent: try again after the gate, unless the error is the caller's own."""
        monitor = self._monitor
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
        kind = self._backend.classify_connect(exc)
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
            kind = self._backend.classify(exc)
            if kind is ErrorKind.CONNECTION or isinstance(exc, TimeoutError):
                self._monitor.report_lost(generation, exc, f"{op} (release)")

    async def release_after_failure(
        self, cm: AbstractAsyncContextManager[Any], exc: BaseException, deadline: float | None
    ) -> None:
        """Give the connection back after an error, in the background past the deadline."""
        task = self._monitor.release_later(cm.__aexit__(type(exc), exc, exc.__traceback__))
        if isinstance(exc, TimeoutError):
            return  # the driver may wait for its cancel request: never the caller
        remaining = None
        if deadline is not None:
            remaining = max(deadline - asyncio.get_running_loop().time(), 0.0)
        await asyncio.wait({task}, timeout=remaining)

    def _gate_deadline(self, deadline: float | None) -> float:
        if deadline is not None:
            return deadline
        return asyncio.get_running_loop().time() + self._options.gate_timeout

    @staticmethod
    def bound(limit: float | None, deadline: float | None) -> float | None:
        """``limit`` seconds, cut to what is left before ``deadline``."""
        if deadline is None:
            return limit
        remaining = max(deadline - asyncio.get_running_loop().time(), 0.001)
        return remaining if limit is None else min(limit, remaining)
