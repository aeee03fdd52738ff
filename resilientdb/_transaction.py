"""Transactions: never replayed piecemeal, replayed whole only when that is provably safe.

Inside ``db.transaction()`` a lost connection raises ``TransactionLost`` (the server rolls
back an open transaction when its connection dies), and a connection lost while COMMIT is in
flight raises ``OutcomeUnknown`` (the COMMIT may or may not have been applied).
``run_in_transaction`` builds on exactly those two facts: it re-runs the whole callable after
``TransactionLost`` and after serialization failures and deadlocks (rolled back by the
server), and after a lost COMMIT only when the caller says the callable is idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from ._redact import describe
from .backends.base import Connection, ErrorKind
from .errors import DatabaseUnavailable, OutcomeUnknown, TransactionLost

if TYPE_CHECKING:
    from ._database import Database

__all__ = ["Transaction", "run_in_transaction", "transaction"]

T = TypeVar("T")
_savepoint_ids = itertools.count(1)

ISOLATION_LEVELS = ("READ UNCOMMITTED", "READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE")


def normalize_isolation(isolation: str | None) -> str | None:
    """``"repeatable_read"`` / ``"Repeatable Read"`` -> ``"REPEATABLE READ"``; None stays."""
    if isolation is None:
        return None
    level = " ".join(str(isolation).replace("_", " ").replace("-", " ").upper().split())
    if level not in ISOLATION_LEVELS:
        known = ", ".join(repr(x.lower().replace(" ", "_")) for x in ISOLATION_LEVELS)
        raise ValueError(f"unknown isolation level {isolation!r}; use one of {known}")
    return level


class Transaction:
    """The handle of an open transaction: ``tx.fetch``, ``fetchrow``, ``fetchval``,
    ``execute``, ``executemany``, and ``tx.transaction()`` for a nested savepoint.

    Statements run on the transaction's one connection, in order, and are never replayed.
    """

    __slots__ = ("_conn", "_db", "_generation", "lost")

    def __init__(self, db: Database, conn: Connection, generation: int) -> None:
        self._db = db
        self._conn = conn
        self._generation = generation
        self.lost: BaseException | None = None

    @property
    def connection(self) -> Any:
        """The raw driver connection the transaction runs on."""
        return self._db._backend.raw(self._conn)

    async def _call(self, op: str, query: str, args: tuple[Any, ...], **kw: Any) -> Any:
        if self.lost is not None:
            raise TransactionLost(
                f"backend {self._db.name!r}: the transaction's connection was lost earlier"
            ) from self.lost
        try:
            return await getattr(self._conn, op)(query, *args, **kw)
        except Exception as exc:
            self._on_error(exc, op)
            raise

    def _on_error(self, exc: Exception, op: str) -> None:
        db = self._db
        kind = ErrorKind.CONNECTION if isinstance(exc, TimeoutError) else None
        kind = kind or db._backend.classify(exc, self._conn)
        if kind is not ErrorKind.CONNECTION:
            return  # the statement's own error, or a lost race: raised unchanged
        # Whatever the statement did is gone with the connection: the server rolls back.
        db._backend.discard(self._conn)
        self.lost = exc
        if not isinstance(exc, TimeoutError):
            db._monitor.report_lost(self._generation, exc, f"transaction {op}")
        raise TransactionLost(
            f"backend {db.name!r}: connection lost inside the transaction ({describe(exc)}); "
            f"the server rolled it back"
        ) from exc

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        """All rows of ``query``."""
        rows: list[Any] = await self._call("fetch", query, args, timeout=timeout)
        return rows

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """The first row of ``query``, or ``None``."""
        return await self._call("fetchrow", query, args, timeout=timeout)

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """One value of the first row, or ``None``."""
        return await self._call("fetchval", query, args, column=column, timeout=timeout)

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        """Run a statement; returns the driver's status."""
        return await self._call("execute", query, args, timeout=timeout)

    async def executemany(
        self, command: str, args: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> Any:
        """Run ``command`` once per argument tuple."""
        return await self._call("executemany", command, (args,), timeout=timeout)

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
        """A nested block, as a savepoint: rolled back alone if the block raises."""
        return self._savepoint()

    @asynccontextmanager
    async def _savepoint(self) -> AsyncIterator[Transaction]:
        name = f"resilientdb_sp_{next(_savepoint_ids)}"
        await self.execute(f"SAVEPOINT {name}")
        try:
            yield self
        except BaseException:
            if self.lost is None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.execute(f"ROLLBACK TO SAVEPOINT {name}"))
            raise
        await self.execute(f"RELEASE SAVEPOINT {name}")


@asynccontextmanager
async def transaction(
    db: Database, *, isolation: str | None, readonly: bool, timeout: float | None
) -> AsyncIterator[Transaction]:
    """The body of ``Database.transaction()``."""
    begin = db._backend.begin_statements(normalize_isolation(isolation), readonly)
    attempts = 0
    while True:
        cm, conn, generation = await db._checkout(timeout)
        tx = Transaction(db, conn, generation)
        try:
            for statement in begin:
                await tx.execute(statement)
            break
        except TransactionLost as exc:
            # Nothing of the caller's ran yet: open the transaction again on a new connection.
            with contextlib.suppress(Exception):
                await asyncio.shield(cm.__aexit__(None, None, None))
            attempts += 1
            if attempts > db._options.max_replays:
                raise DatabaseUnavailable(
                    f"backend {db.name!r}: connection lost while opening a transaction"
                ) from exc.__cause__
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(cm.__aexit__(None, None, None))
            raise
    try:
        try:
            yield tx
        except BaseException:
            if tx.lost is None:
                # Shielded: a cancelled caller must not leave the transaction open.
                with contextlib.suppress(Exception):
                    await asyncio.shield(tx.execute("ROLLBACK"))
            raise
        await _commit(db, tx)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.shield(cm.__aexit__(None, None, None))


async def _commit(db: Database, tx: Transaction) -> None:
    if tx.lost is not None:
        # The caller swallowed TransactionLost: there is nothing left to commit.
        raise TransactionLost(f"backend {db.name!r}: the transaction was lost") from tx.lost
    try:
        await tx.execute("COMMIT")
    except TransactionLost as exc:
        if exc.__cause__ is not None and db._backend.unsent(exc.__cause__):
            raise  # COMMIT never left: the server rolls the transaction back
        db._monitor.outcome_unknown += 1
        raise OutcomeUnknown(
            f"backend {db.name!r}: connection lost while COMMIT was in flight; the "
            f"transaction may or may not have been applied"
        ) from exc.__cause__


async def run_in_transaction(
    db: Database,
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    *,
    retries: int,
    idempotent: bool,
    timeout: float | None,
    isolation: str | None,
    readonly: bool,
) -> T:
    """The body of ``Database.run_in_transaction()``."""
    if not callable(fn):
        raise TypeError("run_in_transaction takes an async callable fn(tx, *args)")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    attempt = 0
    while True:
        remaining = None if deadline is None else max(deadline - loop.time(), 0.001)
        try:
            async with transaction(
                db, isolation=isolation, readonly=readonly, timeout=remaining
            ) as tx:
                return await fn(tx, *args)
        except TransactionLost as exc:
            cause: Exception = exc  # lost before COMMIT was sent: rolled back, safe to re-run
        except OutcomeUnknown as exc:
            if not idempotent:
                raise
            cause = exc
        except Exception as exc:
            if db._backend.classify(exc) is not ErrorKind.RETRYABLE:
                raise
            cause = exc  # serialization failure, deadlock, busy: the server rolled back
        attempt += 1
        if attempt > retries:
            raise cause
        if deadline is not None and loop.time() >= deadline:
            raise DatabaseUnavailable(
                f"backend {db.name!r}: transaction reached its deadline: {describe(cause)}"
            ) from cause
        db._monitor.replayed("run_in_transaction", attempt, cause)
        await asyncio.sleep(db._options.backoff.delay(attempt))
