"""The SQLite adapter's connections: one aiosqlite connection and its worker thread (a
:class:`SQLiteConnection`), what runs on that thread, and closing it for good (``dispose``).

A caller uses a connection through a lease (``lease.py``); the pool (``pool.py``) hands them
out; the design is in ``backend.py``'s docstring. Functions marked "worker thread" run on the
aiosqlite thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import aiosqlite

from ..._row import make_rows, row_type
from .._kit.pool import CLOSE_TIMEOUT
from .errors import WAIT_CODES, DatabaseFileMoved, error_code

__all__ = [
    "BUSY_SLICE",
    "CLOSE_CURSOR",
    "CURSOR",
    "EXECUTE",
    "FETCH",
    "FETCHROW",
    "FETCHVAL",
    "MANY",
    "MORE",
    "SETTLE_TIMEOUT",
    "Call",
    "SQLiteConnection",
    "dispose",
    "prepare",
    "set_busy",
]

logger = logging.getLogger("resilientdb")

SETTLE_TIMEOUT = 2.0  # waiting for an interrupted statement to end before giving up on it
BUSY_SLICE = 0.1  # SQLite's busy wait cannot be interrupted: wait in slices this long
FILE_CHECK_INTERVAL = 0.05  # os.stat costs twice a trivial SELECT: at most this often
FETCH, FETCHROW, FETCHVAL, EXECUTE, MANY = range(5)  # what a call returns
# A stream's calls (stream.py): open a cursor and leave it open, read a batch, close it.
CURSOR, MORE, CLOSE_CURSOR = range(5, 8)
# What the backend's begin_statements() sends for transaction(readonly=True): a plain
# deferred BEGIN in SQLite's grammar, recognised by the worker, which turns query_only on.
BEGIN_READ_ONLY = "BEGIN DEFERRED TRANSACTION"


class Call:
    """One statement's flags, shared with the worker thread."""

    __slots__ = ("cancelled", "done")

    def __init__(self) -> None:
        self.cancelled = False  # the caller gave up: do not start, stop waiting for locks
        self.done = False  # the worker thread has finished with it


class SQLiteConnection:
    """One aiosqlite connection and its worker thread; held by at most one lease at a time.

    ``in_tx`` and ``dead`` are written by the worker thread at the end of each call, so the
    event loop learns the connection's state without touching the sqlite3 handle (which
    another thread may be closing).
    """

    __slots__ = (
        "_check_at", "_current", "_lock", "_tx", "aconn", "busy", "db", "dead", "discarded",
        "generation", "ident", "idle_since", "in_tx", "path", "query_only", "timeout",
    )  # fmt: skip

    def __init__(
        self,
        aconn: aiosqlite.Connection,
        ident: tuple[int, int] | None,
        path: str | None,
        busy: float,
        timeout: float | None,
        generation: int,
    ) -> None:
        self.aconn = aconn
        self.db: sqlite3.Connection = cast(Any, aconn)._conn
        self._tx = cast(Any, aconn)._tx  # aiosqlite's queue of (future, function) to run
        self.ident = ident  # (st_dev, st_ino) of the file when opened; None for :memory:
        self.path = path
        self.busy = busy
        self.timeout = timeout  # command_timeout: the bound of calls made with timeout=None
        self.generation = generation
        self.discarded = False  # never to be handed out again
        self.in_tx = False  # a transaction was open after the last call
        self.dead = False  # sqlite3 reported the connection closed
        self.query_only = False  # PRAGMA query_only is on for a read-only transaction
        self.idle_since = 0.0
        self._lock = threading.Lock()
        self._current: Call | None = None  # the call running on the worker thread
        self._check_at = 0.0  # when the file's identity is due to be checked again

    def submit(self, fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        """Run ``fn(*args)`` on the worker thread; its result as a future.

        aiosqlite's own ``_execute``, without its coroutine frame: this is every call's path.
        """
        aconn = cast(Any, self.aconn)
        if not aconn._running or aconn._connection is None:
            raise ValueError("Connection closed")  # as aiosqlite's: nothing was sent
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._tx.put_nowait((future, partial(fn, *args)))
        return future

    def is_closed(self) -> bool:
        """Whether aiosqlite or sqlite3 has closed the connection (as far as known)."""
        aconn = cast(Any, self.aconn)
        return self.dead or aconn._connection is None or not aconn._running

    def interrupt(self, call: Call) -> bool:
        """Mark ``call`` cancelled (a call still queued then never starts) and abort its
        statement if it is the one running; whether it was.

        Under the lock the worker takes to switch calls, so that a later call is never hit."""
        with self._lock:
            call.cancelled = True
            if self._current is not call:
                return False  # queued (the worker will skip it) or finished
            with contextlib.suppress(sqlite3.Error):
                self.db.interrupt()
            return True

    def work(self, call: Call, op: int, sql: str, params: Any, column: int) -> Any:
        """Worker thread: the whole call in one round trip."""
        now = time.monotonic()
        with self._lock:
            if call.cancelled:
                call.done = True
                return None  # its caller is gone: never start it
            self._current = call
        try:
            if self.ident is not None and now >= self._check_at:
                self._check_file()
                self._check_at = now + FILE_CHECK_INTERVAL
            if op == MANY:
                return self._batch(call, sql, params)
            if op >= CURSOR:
                return self._stream(call, op, sql, params)
            if sql == BEGIN_READ_ONLY:
                # transaction(readonly=True): SQLite has no read-only transaction, but
                # query_only refuses every write until note_state() lifts it at the end.
                self.db.execute("PRAGMA query_only = ON").close()
                self.query_only = True
                sql = "BEGIN DEFERRED"
            cur = self._execute(call, sql, params)
            try:
                if op == FETCH:
                    return make_rows([d[0] for d in cur.description or ()], cur.fetchall())
                if op == EXECUTE:
                    if cur.description is not None:
                        cur.fetchall()  # run it to the end, as a server would
                    return cur.rowcount
                row = cur.fetchone()
                if row is None:
                    return None
                if op == FETCHVAL:
                    return row[column]
                return row_type([d[0] for d in cur.description])(row)
            finally:
                cur.close()
        finally:
            self.note_state()
            with self._lock:
                self._current = None
                call.done = True

    def note_state(self) -> None:
        """Worker thread: record whether a transaction is open (or the connection closed)."""
        try:
            self.in_tx = self.db.in_transaction
            if self.query_only and not self.in_tx:  # the read-only transaction has ended
                self.db.execute("PRAGMA query_only = OFF").close()
                self.query_only = False
        except sqlite3.Error:  # ProgrammingError: closed underneath
            self.dead = True

    def _stream(self, call: Call, op: int, sql: str, params: Any) -> Any:
        """Worker thread: a stream's call; the cursor stays open between calls."""
        if op == CURSOR:
            return self._execute(call, sql, params)
        cur = params[0]
        if op == MORE:
            return cur.fetchmany(params[1])
        cur.close()
        return None

    def _batch(self, call: Call, sql: str, rows: Any) -> None:
        db = self.db
        own = not db.in_transaction
        if own:
            self._execute(call, "BEGIN IMMEDIATE").close()
        try:
            db.executemany(sql, rows).close()
            if own:
                self._execute(call, "COMMIT").close()
        except BaseException:
            if own and db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK").close()
            raise

    def _execute(self, call: Call, sql: str, params: Any = ()) -> sqlite3.Cursor:
        """Worker thread: run ``sql``, waiting for the write lock in busy slices.

        A statement that got BUSY after waiting a whole slice is run again while the busy
        timeout lasts, but only if the transaction state is what it was before: then it did
        nothing (outside a transaction the implicit one was rolled back; inside one, SQLite
        undid the statement or, for COMMIT, kept the transaction for a retry). If SQLite rolled
        an open transaction back, or BUSY came without waiting (a deadlock SQLite saw), the
        error is final."""
        db = self.db
        before = db.in_transaction
        started = attempt = time.monotonic()
        slice_ = min(BUSY_SLICE, self.busy)
        while True:
            try:
                return db.execute(sql, params)
            except sqlite3.OperationalError as exc:
                now = time.monotonic()
                if (
                    error_code(exc) not in WAIT_CODES
                    or call.cancelled
                    or db.in_transaction != before
                    or now - attempt < slice_ * 0.9
                    or now - started >= self.busy - slice_ * 0.5
                ):
                    raise
                attempt = now

    def _check_file(self) -> None:
        path = cast(str, self.path)
        try:
            st = os.stat(path)
        except OSError:
            raise DatabaseFileMoved(path) from None
        if (st.st_dev, st.st_ino) != self.ident:
            raise DatabaseFileMoved(path)


def set_busy(db: sqlite3.Connection, seconds: float) -> None:
    """Worker thread: SQLite's busy timeout of ``db``."""
    db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}").close()


def prepare(conn: SQLiteConnection, seconds: float) -> None:
    """Worker thread: the pool's state, for a new connection (after ``on_connect``) or one
    given back raw: busy slices of ``seconds``, no transaction left open."""
    db = conn.db
    if db.in_transaction:
        db.execute("ROLLBACK").close()
    set_busy(db, seconds)
    conn.note_state()


def _worker(aconn: aiosqlite.Connection) -> threading.Thread | None:
    thread = getattr(aconn, "_thread", None)
    return thread if isinstance(thread, threading.Thread) else None


async def dispose(aconn: aiosqlite.Connection) -> None:
    """Close ``aconn`` and join its thread, bounded; safe in any state, idempotent.

    aiosqlite's own ``close()`` is not safe against a second closer: whichever stops the thread
    second waits forever for a thread that has gone. So the connection is marked closed at
    once (a later ``aconn.close()`` returns immediately), the sqlite3 connection is closed on
    its thread behind whatever is queued, and the thread is stopped only if a ``close()``
    already in flight did not stop it meanwhile."""
    a = cast(Any, aconn)
    db, a._connection = a._connection, None
    if db is not None:
        with contextlib.suppress(Exception):
            db.interrupt()  # a statement still running would hold the close up
    thread = _worker(aconn)
    if thread is None or thread.ident is None:
        return  # never started
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CLOSE_TIMEOUT
    if a._running and db is not None:
        closed = loop.create_future()
        a._tx.put_nowait((closed, db.close))
        await asyncio.wait({closed}, timeout=CLOSE_TIMEOUT)
        # A close() queued before ours has had its result first: its stop() runs now.
        await asyncio.sleep(0)
    if a._running:
        aconn.stop()  # finds no connection left: only ends the thread
    while thread.is_alive():
        if loop.time() >= deadline:
            logger.warning("resilientdb: an aiosqlite worker thread did not end in time")
            return
        await asyncio.sleep(0.001)
