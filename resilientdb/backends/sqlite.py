"""The SQLite adapter, on aiosqlite.

A file database (``sqlite:///relative.db``, ``sqlite:////abs/path.db``; a relative path is
resolved once, at construction) gets a small pool of aiosqlite connections, one worker thread
each, opened on demand up to ``max_size``. Every connection:

- opens the file through a SQLite URI. Only the very first successful open may create it
  (``mode=rwc``, the default; ``?mode=rw`` forbids even that, ``?mode=ro`` opens read-only);
  every later open, reconnect and probe uses ``mode=rw``, so a file that has gone is
  ``SQLITE_CANTOPEN`` (PERMANENT: FAILED, probed every ``failed_probe_interval``, healed when
  the file is back), never a new, empty database in its place;
- checks before a statement (at most every 50 ms: an ``os.stat`` costs twice a trivial
  SELECT) that the path still names the file it opened: SQLite goes on using a file that was
  renamed or deleted, so writes would silently land in a file nobody opens again. A mismatch
  raises :class:`DatabaseFileMoved` before anything runs: reconnect, replay, FAILED while it
  is gone (replacing a WAL database under open connections stays unsafe, SQLite's own rule);
- runs in WAL mode (``?journal_mode=`` picks another), so readers run beside the writer, and
  in autocommit (``isolation_level=None``): each statement is its own transaction.

Pooling: one lease holds one connection, alone, like any pool: an idle connection, else a new
one up to ``max_size``, else the caller queues (``acquire_timeout``; first come, first served).
A connection goes back to the pool only in a known state: nothing of its lease still running,
no transaction open (one left open is rolled back; if that fails, or the state is not certain,
the connection is closed and replaced). So a statement never runs inside another caller's
transaction, and a result reported to a caller is never undone by the adapter afterwards.

Concurrent writers: SQLite has one write lock per file. A writer that finds it taken waits up
to the busy timeout (``?timeout=`` or ``connect_kwargs["timeout"]``, seconds, default 5), in
slices of 100 ms so that a cancelled or timed-out caller stops waiting promptly (SQLite's
``interrupt()`` does not end a busy wait). A slice is run again only while the transaction
state is what it was before the statement, which means the statement did nothing; if SQLite
rolled an open transaction back, the BUSY error is final. Past the busy timeout
``SQLITE_BUSY`` is RETRYABLE: the statement did nothing, and the supervisor runs it again
after a backoff (``max_replays``).
The raw connection and the ``on_connect`` hook wait the whole busy timeout, SQLite's way.

``:memory:`` is one connection (a new connection would be a new, empty database): the pool
size is 1, callers take turns on it, ``refresh()`` and ``discard()`` keep it while it is open
and in a known state, and once it is closed nothing brings its data back; the next connection
is a new, empty database (logged).

Cancellation: a caller cancelled (or timed out) mid-statement interrupts its statement on the
worker thread (``sqlite3.Connection.interrupt``, only while that statement is the one
running), and its lease does not end before the statement has; a statement still queued when
its caller gave up never starts.

aiosqlite has no public way to run a function on its thread or to join the thread: this uses
its internals ``_execute``, ``_conn``, ``_connection``, ``_running``, ``_tx`` and the thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, cast

import aiosqlite

from ..config import DSN, Options
from ..errors import ConfigurationError
from ._sqlite_connection import CLOSE_TIMEOUT, Link, SQLiteConnection
from ._sqlite_errors import DatabaseFileMoved, error_code
from ._sqlite_pool import PoolClosed, SQLitePool, dispose
from .base import (
    BackendFacts,
    Connection,
    ConnectPaused,
    ErrorKind,
    PoolStats,
    with_closed_flag,
)

__all__ = [
    "EXTENDED_KINDS",
    "PRIMARY_KINDS",
    "DatabaseFileMoved",
    "PoolClosed",
    "SQLiteBackend",
    "SQLiteConnection",
    "classify_error",
    "error_code",
]

logger = logging.getLogger("resilientdb")

DEFAULT_BUSY_TIMEOUT = 5.0
_MODES = frozenset({"rwc", "rw", "ro"})
_JOURNAL_MODES = frozenset({"wal", "delete", "truncate", "persist"})
_RESERVED_KWARGS = frozenset({"database", "uri", "isolation_level"})

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY
# executemany runs in one BEGIN IMMEDIATE transaction; no server functions can write, so a
# replay needs no read-only guard (user functions registered on a connection count as writes).
FACTS = BackendFacts("sqlite", atomic_batch=True, readonly_guard=None)

# Primary result code (sqlite_errorcode & 0xFF) -> kind, for every extended code of the family.
# EXTENDED_KINDS overrides single extended codes. Codes not listed are QUERY.
PRIMARY_KINDS: Mapping[int, ErrorKind] = {
    sqlite3.SQLITE_BUSY: R,  # 5: another connection held the lock past the busy timeout; the
    # statement did nothing (BUSY_RECOVERY 261, BUSY_TIMEOUT 773 alike)
    sqlite3.SQLITE_LOCKED: R,  # 6: a conflict within this connection or its shared cache
    # (LOCKED_SHAREDCACHE 262, LOCKED_VTAB 518); nothing was applied
    sqlite3.SQLITE_PROTOCOL: R,  # 15: a WAL locking race outlasted SQLite's own retries
    sqlite3.SQLITE_SCHEMA: R,  # 17: the schema changed under the statement; a new run re-prepares
    sqlite3.SQLITE_IOERR: C,  # 10 and every IOERR_*: the OS failed a read, write, fsync or lock:
    # reopen the file
    sqlite3.SQLITE_CORRUPT: P,  # 11: the file is damaged; reopening reads the same bytes
    sqlite3.SQLITE_CANTOPEN: P,  # 14: the file or its directory is missing or inaccessible:
    # FAILED, probed slowly until it is back
    sqlite3.SQLITE_NOTADB: P,  # 26: the file is not a SQLite database
    sqlite3.SQLITE_FULL: Q,  # 13: disk (or max_page_count) full: this write fails, reads still
    # work, so the backend stays up and the caller sees SQLite's error
    sqlite3.SQLITE_READONLY: Q,  # 8: a write on a read-only database (?mode=ro, permissions)
    sqlite3.SQLITE_INTERRUPT: Q,  # 9: interrupted by someone else (resilientdb's own interrupts
    # surface as TimeoutError or CancelledError)
}
EXTENDED_KINDS: Mapping[int, ErrorKind] = {
    sqlite3.SQLITE_BUSY_SNAPSHOT: R,  # 517: a WAL read snapshot went stale before its write:
    # waiting cannot help, the whole transaction must run again
    sqlite3.SQLITE_READONLY_DBMOVED: C,  # 1032: the file was renamed or deleted while open
    # (also DatabaseFileMoved): reopen it by its path, which fails with CANTOPEN while it is gone
}
# For errors that carry neither sqlite_errorcode nor sqlite_errorname (built by hand).
_MESSAGE_KINDS: tuple[tuple[str, ErrorKind], ...] = (
    ("database is locked", R),
    ("database table is locked", R),
    ("disk I/O error", C),
    ("unable to open database file", P),
    ("file is not a database", P),
    ("database disk image is malformed", P),
)
# Raised before anything was sent to SQLite: aiosqlite's closed checks, sqlite3's own.
_AIOSQLITE_CLOSED = frozenset({"no active connection", "Connection closed"})
_SQLITE3_CLOSED = "Cannot operate on a closed database"


def classify_error(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` from its SQLite result code (message text only as a fallback),
    following ``__cause__``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        kind = _classify_one(cur)
        if kind is not Q:
            return kind
        cur = cur.__cause__
    return Q


def _classify_one(exc: BaseException) -> ErrorKind:
    if isinstance(exc, sqlite3.Error):
        code = error_code(exc)
        if code is not None:
            return EXTENDED_KINDS.get(code) or PRIMARY_KINDS.get(code & 0xFF, Q)
        text = str(exc)
        if isinstance(exc, sqlite3.ProgrammingError) and text.startswith(_SQLITE3_CLOSED):
            return C
        return next((kind for prefix, kind in _MESSAGE_KINDS if text.startswith(prefix)), Q)
    if isinstance(exc, ValueError):
        return C if str(exc) in _AIOSQLITE_CLOSED else Q
    if isinstance(exc, OSError | TimeoutError):
        return C  # PoolClosed, ConnectPaused, the connect timeout, a failed os call
    return Q


def _is_unsent(exc: BaseException) -> bool:
    if isinstance(exc, DatabaseFileMoved | PoolClosed | ConnectPaused):
        return True
    if isinstance(exc, sqlite3.ProgrammingError):
        return str(exc).startswith(_SQLITE3_CLOSED)
    return type(exc) is ValueError and str(exc) in _AIOSQLITE_CLOSED


class SQLiteBackend(SQLitePool):
    """aiosqlite connections in a small pool, plus SQLite's error semantics (module docstring).

    ``acquire()`` gives a :class:`SQLiteConnection` lease. DSN options: ``mode`` (``rwc``,
    ``rw``, ``ro``), ``cache`` (``shared``, ``private``), ``timeout`` (the busy timeout, in
    seconds) and ``journal_mode`` (``wal``, ``delete``, ``truncate``, ``persist``).
    ``connect_kwargs`` go to ``aiosqlite.connect`` (``database``, ``uri`` and
    ``isolation_level`` are the adapter's own).
    """

    facts = FACTS

    def __init__(self, dsn: DSN, options: Options) -> None:
        opts = dsn.options
        mode, cache = opts.get("mode", "rwc"), opts.get("cache")
        journal = opts.get("journal_mode", "wal").lower()
        kwargs = dict(options.connect_kwargs)
        busy = opts.get("timeout", kwargs.pop("timeout", DEFAULT_BUSY_TIMEOUT))
        seconds = _check_settings(dsn, mode, cache, journal, busy, kwargs)
        super().__init__(
            dsn, options, mode=mode, cache=cache, journal=journal, busy=seconds, kwargs=kwargs
        )

    @property
    def opened(self) -> bool:
        return self._opened

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        self._may_connect = may_connect

    def begin_statements(self, isolation: str | None, readonly: bool) -> tuple[str, ...]:
        # SQLite transactions are serializable whatever the level asked for. A write takes
        # the write lock at BEGIN (IMMEDIATE): waiting for it happens there, in busy slices,
        # and the transaction cannot fail later with BUSY_SNAPSHOT. A read-only one takes a
        # snapshot at its first read (DEFERRED) and never blocks writers (WAL).
        return ("BEGIN DEFERRED",) if readonly else ("BEGIN IMMEDIATE",)

    def raw_connections(self) -> list[aiosqlite.Connection]:
        """Every open aiosqlite connection of the pool, idle or in use (for tests)."""
        return [link.aconn for link in self._all]

    # -- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        links: list[Link] = []
        try:
            # One after the other: the first is the one that may create the file.
            for _ in range(max(self._min, 1)):
                links.append(await self._open())
        except BaseException:
            for link in links:
                self._retire(link)
            raise
        now = time.monotonic()
        for link in links:
            link.idle_since = now
        self._idle.extend(links)
        self._opened = True

    async def probe(self) -> None:
        if self.memory and any(not link.is_closed() for link in self._all):
            return  # the shared connection is the database; nothing else to reach
        link = await self._open(hook=False, pooled=False)
        try:
            lease = SQLiteConnection(self, None)
            lease._link = link
            bound = self.options.connect_timeout
            await lease.fetchval("SELECT count(*) FROM sqlite_master", timeout=bound)
        finally:
            await asyncio.shield(self._spawn(dispose(link.aconn)))

    async def refresh(self) -> None:
        self._generation += 1
        keep = [link for link in self._idle if self.memory and not link.is_closed()]
        for link in self._idle:
            if link in keep:
                link.generation = self._generation
            else:
                self._retire(link)
        self._idle = keep
        for link in self._all:
            if self.memory and not link.is_closed():
                link.generation = self._generation  # in use: the database itself stays
        await self._wait_tasks(CLOSE_TIMEOUT)

    async def close(self) -> None:
        self._closed = True
        self._wake_all()
        for link in self._idle:
            self._retire(link)
        self._idle.clear()
        if self._all:  # in use: given back (and retired) by their callers, or interrupted
            self._drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._drained.wait()
        for link in list(self._all):
            self._retire(link)
        await self._wait_tasks(CLOSE_TIMEOUT)

    # -- the pool -----------------------------------------------------------------------------

    def acquire(self, timeout: float | None) -> AbstractAsyncContextManager[Connection]:
        return cast(AbstractAsyncContextManager[Connection], SQLiteConnection(self, timeout))

    async def trim_idle(self) -> int:
        """Close idle connections beyond ``min_size`` (never :memory:'s); how many."""
        trimmed = 0
        while not self.memory and self._idle and len(self._all) > self._min:
            self._retire(self._idle.pop(0))
            trimmed += 1
        return trimmed

    # -- the Backend protocol's remaining calls -------------------------------------------------

    def raw(self, conn: Connection) -> Any:
        return cast(SQLiteConnection, conn).lend()

    def discard(self, conn: Connection) -> None:
        # An interrupted statement has ended before its lease does (settle), and a connection
        # goes back only without an open transaction; still, a file connection is replaced, as
        # promised. :memory:'s connection is the database itself: it is kept while it is in a
        # known state (the pool retires it otherwise).
        link = cast(SQLiteConnection, conn)._link
        if link is not None and not self.memory:
            link.discarded = True

    def classify(self, exc: BaseException, conn: Connection | None = None) -> ErrorKind:
        return with_closed_flag(classify_error(exc), conn, exc)

    def classify_connect(self, exc: BaseException) -> ErrorKind:
        kind = classify_error(exc)
        if kind is R or kind is C:
            return C  # a lock held while switching to WAL, a slow open: try again
        return P  # missing file, not a database, a broken on_connect hook: probed slowly

    def unsent(self, exc: BaseException) -> bool:
        return _is_unsent(exc)

    def stats(self) -> PoolStats:
        size, idle = len(self._all), len(self._idle)
        return PoolStats(size, idle, size - idle, self._min, self._max)

    def in_transaction(self, conn: Connection) -> bool:
        return cast(SQLiteConnection, conn).in_transaction

    def commit_applied(self, result: Any) -> bool:
        return True  # SQLite answers a COMMIT that cannot commit with an error

    def write_refused(self, exc: BaseException) -> bool:
        return False  # no read-only guard (FACTS)


def _check_settings(
    dsn: DSN, mode: str, cache: str | None, journal: str, busy: Any, kwargs: dict[str, Any]
) -> float:
    """Validate the DSN options and connect_kwargs at construction; the busy timeout."""

    def bad(message: str) -> ConfigurationError:
        return ConfigurationError(f"DSN {str(dsn)!r}: {message}")

    if mode not in _MODES:
        raise bad(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
    if cache not in (None, "shared", "private"):
        raise bad(f"cache must be 'shared' or 'private', not {cache!r}")
    if journal not in _JOURNAL_MODES:
        raise bad(f"journal_mode must be one of {sorted(_JOURNAL_MODES)}, not {journal!r}")
    try:
        seconds = float(busy)
    except (TypeError, ValueError):
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise bad(f"timeout (the busy timeout) must be a number of seconds >= 0, not {busy!r}")
    reserved = sorted(_RESERVED_KWARGS & kwargs.keys())
    if reserved:
        raise ConfigurationError(
            f"connect_kwargs may not set {reserved}: the SQLite adapter sets them itself"
        )
    return seconds
