"""Streaming results: ``db.iterate()`` and ``tx.iterate()``, rows read in batches.

A stream holds one connection from its first batch until its end, and a server-side cursor
on it (``backends.base.Streams``: an asyncpg cursor in a read-only transaction, an unbuffered
aiomysql cursor, a sqlite3 cursor read with ``fetchmany``). Memory holds one batch.

The replay rules are the call engine's (``_engine.py``) until the first row reaches the
caller: getting the first batch is one call, replayed when that is safe. After that a stream
is never replayed (rows already handed out would repeat or go missing): a lost connection
raises :class:`~resilientdb.StreamInterrupted`, which says how many rows were delivered. A
query error raised by a later batch reaches the caller unchanged, with that count in a note.
Inside a transaction nothing is replayed at all, as for every statement there.

The connection goes back as soon as the stream ends: read to its end (as the last, short
batch arrives, before its rows are handed out), ``aclose()``, the ``async with`` block's end,
an error, or cancellation. A stream dropped unfinished (``break`` out of ``async for``, an
exception in the loop body) is finalised by its ``__del__``, which gives the connection back
in the background at once. Wherever the cursor cannot be closed cleanly, its connection is
discarded instead.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._leases import Attempts, deadline_after
from ._replay import verdict
from ._states import State
from ._stream_kit import check_batch, check_timeout, cut_off, roll_back, stream_methods
from ._transaction import Transaction, TxState
from .backends.base import Connection, Cursor, ErrorKind
from .errors import StreamInterrupted, SupervisorClosed

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["Stream", "check_batch"]

_CONNECTED = State.CONNECTED
_OP = "iterate"
_CLOSE_BOUND = 5.0  # closing a dropped stream's cursor in the background, at most
_DRAIN_BOUND = 60.0  # reading a dropped write stream to its end, without other bounds


class Stream:
    """The rows of one query, read in batches: ``async for row in db.iterate(...)``.

    Also an async context manager (``async with db.iterate(...) as rows:``), which closes it
    at the block's end whatever happens; ``await stream.aclose()`` closes it by hand.
    ``rows_delivered`` counts the rows handed out so far.
    """

    __slots__ = (
        "_args", "_batch", "_cm", "_conn", "_cursor", "_done", "_engine", "_generation",
        "_idempotent", "_pos", "_query", "_reading", "_rows", "_started", "_timeout", "_tx",
        "rows_delivered",
    )  # fmt: skip

    def __init__(
        self,
        engine: Engine,
        query: str,
        args: tuple[Any, ...],
        *,
        batch: int,
        timeout: float | None,
        idempotent: bool | None,
        tx: Transaction | None,
    ) -> None:
        self._engine = engine
        self._query = query
        self._args = args
        self._batch = check_batch(batch)
        if timeout is not None:
            check_timeout(timeout)
        if idempotent is not None and not isinstance(idempotent, bool):
            raise ValueError(f"idempotent must be True, False or None, not {idempotent!r}")
        self._timeout = timeout
        self._idempotent = idempotent
        self._tx = tx
        self._rows: list[Any] = []
        self._pos = 0
        self._started = False
        self._done = False
        self._cm: AbstractAsyncContextManager[Any] | None = None
        self._conn: Connection | None = None
        self._cursor: Cursor | None = None
        self._generation = 0
        self._reading = False  # a batch is in flight (one reader at a time)
        self.rows_delivered = 0

    def __repr__(self) -> str:
        state = "closed" if self._done else "open" if self._started else "not started"
        return f"<Stream {self._engine.name!r} {state}, {self.rows_delivered} rows delivered>"

    def __aiter__(self) -> Stream:
        return self

    async def __aenter__(self) -> Stream:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def __anext__(self) -> Any:
        while True:
            rows, pos = self._rows, self._pos
            if pos < len(rows):
                self._pos = pos + 1
                self.rows_delivered += 1
                return rows[pos]
            if self._done:
                self._rows = []
                raise StopAsyncIteration
            self._check_idle("__anext__")
            self._reading = True
            try:
                if not self._started:
                    self._started = True
                    try:
                        await self._first()
                    except BaseException:
                        self._done = True  # the call's final error: the stream is over
                        raise
                else:
                    await self._more()
            finally:
                self._reading = False

    async def aclose(self) -> None:
        """Stop reading: close the cursor and give the connection back now. Idempotent.

        From the task reading the stream (or when no batch is in flight): another task's
        read in progress raises ``RuntimeError``; cancel that task instead, which closes it.
        """
        self._check_idle("aclose")
        self._done = True
        self._rows = []
        if self._conn is None:
            return
        try:
            await self._finish(self._bound())
        except BaseException:
            self._abandon()
            raise

    def _check_idle(self, op: str) -> None:
        # As an async generator: the reading task owns the connection mid-batch; closing it
        # under the driver would hand the pool a connection still being read.
        if self._reading:
            raise RuntimeError(
                f"{op}(): the stream is being read by another task (a batch is in flight); "
                f"cancel that task to stop it (the stream closes), or read it from one task"
            )

    def __del__(self) -> None:
        # Dropped unfinished (a `break`, an exception in the loop body): close the cursor and
        # give the connection back in the background now, not whenever the pool notices.
        if getattr(self, "_conn", None) is not None:  # (None too if __init__ refused it)
            with contextlib.suppress(Exception):
                self._detach()

    # -- the first batch: the engine's replay rules ----------------------------------------

    async def _first(self) -> None:
        tx = self._tx if self._tx is not None else self._engine.joined()
        if tx is not None:
            self._tx = tx
            await self._first_in(tx)
            return
        eng = self._engine
        gate, backend = eng.gate, eng.backend
        streams = stream_methods(backend)
        facts = backend.facts
        deadline = deadline_after(self._timeout)
        tried: Attempts | None = None
        guard = False
        while True:
            if gate.state is not _CONNECTED:
                await eng.pass_gate(deadline, tried)
            generation = eng.monitor.generation
            acquire_timeout, command_timeout = eng.timeouts(deadline)
            try:
                cm = backend.acquire(acquire_timeout)
                conn = await cm.__aenter__()
            except Exception as exc:
                tried = tried or eng._attempts(deadline)
                eng.acquire_failed(exc, generation, deadline, _OP, tried)
                await eng.pause(_OP, tried, exc)
                continue
            begin = end = None
            if facts.readonly_guard is not None and (guard or facts.stream_in_transaction):
                begin, end = facts.readonly_guard
            try:
                # Several round trips (BEGIN, the cursor, the fetch), each given the driver's
                # timeout: the deadline bounds them together.
                async with asyncio.timeout_at(deadline):
                    cursor = await streams.open_cursor(
                        conn, self._query, self._args, begin=begin, end=end,
                        timeout=command_timeout,
                    )  # fmt: skip
                    self._cm, self._conn, self._cursor = cm, conn, cursor
                    self._generation = generation
                    rows = await cursor.fetch(self._batch, command_timeout)
            except Exception as exc:
                self._cm = self._conn = self._cursor = None
                kind = eng.classify_sent(exc, conn)
                if kind is not ErrorKind.CONNECTION:
                    await roll_back(backend, conn, begin, command_timeout)
                await eng.release_after_failure(cm, exc, deadline)
                tried = tried or eng._attempts(deadline)
                guard = await eng._decide(
                    exc, kind, generation, _OP, self._query, self._idempotent, False, guard,
                    tried, deadline,
                )  # fmt: skip
                await eng.pause(_OP, tried, exc)
                continue
            except BaseException as exc:
                # Cancelled: as the engine does, the connection goes back in the background.
                self._cm = self._conn = self._cursor = None
                self._done = True
                backend.discard(conn)
                eng.monitor.release_later(cm.__aexit__(type(exc), exc, exc.__traceback__))
                raise
            await self._accept(rows)
            return

    async def _first_in(self, tx: Transaction) -> None:
        """Inside a transaction: a cursor on its connection, never replayed."""
        tx._check()
        conn = tx._conn
        deadline = deadline_after(self._bound())
        if tx.dropped:
            await tx.close_dropped(self._bound())
        tx.note_sent(_OP, self._query)  # a streamed ``... RETURNING`` writes
        try:
            async with asyncio.timeout_at(deadline):  # the cursor and the fetch together
                cursor = await stream_methods(self._engine.backend).open_cursor(
                    conn, self._query, self._args, begin=None, end=None, timeout=self._bound()
                )
                self._conn, self._cursor = conn, cursor
                rows = await cursor.fetch(self._batch, self._bound())
        except Exception as exc:
            self._conn = self._cursor = None
            self._done = True
            await tx._after_error(exc, _OP, self._query)
            raise
        except BaseException:
            self._conn = self._cursor = None
            self._done = True
            raise
        await self._accept(rows)

    # -- later batches: never replayed ---------------------------------------------------

    async def _more(self) -> None:
        cursor = self._cursor
        assert cursor is not None and self._conn is not None
        tx = self._tx
        if tx is not None and tx.state is not TxState.OPEN:
            # The block has ended, or the transaction was lost meanwhile: the connection is
            # no longer the stream's. Raise why (TransactionClosed, ...), touching nothing.
            self._conn = self._cursor = None
            self._done = True
            tx._check()
        try:
            rows = await cursor.fetch(self._batch, self._bound())
        except StreamInterrupted as exc:
            # The adapter found the result ended under the stream (MySQL: another statement
            # on the transaction's connection read it away); the connection is fine.
            n = self.rows_delivered
            self._abandon()
            raise StreamInterrupted(
                f"backend {self._engine.name!r}: the stream was interrupted after {n} rows had "
                f"been delivered: {exc}",
                rows_delivered=n,
            ) from None
        except Exception as exc:
            await self._interrupted(exc)
            raise  # _interrupted raised; never reached
        except BaseException:
            self._abandon()
            raise
        await self._accept(rows)

    async def _accept(self, rows: list[Any]) -> None:
        """Hand out ``rows``; a short batch is the last: the connection goes back first."""
        self._rows, self._pos = rows, 0
        if len(rows) < self._batch:
            self._done = True
            await self._finish(self._bound())

    async def _interrupted(self, exc: Exception) -> None:
        """A later batch failed: raise what the caller must know, the connection given back."""
        eng, conn, n = self._engine, self._conn, self.rows_delivered
        assert conn is not None
        self._done = True
        self._rows = []
        tx = self._tx
        if tx is not None:
            self._conn = self._cursor = None
            try:
                await tx._after_error(exc, _OP, self._query)
            except BaseException as lost:
                lost.add_note(f"resilientdb: the stream had delivered {n} rows")
                raise
            exc.add_note(f"resilientdb: the stream had delivered {n} rows before this error")
            raise exc
        kind = eng.classify_sent(exc, conn)
        if eng.gate.state is State.CLOSED:
            self._abandon()
            raise SupervisorClosed(
                f"backend {eng.name!r}: the supervisor was closed while the stream was open "
                f"({n} rows had been delivered)"
            ) from exc
        if kind is ErrorKind.CONNECTION:
            if isinstance(exc, TimeoutError):
                eng.monitor.report_suspect(self._generation, exc, _OP)
            else:
                eng.monitor.report_lost(self._generation, exc, _OP)
            self._abandon()
            raise cut_off(eng, exc, self._query, self._idempotent, n) from exc
        try:
            await self._finish(self._bound())
        except Exception:
            self._abandon()
        exc.add_note(f"resilientdb: the stream had delivered {n} rows before this error")
        raise exc

    # -- giving the connection back ------------------------------------------------------

    async def _finish(self, timeout: float | None) -> None:
        """Close the cursor and give the connection back (discarded when that fails)."""
        conn, cursor, cm = self._conn, self._cursor, self._cm
        self._conn = self._cursor = self._cm = None
        if conn is None or cursor is None:
            return
        tx = self._tx
        eng = self._engine
        if tx is not None:
            if tx.state is not TxState.OPEN or tx._conn is not conn:
                return  # the block has ended: the connection is no longer the stream's
            try:
                await cursor.close(timeout, drain=True)
            except Exception as exc:
                await tx._after_error(exc, _OP, self._query)
                raise
            return
        assert cm is not None
        try:
            # A write streamed (`DELETE ... RETURNING`) runs to its end: closing its connection
            # mid-result would kill the statement (MySQL) after rows had been handed out.
            await cursor.close(timeout, drain=self._writes())
        except Exception:
            eng.backend.discard(conn)
        except BaseException:
            eng.backend.discard(conn)
            eng.monitor.release_later(cm.__aexit__(None, None, None))
            raise
        if conn.is_closed():
            eng.backend.discard(conn)
        await eng.release(cm, self._generation, _OP, None)

    def _abandon(self) -> None:
        """Give the connection back without waiting, its state unknown (cancelled or cut off
        mid-batch): closed now, released in the background. Inside a transaction nothing is
        done: a cancelled block abandons its whole transaction."""
        conn, cm = self._conn, self._cm
        self._conn = self._cursor = self._cm = None
        self._done = True
        if conn is None or cm is None or self._tx is not None:
            return
        eng = self._engine
        eng.backend.discard(conn)
        eng.monitor.release_later(cm.__aexit__(None, None, None))

    def _detach(self) -> None:
        """Dropped unfinished: close the cursor cleanly in the background (bounded), then
        give the connection back. Inside a transaction the connection is the caller's: the
        cursor is closed before the transaction's next statement (or COMMIT drops it)."""
        tx = self._tx
        if tx is not None or self._cm is None:
            if tx is not None and self._cursor is not None and tx._conn is self._conn:
                tx.dropped.append(self._cursor)  # closed before the next statement
            self._conn = self._cursor = self._cm = None
            self._done = True
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop any more (interpreter exit): just close it
            self._abandon()
            return
        self._done = True
        opts = self._engine.options
        bound = min(opts.connect_timeout, _CLOSE_BOUND)
        if self._writes():  # read to its end: as long as a statement may take
            bound = self._bound() or opts.command_timeout or _DRAIN_BOUND
        self._engine.monitor.release_later(self._finish(bound))

    def _writes(self) -> bool:
        """Whether the query's text writes (its statement must not be cut short)."""
        return not verdict(self._query, self._engine.backend.facts.family).read_only

    def _bound(self) -> float | None:
        """The bound of one batch: ``timeout`` (when given) within ``command_timeout``."""
        if self._timeout is None:
            return None
        limit = self._engine.options.command_timeout
        return self._timeout if limit is None else min(limit, self._timeout)
