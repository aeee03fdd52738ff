"""Outcome markers: resolving a lost COMMIT on MySQL/MariaDB and SQLite (``outcome_markers``).

These servers keep no status of past transactions, so the transaction leaves one itself:
just before COMMIT, a transaction that wrote inserts a client-generated id into
``resilientdb_outcomes`` (created on first use, outside any transaction: MySQL DDL commits
implicitly). The row commits or rolls back with the transaction. After a lost COMMIT the
row's presence answers the question, once the lost transaction can no longer be in progress:

* MySQL/MariaDB: a locking read of the row (``LOCK IN SHARE MODE``) waits for the row lock
  that the lost transaction holds on it until it commits or rolls back; a lock wait timeout
  is asked again, within the deadline;
* SQLite: ``BEGIN IMMEDIATE`` takes the write lock, which the lost connection holds until its
  COMMIT has finished one way or the other; then the row is read, and ROLLBACK.

Present: committed. Absent: rolled back, since the insert itself was acknowledged before
COMMIT was sent (after a crash or failover, absent means not committed in the surviving
database, which is what a re-run must be judged against). Old rows are removed by a bounded
background sweep (one DELETE of at most ``SWEEP_ROWS`` rows, at most every ``retention / 10``
seconds, started after a commit and owned by the backend's monitor); ``outcome_retention``
must exceed any call's deadline.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
import weakref
from typing import TYPE_CHECKING

from ._transaction import TxState
from .backends.base import ErrorKind

if TYPE_CHECKING:
    from ._engine import Engine
    from ._monitor import Monitor
    from ._transaction import Transaction

__all__ = ["FAMILIES", "TABLE", "ensure_table", "insert", "present", "sweep_later"]

TABLE = "resilientdb_outcomes"
FAMILIES = ("mysql", "sqlite")
SWEEP_ROWS = 1000
_CREATE = {
    "mysql": f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(id CHAR(32) NOT NULL PRIMARY KEY, created DOUBLE NOT NULL, KEY (created)) ENGINE=InnoDB",
    "sqlite": f"CREATE TABLE IF NOT EXISTS {TABLE} (id TEXT PRIMARY KEY, created REAL NOT NULL)",
}
_INSERT = {
    "mysql": f"INSERT INTO {TABLE} (id, created) VALUES (%s, %s)",
    "sqlite": f"INSERT INTO {TABLE} (id, created) VALUES (?, ?)",
}
_PRESENT = {
    "mysql": f"SELECT COUNT(*) FROM {TABLE} WHERE id = %s LOCK IN SHARE MODE",
    "sqlite": f"SELECT COUNT(*) FROM {TABLE} WHERE id = ?",
}
_SWEEP = {
    "mysql": f"DELETE FROM {TABLE} WHERE created < %s LIMIT {SWEEP_ROWS}",
    "sqlite": f"DELETE FROM {TABLE} WHERE rowid IN "
    f"(SELECT rowid FROM {TABLE} WHERE created < ? LIMIT {SWEEP_ROWS})",
}


class _State:
    __slots__ = ("last_sweep", "ready")

    def __init__(self) -> None:
        self.ready = False  # the table exists (as far as this process knows)
        self.last_sweep = -math.inf  # the first commit sweeps what an earlier run left


_states: weakref.WeakKeyDictionary[Monitor, _State] = weakref.WeakKeyDictionary()


def _state(engine: Engine) -> _State:
    state = _states.get(engine.monitor)
    if state is None:
        state = _states[engine.monitor] = _State()
    return state


async def ensure_table(engine: Engine, deadline: float | None) -> None:
    """Create the marker table once, on a connection of its own (no transaction open)."""
    state = _state(engine)
    if state.ready:
        return
    cm, conn, _ = await engine.checkout(deadline)
    try:
        await conn.execute(_CREATE[engine.backend.facts.family])
    except BaseException:
        engine.backend.discard(conn)
        engine.monitor.release_later(cm.__aexit__(None, None, None))
        raise
    await cm.__aexit__(None, None, None)
    state.ready = True


async def insert(engine: Engine, tx: Transaction) -> str | None:
    """Inside the transaction, just before COMMIT: the marker's id, or None when the insert
    was refused (the table was dropped: COMMIT then goes unresolved, and the next transaction
    creates the table again). A lost connection raises: COMMIT was not sent."""
    marker = uuid.uuid4().hex
    try:
        # Through the handle: a lost connection, a lost race (rolled back whole) or a
        # statement that ended the transaction are handled as for any of its statements.
        await tx.execute(_INSERT[engine.backend.facts.family], marker, time.time())
    except Exception:
        if tx.state is not TxState.OPEN:
            raise
        _state(engine).ready = False  # refused, the transaction still open: unresolved
        return None
    return marker


async def present(engine: Engine, limit: float, marker: str) -> str:
    """``"committed"`` or ``"aborted"``: whether the marker row exists, once no transaction
    can hold it any more. Errors are raised (the caller asks again or gives up)."""
    family = engine.backend.facts.family
    cm, conn, generation = await engine.checkout(limit)
    try:
        if family == "sqlite":
            await conn.execute("BEGIN IMMEDIATE")
            try:
                n = await conn.fetchval(_PRESENT[family], marker)
            finally:
                await conn.execute("ROLLBACK")
        else:
            n = await conn.fetchval(_PRESENT[family], marker)
    except BaseException as exc:
        lost = not isinstance(exc, Exception) or isinstance(exc, TimeoutError)
        lost = lost or engine.backend.classify(exc, conn) is ErrorKind.CONNECTION
        if lost:
            engine.backend.discard(conn)
            if isinstance(exc, Exception):
                engine.monitor.report_lost(generation, exc, "outcome marker")
            engine.monitor.release_later(cm.__aexit__(None, None, None))
        else:
            await cm.__aexit__(None, None, None)
        raise
    await cm.__aexit__(None, None, None)
    return "committed" if n else "aborted"


def sweep_later(engine: Engine) -> None:
    """After a commit: remove old markers in the background, at most every
    ``retention / 10`` seconds, one bounded DELETE at a time."""
    state = _state(engine)
    retention: float = engine.options.outcome_retention
    now = time.monotonic()
    if now - state.last_sweep < retention / 10:
        return
    state.last_sweep = now
    engine.monitor.release_later(_sweep(engine, time.time() - retention))


async def _sweep(engine: Engine, before: float) -> None:
    bound = min(engine.options.connect_timeout, 5.0)
    async with asyncio.timeout(bound * 2):
        cm, conn, _ = await engine.checkout(asyncio.get_running_loop().time() + bound)
        try:
            await conn.execute(_SWEEP[engine.backend.facts.family], before, timeout=bound)
        finally:
            await cm.__aexit__(None, None, None)
