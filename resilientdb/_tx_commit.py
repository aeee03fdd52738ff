"""COMMIT of a transaction block, and what a lost COMMIT means.

COMMIT's answer is checked for what the server did (PostgreSQL answers COMMIT of an aborted
transaction with ROLLBACK). When the connection is lost with COMMIT in flight, the outcome is
unknown, unless the block resolves it (``resolve=``, ``_outcomes.py``): then, just before
COMMIT, a transaction that wrote learns its id, and after a lost COMMIT the server is asked.
Committed: the block succeeds. Rolled back: ``TransactionLost`` (nothing was applied), which
``run_in_transaction`` answers by running the callable again. Anything else:
``OutcomeUnknown``, as without resolution.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from . import _markers, _outcomes
from ._redact import describe
from ._transaction import Transaction, TxState
from .backends.base import ErrorKind
from .errors import OutcomeUnknown, TransactionLost, TransactionRolledBack

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["commit", "unknown"]


async def commit(engine: Engine, tx: Transaction, resolve: bool) -> None:
    """Send COMMIT for ``tx`` and raise what its answer (or its loss) means."""
    backend = engine.backend
    if tx.state is not TxState.OPEN:
        try:
            tx._check()  # raises why there is nothing to commit
        except (TransactionLost, TransactionRolledBack) as exc:
            if tx.committed_early:
                raise unknown(engine, exc, "part of it committed before it was lost") from exc
            raise
    if tx.dropped:
        await tx.close_dropped(None)  # a stream dropped unfinished: its cursor first
    mark = await _outcomes.learn(engine, tx) if resolve else None
    if mark is _outcomes.FAILED:
        _rolled_back(engine, tx)
    tx.committing = True
    try:
        result = await tx._conn.execute("COMMIT")
    except Exception as exc:
        lost = isinstance(exc, TimeoutError) or (
            backend.classify(exc, tx._conn) is ErrorKind.CONNECTION
        )
        if lost and mark is not None and not backend.unsent(exc):
            tx.drop(exc, "COMMIT")
            await _resolve(engine, tx, mark, exc)
            return
        if lost and resolve and not (tx.wrote or tx.committed_early):
            # Only plain reads ran: committed or not, the database is the same, and what
            # the reads returned stands. Nothing to ask.
            tx.drop(exc, "COMMIT")
            tx.committing = False
            tx.committed = True
            return
        if lost:
            lost_err = tx.lose(exc, "COMMIT", committing=not backend.unsent(exc))
            raise lost_err from lost_err.__cause__
        # The server refused to commit (a serialization failure, a deferred constraint, a
        # busy database): nothing was written, unless a statement committed earlier.
        tx._mark(TxState.ROLLED_BACK, exc)
        if tx.committed_early:
            raise unknown(engine, exc, "COMMIT failed after part of it committed") from exc
        raise
    if not backend.commit_applied(result):
        _rolled_back(engine, tx)
    tx.committing = False
    tx.committed = True
    if mark is not None and mark.run == _outcomes.MARKER_RUN:
        _markers.sweep_later(engine)


def _rolled_back(engine: Engine, tx: Transaction) -> NoReturn:
    """The transaction had failed (an error inside it was caught): nothing was written."""
    failed = tx._failed
    tx._mark(TxState.ROLLED_BACK, failed)
    err: BaseException = TransactionRolledBack(
        f"backend {engine.name!r}: COMMIT did not commit: the server had rolled the "
        f"transaction back after an error inside it was caught"
        + (f" ({describe(failed)})" if failed else "")
        + "; nothing of it was written"
    )
    if tx.committed_early:
        err = unknown(engine, err, "it was rolled back after part of it committed")
    raise err from failed


async def _resolve(engine: Engine, tx: Transaction, mark: _outcomes.Mark, exc: Exception) -> None:
    """The COMMIT of ``tx`` was lost: return if the server committed it, else raise."""
    verdict = await _outcomes.settle(engine, mark, exc)
    if verdict.outcome == _outcomes.COMMITTED:
        tx.committing = False
        tx.committed = True
        return
    if verdict.outcome == _outcomes.ABORTED and not tx.committed_early:
        tx.committing = False  # provably not applied: a re-run is safe
        err: BaseException = TransactionLost(
            f"backend {engine.name!r}: connection lost during COMMIT ({describe(exc)}); "
            f"{verdict.why}: nothing of it was applied"
        )
    else:
        err = unknown(engine, exc, f"connection lost during COMMIT; {verdict.why}")
    raise err from exc


def unknown(engine: Engine, exc: BaseException, why: str) -> OutcomeUnknown:
    """``OutcomeUnknown`` (counted) for a transaction that may have been applied."""
    engine.monitor.count_outcome_unknown()
    err = OutcomeUnknown(f"backend {engine.name!r}: transaction outcome unknown: {why} ({exc})")
    err.__cause__ = exc
    return err
