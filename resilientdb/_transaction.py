"""The transaction handle: statements on one connection, never replayed piecemeal.

A handle is OPEN until its block ends (CLOSED: every call raises ``TransactionClosed`` and
touches nothing), unless its connection is lost first (LOST: ``TransactionLost``, the server
rolled back) or the server rolls the transaction back on its own (ROLLED_BACK:
``TransactionRolledBack``). What the handle knows, it learns without round trips: the
driver's transaction status after each statement, and the statement's text after a failure.

``committed_early`` records that the transaction is no longer provably uncommitted: a
statement committed it (MySQL/MariaDB commit implicitly before DDL, LOCK TABLES and more; a
``COMMIT`` inside a multi-statement text). From then on a lost connection is
``OutcomeUnknown``, never ``TransactionLost``, and ``run_in_transaction`` never runs the
callable again. After such a commit a new transaction is opened at once, so the rest of the
block stays atomic.

A deadlock, serialization failure or lock wait timeout inside a transaction rolls the whole
transaction back on every backend (the handle sends ROLLBACK where the server rolled back
only the statement), so that what follows is certain: the next statement raises
``TransactionRolledBack``, and ``run_in_transaction`` runs the callable again.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

from ._copy_api import TransactionCopy
from ._params import prepare
from ._redact import describe
from ._replay import begins_with_commit, is_commit, verdict
from .backends.base import Connection, Cursor, ErrorKind
from .errors import OutcomeUnknown, TransactionClosed, TransactionLost, TransactionRolledBack

if TYPE_CHECKING:
    from ._engine import Engine
    from ._params import QueryLike
    from ._streams import Stream

__all__ = ["Transaction", "TxState"]

_savepoint_ids = itertools.count(1)


class TxState(enum.Enum):
    OPEN = "open"
    LOST = "lost"  # the connection died: the server rolled back (unless committed_early)
    ROLLED_BACK = "rolled back"  # the server (or the handle, after a lost race) rolled back
    CLOSED = "closed"  # the block ended


# Operations that count as writes whatever their text says (a batch; COPY, whose "query" is
# a table or a copy-out the verdict does not see whole).
_WRITES = frozenset({"executemany", "copy"})


class Transaction(TransactionCopy):
    """The handle of an open transaction: ``tx.fetch``, ``fetchrow``, ``fetchval``,
    ``execute``, ``executemany``, and ``tx.transaction()`` for a nested savepoint.

    Statements run on the transaction's one connection, in order, and are never replayed.
    Inside the ``async with db.transaction()`` block, calls made on ``db`` itself by the same
    task run here too. Once the block has ended, every call raises ``TransactionClosed``.
    """

    __slots__ = (
        "_begin",
        "_cause",
        "_conn",
        "_engine",
        "_failed",
        "_generation",
        "committed",
        "committed_early",
        "committing",
        "dropped",
        "state",
        "wrote",
    )  # fmt: skip

    def __init__(
        self, engine: Engine, conn: Connection, generation: int, begin: tuple[str, ...]
    ) -> None:
        self._engine = engine
        self._conn = conn
        self._generation = generation
        self._begin = begin
        self.state = TxState.OPEN
        self._cause: BaseException | None = None  # why the handle is LOST or ROLLED_BACK
        self._failed: BaseException | None = None  # the last statement error, for COMMIT
        self.committed_early = False
        self.committing = False  # COMMIT was sent (or is being sent)
        self.committed = False  # COMMIT answered: the transaction is committed
        # Cursors of streams dropped unfinished (``_streams.py``), closed before the next
        # statement: the connection is the caller's, so nothing may run on it in between.
        self.dropped: list[Cursor] = []
        # A statement that may write was sent (anything but a plain read by its text, the raw
        # connection handed out): only then is the transaction's id worth learning.
        self.wrote = False

    @property
    def lost(self) -> BaseException | None:
        """The error that lost the transaction's connection, or ``None``."""
        return self._cause if self.state is TxState.LOST else None

    @property
    def connection(self) -> Any:
        """The raw driver connection the transaction runs on."""
        self._check()
        self.wrote = True  # whatever is done on it is out of sight
        return self._engine.backend.raw(self._conn)

    # -- the calls ---------------------------------------------------------------------------

    async def fetch(self, query: QueryLike, *args: Any, timeout: float | None = None) -> list[Any]:
        """All rows of ``query``."""
        rows: list[Any] = await self._call("fetch", query, args, timeout=timeout)
        return rows

    async def fetchrow(self, query: QueryLike, *args: Any, timeout: float | None = None) -> Any:
        """The first row of ``query``, or ``None``."""
        return await self._call("fetchrow", query, args, timeout=timeout)

    async def fetchval(
        self, query: QueryLike, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """One value of the first row, or ``None``."""
        return await self._call("fetchval", query, args, column=column, timeout=timeout)

    async def execute(self, query: QueryLike, *args: Any, timeout: float | None = None) -> Any:
        """Run a statement; returns the driver's status."""
        return await self._call("execute", query, args, timeout=timeout)

    async def executemany(
        self,
        command: QueryLike,
        args: Sequence[Sequence[Any]] | Sequence[Mapping[str, Any]],
        *,
        timeout: float | None = None,
    ) -> Any:
        """Run ``command`` once per argument tuple (a mapping per row for a ``Query`` or a
        SQLAlchemy statement); returns None on every backend."""
        return await self._call("executemany", command, (args,), timeout=timeout)

    def iterate(
        self, query: QueryLike, *args: Any, batch: int = 1000, timeout: float | None = None
    ) -> Stream:
        """The rows of ``query`` read ``batch`` at a time on a cursor in this transaction
        (see ``Database.iterate``); never replayed. ``timeout`` bounds each batch."""
        from ._streams import Stream  # (imports this module)

        # The one place tx.iterate receives (query, args): a bad query raises here.
        sql, args = prepare(query, args, self._engine.backend.facts.family)
        return Stream(
            self._engine, sql, args, batch=batch, timeout=timeout, idempotent=None, tx=self
        )

    def note_sent(self, op: str, query: str) -> None:
        """Record that ``query`` is about to be sent in this transaction: one that may write
        makes the transaction's id worth learning before COMMIT (``_tx_commit.py``). Every
        path that sends on the transaction's connection calls this (statements, streams,
        COPY); a missed write would let a lost COMMIT pass for a read-only one."""
        if not self.wrote:
            v = verdict(query, self._engine.backend.facts.family)  # cached per text
            self.wrote = op in _WRITES or not v.read_only or bool(v.lookup) or v.locks

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A nested block, as a savepoint: rolled back alone if the block raises."""
        self._check()
        return self._savepoint()

    def _check(self) -> None:
        """Raise why nothing may be sent on this handle any more."""
        state, engine = self.state, self._engine
        if state is TxState.OPEN:
            return
        if state is TxState.CLOSED:
            raise TransactionClosed(
                f"backend {engine.name!r}: this transaction's block has ended; its handle cannot "
                f"run statements any more (nothing was sent). Open a new transaction."
            )
        if state is TxState.LOST:
            raise TransactionLost(
                f"backend {engine.name!r}: the transaction's connection was lost earlier"
            ) from self._cause
        raise TransactionRolledBack(
            f"backend {engine.name!r}: the server rolled the transaction back earlier "
            f"({describe(self._cause) if self._cause else 'no error recorded'}); nothing of "
            f"it was written"
        ) from self._cause

    async def _call(self, op: str, text: QueryLike, args: tuple[Any, ...], **kw: Any) -> Any:
        self._check()
        if self.dropped:
            await self.close_dropped(kw.get("timeout"))
        conn = self._conn
        backend = self._engine.backend
        family = backend.facts.family
        query, args = prepare(text, args, family, many=op == "executemany")
        self.note_sent(op, query)
        if family == "postgresql" and begins_with_commit(query, family):
            await self._refuse_if_failed(op, kw.get("timeout"))
        try:
            result = await getattr(conn, op)(query, *args, **kw)
        except Exception as exc:
            await self._after_error(exc, op, query)
            raise
        except BaseException:
            # Cut off (cancelled, or the caller's deadline) with the text on the wire: a
            # COMMIT in it may have run, so a rolled-back outcome can no longer be promised.
            if verdict(query, family).ends_transaction:
                self.committed_early = True
            raise
        ends = verdict(query, family).ends_transaction  # cached per text
        committed = not (ends and op == "execute") or backend.commit_applied(result)
        if not committed and is_commit(query, family):
            # The caller's own COMMIT, answered ROLLBACK: the transaction had failed (an
            # error caught and ignored); nothing of it was written.
            err = TransactionRolledBack(
                f"backend {self._engine.name!r}: COMMIT was answered ROLLBACK: the "
                f"transaction had failed earlier and nothing of it was written"
            )
            self._mark(TxState.ROLLED_BACK, err)
            raise err
        if ends or not backend.in_transaction(conn):
            # The statement may have ended the transaction: an implicit commit, COMMIT or
            # ROLLBACK in its text, or a commit that opened the next one at once (COMMIT AND
            # CHAIN, MySQL's START TRANSACTION). What came before may be committed.
            await self._ended(op, query, None)
        return result

    async def close_dropped(self, timeout: float | None) -> None:
        """Close the cursors of streams dropped unfinished, reading what is left of their
        results where the server sends it anyway (MySQL)."""
        while self.dropped:
            cursor = self.dropped.pop()
            try:
                await cursor.close(timeout, drain=True)
            except Exception as exc:
                await self._after_error(exc, "iterate (closing)", "")
                raise

    async def _refuse_if_failed(self, op: str, timeout: float | None) -> None:
        """Before the caller's own COMMIT on PostgreSQL: a transaction that has failed (an
        error caught and ignored) answers COMMIT with ROLLBACK, whatever method sends it and
        whatever follows it in the text, and nothing of it is written. Ask first (only such
        texts pay the round trip): in a failed transaction even ``SELECT 1`` fails."""
        try:
            await self._conn.fetchval("SELECT 1", timeout=timeout)
        except Exception as exc:
            lost = isinstance(exc, TimeoutError) or (
                self._engine.backend.classify(exc, self._conn) is ErrorKind.CONNECTION
            )
            if lost:
                raise self.lose(exc, f"transaction {op}", committing=False) from exc
            err = TransactionRolledBack(
                f"backend {self._engine.name!r}: the transaction had failed earlier (an error "
                f"was caught and the block carried on), so its COMMIT would be answered "
                f"ROLLBACK; nothing of it was written"
            )
            err.__cause__ = self._failed or exc
            await self.rollback_quietly()
            self._mark(TxState.ROLLED_BACK, err)
            raise err from err.__cause__

    async def _after_error(self, exc: Exception, op: str, query: str) -> None:
        """Record what a failed statement did to the transaction; raise when it was lost."""
        engine = self._engine
        backend = engine.backend
        kind = ErrorKind.CONNECTION if isinstance(exc, TimeoutError) else None
        kind = kind or backend.classify(exc, self._conn)
        moved = kind is ErrorKind.QUERY and not self.committed_early
        if moved and await engine.moved(exc, self._conn, in_transaction=True):
            # A write refused for the node's role: the transaction ends with its connection
            # and the pool moves to the right node, as for a lost connection
            # (run_in_transaction runs the block again).
            raise self.lose(exc, f"transaction {op}", committing=False)
        if kind is ErrorKind.CONNECTION:
            ends = not backend.unsent(exc) and verdict(query, backend.facts.family).ends_transaction
            raise self.lose(exc, f"transaction {op}", committing=ends)
        if kind is ErrorKind.RETRYABLE:
            # Rolled back, whole: certain on every backend (see the module docstring).
            await self.rollback_quietly()
            self._mark(TxState.ROLLED_BACK, exc)
            return
        self._failed = exc
        if verdict(query, backend.facts.family).ends_transaction:
            # A statement that commits implicitly may have done so before it failed (MySQL
            # does, unless it failed to parse).
            await self._ended(op, query, exc)
            return
        await self._refresh_status(op, exc)
        if not backend.in_transaction(self._conn):
            self._mark(TxState.ROLLED_BACK, exc)  # the server ended it on this error

    async def _ended(self, op: str, query: str, exc: Exception | None) -> None:
        """A statement that may have ended the transaction ran (or failed): learn whether a
        transaction is still open, and open a new one when none is."""
        await self._refresh_status(op, exc)
        self.committed_early = True
        if not self._engine.backend.in_transaction(self._conn):
            await self._reopen(exc)

    async def _refresh_status(self, op: str, exc: Exception | None) -> None:
        """Bring the driver's transaction status up to date where error replies and result
        sets carry none (MySQL: ``BackendFacts.status_statement``)."""
        status = self._engine.backend.facts.status_statement
        if status is None:
            return
        try:
            await self._conn.execute(status)
        except Exception as failure:
            raise self.lose(failure, f"transaction {op}", committing=True) from exc

    def lose(self, exc: BaseException, where: str, *, committing: bool) -> BaseException:
        """The connection died: discard it and return the error to raise (TransactionLost, or
        OutcomeUnknown when part of the transaction may have been committed)."""
        engine = self._engine
        self.drop(exc, where)
        if self.committed_early or committing:
            engine.monitor.count_outcome_unknown()
            err: BaseException = OutcomeUnknown(
                f"backend {engine.name!r}: connection lost ({describe(exc)}) after part of the "
                f"transaction may have been committed (a COMMIT, or a statement that commits "
                f"implicitly); it is not known what was applied"
            )
        else:
            err = TransactionLost(
                f"backend {engine.name!r}: connection lost inside the transaction "
                f"({describe(exc)}); the server rolled it back"
            )
        err.__cause__ = exc
        return err

    def drop(self, exc: BaseException, where: str) -> None:
        """The connection died: discard it, mark the handle LOST, report to the monitor."""
        engine = self._engine
        engine.backend.discard(self._conn)
        self._mark(TxState.LOST, exc)
        if isinstance(exc, TimeoutError):
            engine.monitor.report_suspect(self._generation, exc, where)
        else:
            engine.monitor.report_lost(self._generation, exc, where)

    def _mark(self, state: TxState, cause: BaseException | None) -> None:
        if self.state is TxState.OPEN:
            self.state = state
            self._cause = cause

    async def _reopen(self, exc: BaseException | None) -> None:
        """After a commit inside the block: no longer provably uncommitted; start anew."""
        self.committed_early = True
        conn = self._conn
        try:
            for statement in self._begin:
                await conn.execute(statement)
        except Exception as failure:
            kind = self._engine.backend.classify(failure, conn)
            if kind is ErrorKind.CONNECTION or isinstance(failure, TimeoutError):
                err = self.lose(failure, "transaction", committing=True)
                raise err from err.__cause__
            self._mark(TxState.ROLLED_BACK, exc or failure)

    async def rollback_quietly(self) -> None:
        """ROLLBACK, bounded; a connection that does not answer is discarded instead."""
        bound = min(self._engine.options.connect_timeout, 5.0)
        try:
            await self._conn.execute("ROLLBACK", timeout=bound)
        except Exception:
            self._engine.backend.discard(self._conn)

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[Transaction]:
        name = f"resilientdb_sp_{next(_savepoint_ids)}"
        await self.execute(f"SAVEPOINT {name}")
        try:
            yield self
        except Exception:
            # (Cancelled: the enclosing transaction is abandoned whole, without waiting.)
            if self.state is TxState.OPEN:
                with contextlib.suppress(Exception):
                    await self.execute(f"ROLLBACK TO SAVEPOINT {name}")
            raise
        await self.execute(f"RELEASE SAVEPOINT {name}")
