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
from typing import Any

from ._catalog import operators_harmless
from ._leases import Attempts, Leases, deadline_after
from ._replay import Verdict, opens_first, reads_after_opening, verdict
from ._states import State
from .backends.base import Connection, ErrorKind
from .errors import OutcomeUnknown, TransactionRolledBack

__all__ = ["Engine", "deadline_after"]

_CONNECTED = State.CONNECTED


class Engine(Leases):
    """Runs calls for one backend (the Database's machinery)."""

    __slots__ = ()

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
        gate, backend = self.gate, self.backend
        deadline = None if timeout is None else deadline_after(timeout)
        tried: Attempts | None = None
        guard = False  # the next attempt runs read-only (a replay judged by its text)
        while True:
            if gate.state is not _CONNECTED:
                await self.pass_gate(deadline, tried)
            generation = self.monitor.generation
            acquire_timeout, command_timeout = self.timeouts(deadline)
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
                try:
                    refused = kind is ErrorKind.QUERY and not guard
                    moved = refused and await self._moved_by(exc, conn, deadline)
                except BaseException as cut:  # cancelled while asking the node its role
                    self.monitor.release_later(cm.__aexit__(type(cut), cut, cut.__traceback__))
                    raise
                await self.release_after_failure(cm, exc, deadline)
                tried = tried or self._attempts(deadline)
                if moved:
                    # The node refused the write for its role, so nothing was applied; the
                    # pool has been retired and the check finds the node the DSN asks for.
                    self.monitor.report_lost(generation, exc, op)
                    if not self._atomic(query, batch):
                        why = "an earlier part of it may have committed"
                        raise self.unknown(op, exc, why) from exc
                    await self.pause(op, tried, exc)
                    continue
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
                self.monitor.release_later(cm.__aexit__(type(exc), exc, exc.__traceback__))
                raise
            if backend.in_transaction(conn):
                await self._left_open(cm, conn, generation, op, query, deadline)
                return result  # it opened a transaction and only read in it: nothing lost
            await self.release(cm, generation, op, deadline)
            return result

    def timeouts(self, deadline: float | None) -> tuple[float | None, float | None]:
        """``(acquire_timeout, command_timeout)`` for one attempt, cut to the deadline; a
        command timeout of None lets the adapter apply the configured one itself."""
        opts = self.options
        if deadline is None:
            return opts.acquire_timeout, None
        return self.bound(opts.acquire_timeout, deadline), self.bound(
            opts.command_timeout, deadline
        )

    async def _moved_by(self, exc: Exception, conn: Connection, deadline: float | None) -> bool:
        """``moved`` within the call's deadline: a node that does not answer the role question
        in time leaves the refusal unconfirmed, and the caller gets the server's answer."""
        if deadline is None:
            return await self.moved(exc, conn)
        try:
            async with asyncio.timeout_at(deadline):
                return await self.moved(exc, conn)
        except TimeoutError:
            return False

    async def moved(self, exc: Exception, conn: Connection, in_transaction: bool = False) -> bool:
        """A write refused because the node is no longer the one the DSN asks for (a primary
        fenced read-only or demoted to standby; ``target_session_attrs``), confirmed by asking
        the node: then ``conn`` is discarded and the pool retired."""
        check = getattr(self.backend, "wrong_node", None)
        if check is None or not await check(exc, conn, in_transaction):
            return False
        self.backend.discard(conn)
        with contextlib.suppress(Exception):
            await self.backend.refresh()  # the other connections lead to the same node
        return True

    async def _left_open(
        self,
        cm: Any,
        conn: Connection,
        generation: int,
        op: str,
        query: str,
        deadline: float | None,
    ) -> None:
        """The text opened a transaction and left it open (``BEGIN; INSERT ...``, MySQL's
        ``SET autocommit = 0``): what it did after that is uncommitted, and giving the
        connection back rolls it back. Success would report a write that never lands: roll
        back now and raise what that means. Returns (the call succeeds) only when the text did
        nothing but open the transaction and read."""
        try:
            await conn.execute(
                "ROLLBACK", timeout=self.bound(self.options.command_timeout, deadline)
            )
        except Exception:
            self.backend.discard(conn)  # the server rolls back when the connection closes
        await self.release(cm, generation, op, deadline)
        advice = "use db.transaction() to run several statements in one transaction"
        family = self.backend.facts.family
        if opens_first(query, family) and reads_after_opening(query, family):
            return  # a lone BEGIN, or BEGIN and reads: rolling back lost nothing
        if opens_first(query, family):
            raise TransactionRolledBack(
                f"backend {self.name!r}: the statement text opened a transaction and left it "
                f"open; resilientdb rolled it back and nothing of it was written ({advice})"
            )
        self.monitor.count_outcome_unknown()
        raise OutcomeUnknown(
            f"backend {self.name!r}: the statement text left a transaction open; resilientdb "
            f"sent ROLLBACK for it (a prepared XA transaction outlives that: see XA RECOVER), "
            f"but what ran before the transaction opened may have been committed ({advice})"
        )

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
        tried: Attempts,
        deadline: float | None,
    ) -> bool:
        """Raise the call's final error, or return whether the replay runs read-only."""
        if guarded and self.backend.write_refused(exc):
            # The statement tried to write when replayed read-only: its first run may have.
            raise self.unknown(op, exc, "it wrote when replayed read-only")
        if kind is ErrorKind.RETRYABLE:
            return self._after_lost_race(exc, op, query, idempotent, batch, tried)
        if kind is not ErrorKind.CONNECTION:
            if not self._atomic(query, batch):
                # A later statement (or row) failed: the earlier ones stay committed.
                raise self.unknown(op, exc, "an earlier part of it may have committed")
            # The statement's own error, after one attempt (explained where the adapter can).
            explain = getattr(self.backend, "explain", None)
            raise self.final(exc if explain is None else explain(exc), tried)
        monitor = self.monitor
        if isinstance(exc, TimeoutError):
            monitor.report_suspect(generation, exc, op)
        else:
            monitor.report_lost(generation, exc, op)
        if self.backend.unsent(exc):
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
        guard = self._facts.readonly_guard is not None
        if guard and v.locks:
            # A locking read cannot run in a read-only transaction, the net that refuses a
            # write the text does not show (a view, a function in attribute notation).
            raise self.unknown(op, exc, "a locking read is replayed only when idempotent=True")
        if not await self._harmless(v, deadline):
            raise self.unknown(op, exc, "it calls a function that may write")
        self._within_budget(op, tried, exc)
        return guard

    def _after_lost_race(
        self,
        exc: Exception,
        op: str,
        query: str,
        idempotent: bool | None,
        batch: bool,
        tried: Attempts,
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
        known = catalog.known(self.monitor.generation, v.lookup)
        if known is None:
            looked = await self._look_up(v.lookup, deadline)
            if looked is None:
                return False
            harmless, volatile = looked
            catalog.remember(self.monitor.generation, v.lookup, harmless, volatile)
            return v.lookup <= harmless and operators_harmless(v.operators, volatile)
        found, cached_ops = known
        return all(found.values()) and operators_harmless(v.operators, cached_ops)

    async def _look_up(
        self, names: frozenset[str], deadline: float | None
    ) -> tuple[frozenset[str], frozenset[str]] | None:
        """Ask the server's catalog, through the gate, within the deadline; None: no answer."""
        lookup = getattr(self.backend, "harmless_functions", None)
        if lookup is None:
            return None
        limit = self.gate_deadline(deadline)
        try:
            async with asyncio.timeout_at(limit):
                await self.monitor.settled(limit)
                await self.gate.wait(limit)
                cm = self.backend.acquire(self.bound(self.options.acquire_timeout, limit))
                conn = await cm.__aenter__()
                try:
                    answer: tuple[frozenset[str], frozenset[str]] = await lookup(conn, names)
                finally:
                    self.monitor.release_later(cm.__aexit__(None, None, None))
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
        limit = self.options.command_timeout
        await conn.execute(begin, timeout=self.bound(limit, deadline))
        # Each statement gets what is left of the deadline, not a fresh bound of its own:
        # BEGIN, the query and the ending together stay within the call's deadline.
        bound = self.bound(limit, deadline)
        try:
            if column:
                result = await conn.fetchval(query, *args, column=column, timeout=bound)
            else:
                result = await getattr(conn, op)(query, *args, timeout=bound)
        except Exception:
            if not conn.is_closed():
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK", timeout=self.bound(limit, deadline))
            raise
        await conn.execute(end, timeout=self.bound(limit, deadline))
        return result
