"""Resolving a lost COMMIT: ask the server what became of the transaction.

A connection lost while COMMIT was in flight leaves the outcome unknown: the server may have
committed and lost only the reply, or never received the COMMIT. On PostgreSQL the answer is
on the server. Just before COMMIT is sent, a transaction that wrote learns its id
(``pg_current_xact_id_if_assigned()``, ``txid_current_if_assigned()`` before 13) and which run
of the server assigned it (``pg_postmaster_start_time()`` with the shared statistics' reset
time, which crash recovery sets without restarting the postmaster), in one round trip
(``_tx_commit.py``). If the COMMIT is lost, :func:`settle` reconnects through the gate and
asks ``pg_xact_status()`` (``txid_status()``):

* ``committed``: the call succeeds;
* ``aborted``: nothing was applied (the caller re-runs, or gets ``TransactionLost``);
* ``in progress``: the COMMIT is still being processed; asked again, with backoff, until
  the call's deadline (``gate_timeout`` when it has none);
* anything else (too old, unknown to this server, no answer before the deadline):
  ``OutcomeUnknown``, as without resolution.

Ids are only meaningful to the server run that assigned them. Within one run they are never
given out twice. A server that crashed (a whole restart, or a crashed backend after which the
postmaster reinitialises and replays WAL) may give out again the ids whose records it had
not yet flushed, and a promoted standby gives out its own ids after the point it had replayed:
in both cases a ``committed`` answer may be about another transaction. So when the run that
answers is not the run that assigned the id, only ``aborted`` is trusted: if our transaction
had committed there (flushed, or replicated before promotion), that id would read
``committed``, never ``aborted``. ``committed`` and ``future`` (a promoted standby never saw
the id: the transaction did not commit on the surviving timeline) are ``OutcomeUnknown``.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import _markers
from ._redact import describe
from .backends.base import ErrorKind
from .errors import ResilientDBError

if TYPE_CHECKING:
    from ._engine import Engine
    from ._monitor import Monitor
    from ._transaction import Transaction

__all__ = ["COMMITTED", "FAILED", "Mark", "learn", "settle", "supports"]

COMMITTED = "committed"
ABORTED = "aborted"
IN_PROGRESS = "in progress"
# How often a transaction still "in progress" is asked after (doubling up to the cap).
FIRST_POLL, MAX_POLL = 0.01, 0.5


@dataclass(frozen=True, slots=True)
class Mark:
    """A transaction's id and the server run that assigned it."""

    xid: str
    run: str


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the server said: ``outcome`` is ``committed``, ``aborted`` or ``unknown``."""

    outcome: str
    why: str


# learn(): the server refused to say, because the transaction had failed (an error caught
# and ignored). On PostgreSQL any error inside a transaction block aborts it: COMMIT could
# only roll it back, so the block raises TransactionRolledBack without sending it.
FAILED = Mark("", "")
# A marker row says the same whatever server run answers (it is data, not a transaction id).
MARKER_RUN = "marker"


def supports(engine: Engine) -> bool:
    """Whether the backend can resolve lost COMMITs (PostgreSQL; MySQL/MariaDB and SQLite
    with ``outcome_markers``)."""
    if getattr(engine.backend, "transaction_mark", None) is not None:
        return True
    return engine.options.outcome_markers and engine.backend.facts.family in _markers.FAMILIES


_capable: weakref.WeakKeyDictionary[Monitor, bool] = weakref.WeakKeyDictionary()


async def ready(engine: Engine, deadline: float | None) -> bool:
    """Before a resolving transaction opens: whether this backend can answer, checked once
    on a connection of its own, outside any transaction (a failing question inside one would
    abort it: a server that speaks PostgreSQL's protocol without these functions must not
    lose every transaction). Markers: the table is created here, once."""
    if uses_markers(engine):
        await _markers.ensure_table(engine, deadline)
        return True
    known = _capable.get(engine.monitor)
    if known is not None:
        return known
    backend = engine.backend
    cm, conn, _ = await engine.checkout(deadline)
    try:
        await backend.transaction_mark(conn)  # type: ignore[attr-defined]
    except Exception as exc:
        if isinstance(exc, TimeoutError) or backend.classify(exc, conn) is ErrorKind.CONNECTION:
            backend.discard(conn)
            engine.monitor.release_later(cm.__aexit__(None, None, None))
            return False  # not known yet: this transaction goes unresolved
        _capable[engine.monitor] = False
        await cm.__aexit__(None, None, None)
        return False
    except BaseException:
        backend.discard(conn)
        engine.monitor.release_later(cm.__aexit__(None, None, None))
        raise
    await cm.__aexit__(None, None, None)
    _capable[engine.monitor] = True
    return True


def uses_markers(engine: Engine) -> bool:
    """Whether resolution goes through the marker table (``_markers.py``)."""
    return getattr(engine.backend, "transaction_mark", None) is None


async def learn(engine: Engine, tx: Transaction) -> Mark | None:
    """Before COMMIT: the transaction's id, when it wrote. ``None`` when there is nothing to
    learn (no write, or the transaction has no id: it wrote nothing), ``FAILED`` when the
    server refused (the transaction had failed; the error is kept as ``tx._failed``). A lost
    connection raises ``TransactionLost``: COMMIT was not sent, the server rolls back."""
    if not tx.wrote:
        return None
    if uses_markers(engine):
        marker = await _markers.insert(engine, tx)
        return None if marker is None else Mark(marker, MARKER_RUN)
    try:
        xid, run = await engine.backend.transaction_mark(tx._conn)  # type: ignore[attr-defined]
    except Exception as exc:
        lost = isinstance(exc, TimeoutError) or (
            engine.backend.classify(exc, tx._conn) is ErrorKind.CONNECTION
        )
        if lost:
            err = tx.lose(exc, "COMMIT", committing=False)
            raise err from err.__cause__
        tx._failed = tx._failed or exc
        return FAILED
    return None if xid is None else Mark(xid, run)


async def settle(engine: Engine, mark: Mark, lost: BaseException) -> Verdict:
    """After a lost COMMIT: ask the server what became of ``mark``'s transaction, within
    ``gate_timeout`` (the caller's own deadline cuts it shorter). Never raises but for
    cancellation (and a deadline, as ``TimeoutError``, from the caller's scope)."""
    started = time.monotonic()
    try:
        verdict = await _ask(engine, mark)
    except BaseException:  # cancelled, or the caller's deadline: no verdict
        engine.monitor.resolved("unknown", mark.xid, time.monotonic() - started, lost)
        raise
    engine.monitor.resolved(verdict.outcome, mark.xid, time.monotonic() - started, lost)
    return verdict


async def _ask(engine: Engine, mark: Mark) -> Verdict:
    backend = engine.backend
    loop = asyncio.get_running_loop()
    limit = loop.time() + engine.options.gate_timeout
    delay = FIRST_POLL
    last: Any = "no answer"
    try:
        async with asyncio.timeout_at(limit):
            while True:
                try:
                    if mark.run == MARKER_RUN:
                        status, run = await _markers.present(engine, limit, mark.xid), MARKER_RUN
                    else:
                        async with engine.lease(limit) as raw:
                            status, run = await backend.transaction_status(  # type: ignore[attr-defined]
                                raw, mark.xid
                            )
                except ResilientDBError as exc:  # the gate gave up: the server is not back
                    return Verdict("unknown", f"the server did not answer: {describe(exc)}")
                except Exception as exc:
                    kind = backend.classify(exc)
                    transient = (ErrorKind.CONNECTION, ErrorKind.RETRYABLE)  # a lock wait
                    if not isinstance(exc, TimeoutError) and kind not in transient:
                        return Verdict("unknown", f"the server refused: {describe(exc)}")
                    last = describe(exc)
                    await _pause(loop, limit, delay)
                    delay = min(delay * 2, MAX_POLL)
                    continue
                if status == IN_PROGRESS:
                    last = "still in progress"
                    await _pause(loop, limit, delay)
                    delay = min(delay * 2, MAX_POLL)
                    continue
                return _judge(mark, status, run)
    except TimeoutError:
        if loop.time() < limit:
            raise  # the caller's own deadline: its scope says what that means
        return Verdict("unknown", f"no verdict within gate_timeout ({last})")


async def _pause(loop: asyncio.AbstractEventLoop, limit: float, delay: float) -> None:
    await asyncio.sleep(min(delay, max(limit - loop.time(), 0.0)))


def _judge(mark: Mark, status: str | None, run: str) -> Verdict:
    same = run == mark.run
    if status == ABORTED:
        return Verdict(ABORTED, "the server reports it rolled back")
    if status == COMMITTED and same:
        return Verdict(COMMITTED, "the server reports it committed")
    if status == COMMITTED:
        return Verdict(
            "unknown",
            "the server restarted or failed over since; its id may have been given to "
            "another transaction",
        )
    if status == "future":
        return Verdict(
            "unknown",
            "the server has never seen its id (a promoted standby the transaction never "
            "reached: it did not commit on the surviving timeline)",
        )
    return Verdict("unknown", f"the server cannot tell (status {status!r}: too old)")
