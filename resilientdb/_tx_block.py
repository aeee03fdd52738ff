"""Transaction blocks: ``db.transaction()`` and ``db.run_in_transaction()``.

A block opens a transaction on one connection (retrying the open while nothing of the
caller's has run), hands out its ``Transaction``, and ends it: COMMIT when the block ends,
checked for what the server did (PostgreSQL answers COMMIT of an aborted transaction with
ROLLBACK); ROLLBACK when it raises. A cancelled block never waits on the network: its
rollback and release go to the background.

``run_in_transaction`` builds on the handle's facts: it runs the callable again after
``TransactionLost`` (rolled back before COMMIT was sent), after a lost race (deadlock,
serialization failure, lock wait timeout: rolled back whole), and after a lost COMMIT only
when the caller says the callable is idempotent, or when the server says the lost COMMIT
rolled back (``resolve``, on by default where the backend can tell: ``_tx_commit.py``).
Never after an implicit commit, unless idempotent. Its ``timeout`` bounds the whole call,
the callable included: past it the transaction is abandoned (rolled back by the server) and
``DatabaseUnavailable`` raised, or ``OutcomeUnknown`` when COMMIT was already in flight.
Once an attempt may have been applied, the final error is ``OutcomeUnknown``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar, cast

from . import _outcomes
from ._engine import deadline_after
from ._redact import describe
from ._transaction import Transaction, TxState
from ._tx_commit import commit, unknown
from .backends.base import ErrorKind
from .errors import DatabaseUnavailable, OutcomeUnknown, TransactionLost, TransactionRolledBack

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["check_resolve", "normalize_isolation", "run_in_transaction", "transaction"]

T = TypeVar("T")

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


def check_resolve(engine: Engine, resolve: bool | None, *, default: bool) -> bool:
    """``resolve=`` checked against what the backend can do; ``None`` is ``default`` where
    it can (PostgreSQL), off elsewhere."""
    if resolve is None:
        return default and _outcomes.supports(engine)
    if not isinstance(resolve, bool):
        raise TypeError(f"resolve must be True, False or None, not {resolve!r}")
    if resolve and not _outcomes.supports(engine):
        raise ValueError(
            f"backend {engine.name!r}: resolve=True needs a backend that can tell what became "
            f"of a lost COMMIT (PostgreSQL, or outcome_markers=True on MySQL/MariaDB and "
            f"SQLite); pass resolve=False or leave it None"
        )
    return resolve


@asynccontextmanager
async def transaction(
    engine: Engine,
    *,
    isolation: str | None,
    readonly: bool,
    timeout: float | None,
    resolve: bool = False,
) -> AsyncIterator[Transaction]:
    """The body of ``Database.transaction()``."""
    begin = engine.backend.begin_statements(normalize_isolation(isolation), readonly)
    deadline = deadline_after(timeout)
    joined = engine.joined()
    if joined is not None:
        # This task already has a transaction open on this backend: nest a savepoint.
        async with joined.transaction() as tx:
            yield tx
        return
    if resolve:  # checked once per backend, outside any transaction
        resolve = await _outcomes.ready(engine, deadline)
    cm, tx = await _open(engine, begin, deadline)
    token = engine.join(tx)
    failure: BaseException | None = None
    try:
        try:
            yield tx
        except BaseException as exc:
            failure = exc
            if (
                tx.committed_early
                and type(exc) is not OutcomeUnknown
                and isinstance(exc, Exception)
            ):
                # The block failed, but part of it committed already: that is the truth.
                raise unknown(engine, exc, "the block failed after part of it committed") from exc
            raise
        try:
            await commit(engine, tx, resolve)
        except BaseException as exc:
            failure = exc
            raise
    finally:
        with contextlib.suppress(ValueError):  # reset from another context: nothing to undo
            engine.leave(token)
        await _finish(engine, cm, tx, failure)


async def _open(
    engine: Engine, begin: tuple[str, ...], deadline: float | None
) -> tuple[AbstractAsyncContextManager[Any], Transaction]:
    """A connection with a transaction open on it; opening is retried while it failed
    because the connection was gone (nothing of the caller's ran yet)."""
    backend = engine.backend
    failures = 0
    while True:
        cm, conn, generation = await engine.checkout(deadline)
        try:
            for statement in begin:
                await conn.execute(statement, timeout=engine.bound(None, deadline))
        except Exception as exc:
            lost = isinstance(exc, TimeoutError) or (
                backend.classify(exc, conn) is ErrorKind.CONNECTION
            )
            if not lost:
                engine.monitor.release_later(cm.__aexit__(None, None, None))
                raise
            backend.discard(conn)
            engine.monitor.release_later(cm.__aexit__(None, None, None))
            engine.monitor.report_lost(generation, exc, "begin")
            failures += 1
            if failures > engine.options.max_replays:
                raise DatabaseUnavailable(
                    f"backend {engine.name!r}: connection lost while opening a transaction, "
                    f"{failures} times: {describe(exc)}"
                ) from exc
            await engine.monitor.settled(engine.gate_deadline(deadline))
            continue
        except BaseException:
            backend.discard(conn)
            engine.monitor.release_later(cm.__aexit__(None, None, None))
            raise
        return cm, Transaction(engine, conn, generation, begin)


async def _finish(
    engine: Engine,
    cm: AbstractAsyncContextManager[Any],
    tx: Transaction,
    failure: BaseException | None,
) -> None:
    """End the block: roll back what is left open, give the connection back, close the
    handle. A cancelled caller does not wait: that work goes to the background, and so does
    whatever is left when the caller is cancelled during this clean-up."""
    backend, monitor = engine.backend, engine.monitor
    live = tx.state is not TxState.LOST
    in_flight = tx.committing  # COMMIT sent and not answered: the connection's state is unknown
    tx.state = TxState.CLOSED
    cancelled = failure is not None and not isinstance(failure, Exception)
    if live and in_flight:
        backend.discard(tx._conn)
    elif live and failure is not None and backend.in_transaction(tx._conn):
        if cancelled:

            async def later() -> None:
                await tx.rollback_quietly()
                await cm.__aexit__(None, None, None)

            monitor.release_later(later())
            return
        try:
            await tx.rollback_quietly()
        except BaseException:
            backend.discard(tx._conn)  # cancelled mid-rollback: the server rolls back
            monitor.release_later(cm.__aexit__(None, None, None))
            raise
    if cancelled:
        monitor.release_later(cm.__aexit__(None, None, None))
        return
    with contextlib.suppress(Exception):
        await cm.__aexit__(None, None, None)


class _Run:
    """One attempt of ``run_in_transaction``: its handle and what the callable returned."""

    __slots__ = ("result", "tx")

    def __init__(self) -> None:
        self.tx: Transaction | None = None
        self.result: Any = None


async def run_in_transaction(
    engine: Engine,
    fn: Callable[..., Awaitable[T]],
    args: tuple[Any, ...],
    *,
    retries: int,
    idempotent: bool,
    timeout: float | None,
    isolation: str | None,
    readonly: bool,
    resolve: bool | None = None,
) -> T:
    """The body of ``Database.run_in_transaction()``."""
    resolve = check_resolve(engine, resolve, default=True)
    if not callable(fn):
        raise TypeError("run_in_transaction takes an async callable fn(tx, *args)")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, not {retries!r}")
    deadline = deadline_after(timeout)
    joined = engine.joined()
    if joined is not None:
        # Inside this task's open transaction: the outer block owns retries and COMMIT.
        async with joined.transaction() as tx:
            return await fn(tx, *args)
    loop = asyncio.get_running_loop()
    applied: BaseException | None = None  # an attempt that may have been applied
    attempt = 0
    while True:
        run = _Run()
        scope = asyncio.timeout_at(deadline)
        try:
            async with (
                scope,
                transaction(
                    engine, isolation=isolation, readonly=readonly, timeout=None, resolve=resolve
                ) as tx,
            ):
                run.tx = tx
                run.result = await fn(tx, *args)
            return cast(T, run.result)
        except TimeoutError as exc:
            if scope.expired():
                if run.tx is not None and run.tx.committed:
                    return cast(T, run.result)  # only giving the connection back was cut short
                _past_deadline(engine, exc, run, timeout, applied)
            cause: BaseException = exc
            _raise_unless_retryable(engine, exc, run, idempotent, applied)
        except TransactionLost as exc:
            cause = exc  # lost before COMMIT was sent: rolled back, safe to run again
        except OutcomeUnknown as exc:
            if not idempotent:
                err = _final(engine, exc, applied)
                raise err from err.__cause__
            applied = applied or exc
            cause = exc
        except TransactionRolledBack as exc:
            inner = exc.__cause__
            if inner is None or engine.backend.classify(inner) is not ErrorKind.RETRYABLE:
                err = _final(engine, exc, applied)
                raise err from err.__cause__
            cause = exc
        except Exception as exc:
            _raise_unless_retryable(engine, exc, run, idempotent, applied)
            cause = exc
        attempt += 1
        if attempt > retries:
            raise _final(engine, cause, applied)
        limit = loop.time() + engine.options.gate_timeout if deadline is None else deadline
        if loop.time() >= limit:
            raise _final(
                engine,
                DatabaseUnavailable(
                    f"backend {engine.name!r}: transaction reached its deadline: {describe(cause)}"
                ),
                applied,
                cause,
            )
        engine.monitor.replayed("run_in_transaction", attempt, cause)
        await engine.monitor.settled(limit)
        delay = engine.options.backoff.delay(attempt)
        await asyncio.sleep(min(delay, max(limit - loop.time(), 0.0)))


def _raise_unless_retryable(
    engine: Engine, exc: Exception, run: _Run, idempotent: bool, applied: BaseException | None
) -> None:
    """A lost race (rolled back whole) may run again; anything else is raised."""
    if engine.backend.classify(exc) is not ErrorKind.RETRYABLE:
        err = _final(engine, exc, applied)
        raise err from err.__cause__
    tx = run.tx
    if tx is not None and tx.committed_early and not idempotent:
        raise unknown(engine, exc, "a lost race after part of it committed") from exc


def _past_deadline(
    engine: Engine,
    exc: TimeoutError,
    run: _Run,
    timeout: float | None,
    applied: BaseException | None,
) -> NoReturn:
    """The call's deadline passed: raise what that means for what was applied."""
    tx = run.tx
    if tx is not None and (tx.committing or tx.committed_early):
        raise unknown(engine, exc, f"the deadline ({timeout}s) passed during COMMIT")
    raise _final(
        engine,
        DatabaseUnavailable(
            f"backend {engine.name!r}: run_in_transaction reached its deadline ({timeout}s); "
            f"the transaction was rolled back"
        ),
        applied,
        exc,
    )


def _final(
    engine: Engine,
    exc: BaseException,
    applied: BaseException | None,
    cause: BaseException | None = None,
) -> BaseException:
    if cause is not None and exc.__cause__ is None:
        exc.__cause__ = cause
    if applied is None or isinstance(exc, OutcomeUnknown):
        return exc
    return unknown(engine, exc, f"an earlier attempt may have been applied ({describe(applied)})")
