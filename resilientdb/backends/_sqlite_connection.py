"""The SQLite adapter's connections: one aiosqlite connection (a ``Link``) and the lease
(:class:`SQLiteConnection`) through which one caller at a time uses it with asyncpg's API.

Split from ``sqlite.py`` (the error table) and ``_sqlite_pool.py`` (the pool) to keep modules
small; the design is in ``sqlite.py``'s docstring. Functions marked "worker thread" run on the
aiosqlite thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import aiosqlite

from .._row import Row, make_rows
from ._sqlite_errors import _WAIT_CODES, DatabaseFileMoved, error_code

if TYPE_CHECKING:
    from ._sqlite_pool import SQLitePool

__all__ = ["Link", "SQLiteConnection", "prepare"]

CLOSE_TIMEOUT = 5.0
SETTLE_TIMEOUT = 2.0  # waiting for an interrupted statement to end before giving up on it
BUSY_SLICE = 0.1  # SQLite's busy wait cannot be interrupted: wait in slices this long
FILE_CHECK_INTERVAL = 0.05  # os.stat costs twice a trivial SELECT: at most this often
_FETCH, _FETCHROW, _FETCHVAL, _EXECUTE, _MANY = range(5)


class _Call:
    """One statement's flags, shared with the worker thread."""

    __slots__ = ("cancelled", "done")

    def __init__(self) -> None:
        self.cancelled = False  # the caller gave up: do not start, stop waiting for locks
        self.done = False  # the worker thread has finished with it


class Link:
    """One aiosqlite connection and its worker thread; held by at most one lease at a time.

    ``in_tx`` and ``dead`` are written by the worker thread at the end of each call, so the
    event loop learns the connection's state without touching the sqlite3 handle (which
    another thread may be closing).
    """

    __slots__ = (
        "_check_at", "_current", "_lock", "aconn", "busy", "db", "dead", "discarded",
        "generation", "ident", "idle_since", "in_tx", "path", "submit", "timeout",
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
        self.submit: Callable[..., Any] = cast(Any, aconn)._execute  # runs fn on the thread
        self.ident = ident  # (st_dev, st_ino) of the file when opened; None for :memory:
        self.path = path
        self.busy = busy
        self.timeout = timeout  # command_timeout: the bound of calls made with timeout=None
        self.generation = generation
        self.discarded = False  # never to be handed out again
        self.in_tx = False  # a transaction was open after the last call
        self.dead = False  # sqlite3 reported the connection closed
        self.idle_since = 0.0
        self._lock = threading.Lock()
        self._current: _Call | None = None  # the call running on the worker thread
        self._check_at = 0.0  # when the file's identity is due to be checked again

    def is_closed(self) -> bool:
        """Whether aiosqlite or sqlite3 has closed the connection (as far as known)."""
        aconn = cast(Any, self.aconn)
        return self.dead or aconn._connection is None or not aconn._running

    def interrupt(self, call: _Call) -> bool:
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

    def work(self, call: _Call, op: int, sql: str, params: Any, column: int) -> Any:
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
            if op == _MANY:
                return self._batch(call, sql, params)
            cur = self._execute(call, sql, params)
            try:
                if op == _FETCH:
                    return make_rows([d[0] for d in cur.description or ()], cur.fetchall())
                if op == _EXECUTE:
                    if cur.description is not None:
                        cur.fetchall()  # run it to the end, as a server would
                    return cur.rowcount
                row = cur.fetchone()
                if row is None:
                    return None
                if op == _FETCHVAL:
                    return row[column]
                return make_rows([d[0] for d in cur.description], [row])[0]
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
        except sqlite3.Error:  # ProgrammingError: closed underneath
            self.dead = True

    def _batch(self, call: _Call, sql: str, rows: Any) -> None:
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

    def _execute(self, call: _Call, sql: str, params: Any = ()) -> sqlite3.Cursor:
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
                    error_code(exc) not in _WAIT_CODES
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


class SQLiteConnection:
    """One lease on a pooled connection, with asyncpg's API (the uniform ``Connection``).

    ``backend.acquire()`` returns it as an async context manager; entering takes a connection
    from the pool for this lease alone, leaving gives it back (rolled back first if a
    transaction is still open). Each call is one round trip to the worker thread.
    ``timeout=None`` means the backend's ``command_timeout``; past it the statement is
    interrupted and ``TimeoutError`` raised. Parameters use SQLite's paramstyles: positional
    arguments for ``?``, or one mapping for ``:name``. ``execute`` returns sqlite3's
    ``rowcount`` (rows changed; -1 for statements that change none, such as SELECT or CREATE);
    ``executemany`` runs the batch in one ``BEGIN IMMEDIATE`` transaction (all rows or none,
    like asyncpg's) unless a transaction is open, and returns None. Outside a transaction each
    statement commits on its own (autocommit).
    """

    __slots__ = ("_abandoned", "_backend", "_lent", "_link", "_timeout")

    def __init__(self, backend: SQLitePool, timeout: float | None) -> None:
        self._backend = backend
        self._timeout = timeout  # for acquiring
        self._link: Link | None = None
        self._abandoned: list[_Call] | None = None  # cancelled calls not yet ended
        self._lent = False  # handed out raw: runs with SQLite's own busy timeout

    async def __aenter__(self) -> SQLiteConnection:
        backend = self._backend
        self._link = backend._checkout_now() or await backend._checkout(self._timeout)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        link, self._link = self._link, None
        if link is not None and not self._backend._checkin_now(link, self):
            await self._backend._checkin(link, self)

    @property
    def link(self) -> Link:
        link = self._link
        if link is None:
            raise ValueError("no active connection")  # as aiosqlite's: nothing was sent
        return link

    # Plain functions returning the call's coroutine: one coroutine frame less per call.
    def fetch(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Coroutine[Any, Any, list[Row]]:
        """All rows."""
        return self._call(_FETCH, query, args, 0, timeout)

    def fetchrow(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Coroutine[Any, Any, Row | None]:
        """The first row, or None."""
        return self._call(_FETCHROW, query, args, 0, timeout)

    def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Coroutine[Any, Any, Any]:
        """One value of the first row, or None without rows."""
        return self._call(_FETCHVAL, query, args, column, timeout)

    def execute(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Coroutine[Any, Any, int]:
        """Run one statement to completion; the number of rows it changed (or -1)."""
        return self._call(_EXECUTE, query, args, 0, timeout)

    def executemany(
        self, command: str, args: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> Coroutine[Any, Any, None]:
        """Run ``command`` for each argument tuple, atomically."""
        return self._call(_MANY, command, (args,), 0, timeout)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction was open after the last statement."""
        link = self._link
        return link is not None and link.in_tx

    def is_closed(self) -> bool:
        """Whether the connection is closed (or this lease has ended)."""
        link = self._link
        return link is None or link.is_closed()

    # -- the engine -------------------------------------------------------------------------

    async def _call(
        self, op: int, sql: str, args: tuple[Any, ...], column: int, timeout: float | None
    ) -> Any:
        link = self._link
        if link is None:
            raise ValueError("no active connection")  # as aiosqlite's: nothing was sent
        if timeout is None:
            timeout = link.timeout
        call = _Call()
        # One mapping binds :name parameters; executemany's rows come as args[0].
        params = (
            args[0] if op == _MANY or (len(args) == 1 and isinstance(args[0], Mapping)) else args
        )
        try:
            if timeout is None:
                return await link.submit(link.work, call, op, sql, params, column)
            async with asyncio.timeout(timeout):
                return await link.submit(link.work, call, op, sql, params, column)
        except (asyncio.CancelledError, TimeoutError):
            # Cancelled or timed out: the statement must not go on without its caller. One
            # still queued never starts; a running one is interrupted, and the lease does not
            # end before it has (settle).
            if link.interrupt(call):
                if self._abandoned is None:
                    self._abandoned = []
                self._abandoned.append(call)
            raise

    # -- for the pool -------------------------------------------------------------------------

    def clean(self, link: Link) -> bool:
        """Whether ``link`` can go back to the pool as it is: nothing of this lease still
        running, no transaction open, never lent raw."""
        return not (self._abandoned or self._lent or link.in_tx)

    async def settle(self, link: Link) -> bool:
        """Wait until this lease's cancelled statements have ended; False if one would not."""
        pending = self._abandoned
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_TIMEOUT
        while pending:
            pending[:] = [c for c in pending if not c.done]
            if not pending:
                break
            if loop.time() >= deadline:
                return False
            for call in pending:
                # Again and again: an interrupt that lands before the statement starts is lost.
                link.interrupt(call)
            await asyncio.sleep(0.005)
        return True

    def lend(self) -> aiosqlite.Connection:
        """The raw connection, with SQLite's own busy timeout for its user."""
        link = self.link
        if not self._lent:
            self._lent = True
            # Queued (the worker is FIFO): it runs before the borrower's first statement.
            with contextlib.suppress(Exception):
                task = partial(set_busy, link.db, link.busy)
                cast(Any, link.aconn)._tx.put_nowait((None, task))
        return link.aconn

    async def reset(self, link: Link) -> bool:
        """After this lease: put ``link`` back in the pool's state (busy slices, no open
        transaction); whether that is certain. Never raises for a database error."""
        try:
            if self._lent:
                # Behind whatever the borrower left queued (FIFO); it may have done anything.
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await link.submit(prepare, link, min(BUSY_SLICE, link.busy))
            elif link.in_tx:
                self._link = link
                try:
                    await self._call(_EXECUTE, "ROLLBACK", (), 0, CLOSE_TIMEOUT)
                finally:
                    self._link = None
        except Exception:
            return False
        return not (link.in_tx or self._abandoned or link.is_closed())


def set_busy(db: sqlite3.Connection, seconds: float) -> None:
    """Worker thread: SQLite's busy timeout of ``db``."""
    db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}").close()


def prepare(link: Link, seconds: float) -> None:
    """Worker thread: the pool's state, for a new connection (after ``on_connect``) or one
    given back raw: busy slices of ``seconds``, no transaction left open."""
    db = link.db
    if db.in_transaction:
        db.execute("ROLLBACK").close()
    set_busy(db, seconds)
    link.note_state()
