"""Database: the calls a service makes, each through the gate, replayed only when safe.

The machinery is in ``_engine.py`` (single calls) and ``_tx_block.py`` (transactions); this
module is the public face. Inside an open ``db.transaction()`` block, calls made on the same
``Database`` by the same task join that transaction (a context variable, as encode/databases
does); other tasks are unaffected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from . import _once, _tx_block
from ._copy_api import CopyMethods
from ._engine import Engine, deadline_after
from ._listen import Listener
from ._listen_api import ListenMethods
from ._params import prepare
from ._states import State
from ._statistics import BackendStatistics
from ._streams import Stream
from ._transaction import Transaction
from .config import Options
from .health import HealthReport
from .health import check as check_health

if TYPE_CHECKING:
    from ._params import QueryLike

T = TypeVar("T")

__all__ = ["Database"]


class Database(CopyMethods, ListenMethods):
    """One backend as the application sees it: ``supervisor.db`` or ``supervisor[name]``.

    Every method takes ``timeout=`` (seconds for the whole call: waiting at the gate, acquiring,
    running, replaying) and the query methods take ``idempotent=``: ``True`` allows replaying
    a write whose outcome is unknown, ``False`` forbids replaying even a SELECT that may have
    run, ``None`` (default) decides by the statement's leading keyword. A query is a ``str``
    (the driver's own SQL, sent untouched in its own paramstyle), a :class:`Query` (named
    parameters, converted for the driver), or a SQLAlchemy statement (compiled with the
    backend's dialect); the replay rules judge the SQL that really runs.
    """

    __slots__ = ("_closer", "_engine", "_listener", "name")

    def __init__(self, engine: Engine) -> None:
        # Built by the Supervisor, which owns the monitor and the engine; this is the face.
        self._engine = engine
        self.name = engine.name
        self._closer: Callable[[], Awaitable[None]] | None = None  # the owner's aclose
        self._listener = Listener(engine)  # db.listen()'s connection, opened on first use

    def __repr__(self) -> str:
        return f"<Database {self.name!r} {self._engine.backend.dsn} {self.state.value}>"

    @property
    def state(self) -> State:
        """This backend's state."""
        return self._engine.gate.state

    @property
    def options(self) -> Options:
        """This backend's options, merged and validated (frozen)."""
        return self._engine.options

    def statistics(self) -> BackendStatistics:
        """This backend's figures now (pool, gate, counters), as a frozen object; no I/O."""
        return self._engine.monitor.statistics()

    # -- queries ------------------------------------------------------------------------------

    async def fetch(
        self,
        query: QueryLike,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool | None = None,
        exactly_once: bool = False,
    ) -> list[Any]:
        """All rows of ``query``: a list of rows (``row[0]``, ``row["name"]``, ``dict(row)``):
        :class:`Row` on MySQL and SQLite, asyncpg's ``Record`` (or the ``record_class`` given in
        ``connect_kwargs``) on PostgreSQL, which :class:`Row` imitates."""
        result: list[Any]
        if exactly_once:
            result = await self._once("fetch", query, args, timeout, idempotent)
        else:
            result = await self._run("fetch", query, args, timeout, idempotent)
        return result

    async def fetchrow(
        self,
        query: QueryLike,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool | None = None,
        exactly_once: bool = False,
    ) -> Any:
        """The first row of ``query``, or ``None``."""
        if exactly_once:
            return await self._once("fetchrow", query, args, timeout, idempotent)
        return await self._run("fetchrow", query, args, timeout, idempotent)

    async def fetchval(
        self,
        query: QueryLike,
        *args: Any,
        column: int = 0,
        timeout: float | None = None,
        idempotent: bool | None = None,
        exactly_once: bool = False,
    ) -> Any:
        """One value of the first row (``column`` picks which), or ``None`` without rows."""
        if exactly_once:
            return await self._once("fetchval", query, args, timeout, idempotent, column)
        return await self._run("fetchval", query, args, timeout, idempotent, column)

    async def execute(
        self,
        query: QueryLike,
        *args: Any,
        timeout: float | None = None,
        idempotent: bool | None = None,
        exactly_once: bool = False,
    ) -> Any:
        """Run a statement; returns the driver's status (asyncpg: the command tag).

        ``exactly_once=True`` (PostgreSQL; the query methods all take it) runs a write that
        is not safe to replay in a transaction of its own, so that a lost reply is resolved
        by asking the server instead of raising ``OutcomeUnknown`` (guide: "When the outcome
        is unknown"); it costs three round trips more.
        """
        if exactly_once:
            return await self._once("execute", query, args, timeout, idempotent)
        return await self._run("execute", query, args, timeout, idempotent)

    async def executemany(
        self,
        command: QueryLike,
        args: Sequence[Sequence[Any]] | Sequence[Mapping[str, Any]],
        *,
        timeout: float | None = None,
        idempotent: bool | None = None,
        exactly_once: bool = False,
    ) -> Any:
        """Run ``command`` once per argument tuple; returns None on every backend.

        Replayed only when nothing was sent, or when ``idempotent=True``: a batch that fails
        midway may have applied part of its rows. With a :class:`Query` or a SQLAlchemy
        statement, each row is a mapping of names to values.
        """
        if exactly_once:
            return await self._once("executemany", command, (args,), timeout, idempotent)
        # sql=None for the replay rule: a batch is never judged read-only by its keyword.
        return await self._run("executemany", command, (args,), timeout, idempotent, batch=True)

    @asynccontextmanager
    async def acquire(self, *, timeout: float | None = None) -> AsyncIterator[Any]:
        """The raw driver connection, through the gate: the escape hatch.

        Nothing done on it is replayed; a connection error raised inside the block is
        reported to the supervisor (which checks the server) and re-raised unchanged. Inside
        this task's open transaction it is the transaction's connection.
        """
        joined = self._engine.joined()
        if joined is not None:
            yield joined.connection
            return
        async with self._engine.lease(deadline_after(timeout)) as conn:
            yield conn

    def transaction(
        self,
        *,
        isolation: str | None = None,
        readonly: bool = False,
        timeout: float | None = None,
        resolve: bool = False,
    ) -> AbstractAsyncContextManager[Transaction]:
        """``async with db.transaction() as tx:`` runs ``tx.fetch`` / ``execute`` / ... on one
        connection, committed when the block ends, rolled back if it raises.

        Nothing inside is replayed: a lost connection raises ``TransactionLost`` (the server
        rolled back), a connection lost during COMMIT raises ``OutcomeUnknown``.
        ``isolation`` is ``"read_committed"``, ``"repeatable_read"``, ``"serializable"`` or
        ``"read_uncommitted"`` where the backend has them; ``readonly`` opens a read-only
        transaction; ``timeout`` bounds getting a connection. ``tx.transaction()`` nests a
        savepoint. ``resolve=True`` (PostgreSQL) answers a lost COMMIT by asking the server:
        committed, the block succeeds; rolled back, ``TransactionLost``; otherwise
        ``OutcomeUnknown`` (guide: "When the outcome is unknown").
        """
        return _tx_block.transaction(
            self._engine,
            isolation=isolation,
            readonly=readonly,
            timeout=timeout,
            resolve=_tx_block.check_resolve(self._engine, resolve, default=False),
        )

    async def run_in_transaction(
        self,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retries: int = 3,
        idempotent: bool = False,
        timeout: float | None = None,
        isolation: str | None = None,
        readonly: bool = False,
        resolve: bool | None = None,
    ) -> T:
        """``await fn(tx, *args)`` in a transaction, re-run whole when that is safe.

        Re-run, with backoff, up to ``retries`` times: when the connection was lost before
        COMMIT was sent, and on serialization failures and deadlocks. A connection lost during
        COMMIT raises ``OutcomeUnknown`` unless ``idempotent=True``. When retries run out the
        last error is raised. ``fn`` may run more than once: keep side effects outside the
        database (emails, queues) out of it.
        """
        return await _tx_block.run_in_transaction(
            self._engine,
            fn,
            args,
            retries=retries,
            idempotent=idempotent,
            timeout=timeout,
            isolation=isolation,
            readonly=readonly,
            resolve=resolve,
        )

    # -- the engine ---------------------------------------------------------------------------

    async def _run(
        self,
        op: str,
        query: QueryLike,
        args: tuple[Any, ...],
        timeout: float | None,
        idempotent: bool | None,
        column: int = 0,
        batch: bool = False,
    ) -> Any:
        # Before anything else: a query that cannot be prepared raises with nothing sent.
        # (The test for a plain str is inlined: it is the hot path, and prepare passes it.)
        if type(query) is str:
            sql = query
        else:
            sql, args = prepare(query, args, self._engine.backend.facts.family, many=batch)
        tx = self._engine.joined()
        if tx is not None:
            # Inside this task's transaction: run there, never replayed.
            if column:
                return await tx.fetchval(sql, *args, column=column, timeout=timeout)
            return await getattr(tx, op)(sql, *args, timeout=timeout)
        return await self._engine.run(op, sql, args, timeout, idempotent, column, batch)

    def iterate(
        self,
        query: QueryLike,
        *args: Any,
        batch: int = 1000,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> Stream:
        """The rows of ``query`` as an async iterator, read ``batch`` rows at a time on a
        server-side cursor: ``async for row in db.iterate(...)``; memory holds one batch.

        Getting the first batch is one call with the usual rules (``timeout`` bounds it,
        replays included); each later batch is bounded by ``timeout`` too (within
        ``command_timeout``); the time spent in the loop body is not counted. Once a row has
        reached the caller nothing is replayed: a lost connection raises
        ``StreamInterrupted`` with ``rows_delivered``. The connection is held until the
        stream ends: read to the end, ``break``, ``aclose()``, an error or cancellation give
        it back at once. On PostgreSQL, outside a transaction, the query runs in a read-only
        transaction. Inside this task's transaction it runs there, never replayed.
        """
        # The one place iterate receives (query, args): a bad query raises here, unsent.
        sql, args = prepare(query, args, self._engine.backend.facts.family)
        return Stream(
            self._engine,
            sql,
            args,
            batch=batch,
            timeout=timeout,
            idempotent=idempotent,
            tx=None,
        )

    async def aclose(self) -> None:
        """Close the supervisor this database belongs to (every backend of it): for code that
        holds only the database, as it would an asyncpg or psycopg pool. Idempotent."""
        closer = self._closer
        if closer is not None:
            await closer()

    async def close(self) -> None:
        """Alias of :meth:`aclose` (asyncpg's and psycopg_pool's name)."""
        await self.aclose()

    async def _once(
        self,
        op: str,
        query: QueryLike,
        args: tuple[Any, ...],
        timeout: float | None,
        idempotent: bool | None,
        column: int = 0,
    ) -> Any:
        family = self._engine.backend.facts.family
        sql, args = prepare(query, args, family, many=op == "executemany")  # nothing sent yet
        return await _once.run_once(self._engine, op, sql, args, timeout, idempotent, column)

    async def health(self, timeout: float | None = None) -> HealthReport:
        """This backend's :class:`HealthReport` (see ``Supervisor.health``); never raises for
        a database problem, never takes longer than ``timeout`` (default ``health_timeout``)."""
        return await check_health([self._engine], timeout)

    async def expire_connections(self) -> None:
        """Retire every pooled connection now: idle ones close at once, those in use when
        given back; new ones connect afresh (with the current ``password=``, to the node the
        DSN asks for). For a credential rotation that must take effect at once."""
        await self._engine.backend.refresh()
