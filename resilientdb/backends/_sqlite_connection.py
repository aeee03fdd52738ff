"""The SQLite adapter's connections: one aiosqlite connection (a ``Link``) and the leases
(:class:`SQLiteConnection`) through which callers use it with asyncpg's API.

Split from ``sqlite.py`` (the pool and the error table) to keep modules small; the design is
in that module's docstring. Functions marked "worker thread" run on the aiosqlite thread.
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

if TYPE_CHECKING:
    from ._sqlite_pool import SQLitePool

__all__ = ["DatabaseFileMoved", "Link", "SQLiteConnection", "error_code", "set_busy"]

CLOSE_TIMEOUT = 5.0
SETTLE_TIMEOUT = 2.0  # waiting for an interrupted statement to end before giving up on it
BUSY_SLICE = 0.1  # SQLite's busy wait cannot be interrupted: wait in slices this long
FILE_CHECK_INTERVAL = 0.05  # os.stat costs twice a trivial SELECT: at most this often
# Busy results that mean "SQLite waited and the lock is still taken": worth another slice.
_WAIT_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_BUSY_RECOVERY, 773})
_FETCH, _FETCHROW, _FETCHVAL, _EXECUTE, _MANY = range(5)
_OPENERS = ("BEGIN", "SAVEPOINT")  # the statements that open a transaction in SQLite


def error_code(exc: BaseException) -> int | None:
    """The (extended) SQLite result code of ``exc``, from its code or else its name."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str) and name.startswith("SQLITE_"):
        value = getattr(sqlite3, name, None)
        return value if isinstance(value, int) else None
    return None


class DatabaseFileMoved(sqlite3.OperationalError):
    """The database file is no longer at its path (moved, deleted or replaced).

    Raised before the statement runs (so it is replayed safely); classified CONNECTION, as
    ``SQLITE_READONLY_DBMOVED``, whose code it carries.
    """

    def __init__(self, path: str) -> None:
        super().__init__(f"the database file {path!r} was moved, deleted or replaced")
        self.sqlite_errorcode = sqlite3.SQLITE_READONLY_DBMOVED
        self.sqlite_errorname = "SQLITE_READONLY_DBMOVED"


class _Call:
    """One statement's flags, shared with the worker thread."""

    __slots__ = ("cancelled", "done")

    def __init__(self) -> None:
        self.cancelled = False  # the caller gave up: do not start, stop waiting for locks
        self.done = False  # the worker thread has finished with it


class Link:
    """One aiosqlite connection and its worker thread, shared by the leases on it.

    Statements of several leases queue on the one worker thread and run in order, each in
    autocommit. A lease that needs the connection whole (a transaction, the raw connection)
    makes it ``exclusive``: the pool hands it to nobody else until that lease ends, and what
    others queued before runs first.
    """

    __slots__ = (
        "_check_at", "_current", "_lock", "aconn", "busy", "db", "discarded", "exclusive",
        "generation", "ident", "idle_since", "path", "since", "submit", "timeout", "users",
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
        self.users = 0  # leases holding it
        self.exclusive = False
        self.discarded = False
        self.idle_since = 0.0
        self._lock = threading.Lock()
        self._current: _Call | None = None  # the call running on the worker thread
        self.since = 0.0  # when that call started (time.monotonic), 0.0 when none runs
        self._check_at = 0.0  # when the file's identity is due to be checked again

    def is_closed(self) -> bool:
        """Whether aiosqlite or sqlite3 has closed the connection."""
        aconn = cast(Any, self.aconn)
        if aconn._connection is None or not aconn._running:
            return True
        try:
            self.db.in_transaction  # noqa: B018 - raises once sqlite3 has closed it
        except sqlite3.ProgrammingError:
            return True
        return False

    def interrupt(self, call: _Call) -> bool:
        """Mark ``call`` cancelled (a call still queued then never starts) and abort its
        statement if it is the one running; whether it was.

        Under the lock the worker takes to switch calls, so another lease's statement is
        never hit by mistake."""
        with self._lock:
            call.cancelled = True
            if self._current is not call:
                return False  # queued (the worker will skip it) or finished
            with contextlib.suppress(sqlite3.Error):
                self.db.interrupt()
            return True

    def work(self, call: _Call, op: int, sql: str, params: Any, column: int, whole: bool) -> Any:
        """Worker thread: the whole call in one round trip."""
        now = time.monotonic()
        with self._lock:
            if call.cancelled:
                call.done = True
                return None  # its caller is gone: never start it
            self._current, self.since = call, now
        try:
            if self.ident is not None and now >= self._check_at:
                self._check_file()
                self._check_at = now + FILE_CHECK_INTERVAL
            db = self.db
            if op == _MANY:
                return self._batch(call, sql, params)
            try:
                cur = db.execute(sql, params)
            except sqlite3.OperationalError as exc:
                cur = self._wait_busy(call, exc, now, sql, params)
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
                if not whole and db.in_transaction:
                    # A transaction opened by a statement that execute() did not see as one
                    # (a comment before BEGIN) would take other callers' statements in:
                    # undone at once, as a pool's reset would.
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK").close()
        finally:
            with self._lock:
                self._current, self.since = None, 0.0
                call.done = True

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

    def _execute(self, call: _Call, sql: str) -> sqlite3.Cursor:
        started = time.monotonic()
        try:
            return self.db.execute(sql)
        except sqlite3.OperationalError as exc:
            return self._wait_busy(call, exc, started, sql, ())

    def _wait_busy(
        self, call: _Call, exc: sqlite3.OperationalError, started: float, sql: str, params: Any
    ) -> sqlite3.Cursor:
        """After ``exc``: run the statement again while SQLite reports BUSY after waiting a
        whole slice, up to the busy timeout. A BUSY returned without waiting (a deadlock SQLite
        saw) is final. Safe to repeat: a statement that got BUSY did nothing."""
        slice_ = min(BUSY_SLICE, self.busy)
        attempt = started
        while True:
            now = time.monotonic()
            if (
                error_code(exc) not in _WAIT_CODES
                or call.cancelled
                or now - attempt < slice_ * 0.9
                or now - started >= self.busy - slice_ * 0.5
            ):
                raise exc
            attempt = now
            try:
                return self.db.execute(sql, params)
            except sqlite3.OperationalError as again:
                exc = again

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
    from the pool, leaving gives it back. Each call is one round trip to the worker thread.
    ``timeout=None`` means the backend's ``command_timeout``; past it the statement is
    interrupted and ``TimeoutError`` raised. Parameters use SQLite's paramstyles: positional
    arguments for ``?``, or one mapping for ``:name``. ``execute`` returns sqlite3's
    ``rowcount`` (rows changed; -1 for statements that change none, such as SELECT or CREATE);
    ``executemany`` runs the batch in one ``BEGIN IMMEDIATE`` transaction (all rows or none,
    like asyncpg's) and returns None. Single statements run in autocommit. ``execute("BEGIN
    ...")`` holds the connection whole until the lease ends (``SQLiteBackend.begin_statements``);
    a transaction still open then is rolled back.
    """

    __slots__ = ("_abandoned", "_backend", "_lent", "_link", "_timeout", "_whole")

    def __init__(self, backend: SQLitePool, timeout: float | None) -> None:
        self._backend = backend
        self._timeout = timeout  # for acquiring
        self._link: Link | None = None
        self._abandoned: list[_Call] | None = None  # cancelled calls not yet ended
        self._whole = False  # holds the connection exclusively (a transaction, raw use)
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

    @property
    def raw(self) -> aiosqlite.Connection:
        """The aiosqlite connection."""
        return self.link.aconn

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
        """Run one statement to completion; the number of rows it changed (or -1).

        ``BEGIN ...`` or ``SAVEPOINT ...`` (which opens a transaction outside one) takes the
        connection whole for the rest of the lease, as ``begin()`` does."""
        if not self._whole and query.lstrip()[:9].upper().startswith(_OPENERS):
            self.take_whole()
        return self._call(_EXECUTE, query, args, 0, timeout)

    def executemany(
        self, command: str, args: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> Coroutine[Any, Any, None]:
        """Run ``command`` for each argument tuple, atomically."""
        return self._call(_MANY, command, (args,), 0, timeout)

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open (False once the connection is closed)."""
        with contextlib.suppress(sqlite3.Error, ValueError):
            return self.link.db.in_transaction
        return False

    def is_closed(self) -> bool:
        """Whether the connection is closed (or this lease has ended)."""
        link = self._link
        return link is None or link.is_closed()

    def take_whole(self) -> None:
        """Hold the connection exclusively until this lease ends (transactions, raw use).

        Statements other leases queued before run first; nobody else gets it after."""
        self._whole = True
        self.link.exclusive = True

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
                return await link.submit(link.work, call, op, sql, params, column, self._whole)
            async with asyncio.timeout(timeout):
                return await link.submit(link.work, call, op, sql, params, column, self._whole)
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
        """The raw connection, held whole, with SQLite's own busy timeout for its user."""
        self.take_whole()
        link = self.link
        if not self._lent:
            self._lent = True
            # Queued (the worker is FIFO): it runs before the borrower's first statement.
            with contextlib.suppress(Exception):
                task = partial(set_busy, link.db, link.busy)
                cast(Any, link.aconn)._tx.put_nowait((None, task))
        return link.aconn

    async def reset(self, link: Link) -> None:
        """After a whole lease: the pool's busy slices again, no transaction left open."""
        if self._lent:
            await link.submit(set_busy, link.db, min(BUSY_SLICE, link.busy))
        if link.db.in_transaction:
            self._link = link
            try:
                await self._call(_EXECUTE, "ROLLBACK", (), 0, CLOSE_TIMEOUT)
            finally:
                self._link = None
        link.exclusive = False


def set_busy(db: sqlite3.Connection, seconds: float) -> None:
    """Worker thread: SQLite's busy timeout of ``db``."""
    db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}").close()
