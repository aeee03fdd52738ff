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

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

import aiosqlite

from .._kit.errors import Classifies
from ..base import BackendFacts, Connection, Cursor, PoolStats
from .connection import BEGIN_READ_ONLY
from .errors import ERRORS
from .lease import SQLiteLease
from .pool import SQLitePool
from .settings import SQLiteSettings, settings
from .stream import open_cursor

if TYPE_CHECKING:
    from ..._dsn import DSN
    from ...config import Options

__all__ = ["SQLiteBackend"]

# executemany runs in one BEGIN IMMEDIATE transaction; no server functions can write, so a
# replay needs no read-only guard (user functions registered on a connection count as writes).
FACTS = BackendFacts("sqlite", atomic_batch=True, readonly_guard=None)


class SQLiteBackend(Classifies):
    """An aiosqlite pool plus SQLite's error semantics (module docstring).

    ``acquire()`` gives a :class:`SQLiteLease`. DSN options: ``mode`` (``rwc``, ``rw``,
    ``ro``), ``cache`` (``shared``, ``private``), ``timeout`` (the busy timeout, in seconds)
    and ``journal_mode`` (``wal``, ``delete``, ``truncate``, ``persist``). ``connect_kwargs``
    go to ``aiosqlite.connect`` (``database``, ``uri`` and ``isolation_level`` are the
    adapter's own).
    """

    facts = FACTS
    errors = ERRORS

    def __init__(self, dsn: DSN, options: Options, prepared: SQLiteSettings | None = None) -> None:
        """``prepared``: the settings validated by the registry's spec (``settings.py``);
        computed from ``dsn`` and ``options`` when not given."""
        self.dsn = dsn
        self.options = options
        self._pool = SQLitePool(
            dsn, options, settings(dsn, options) if prepared is None else prepared
        )
        self.memory = self._pool.memory

    @property
    def opened(self) -> bool:
        return self._pool.opened

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        self._pool.set_connect_gate(may_connect)

    def begin_statements(self, isolation: str | None, readonly: bool) -> tuple[str, ...]:
        # SQLite transactions are serializable whatever the level asked for. A write takes
        # the write lock at BEGIN (IMMEDIATE): waiting for it happens there, in busy slices,
        # and the transaction cannot fail later with BUSY_SNAPSHOT. A read-only one takes a
        # snapshot at its first read (DEFERRED) and never blocks writers (WAL); PRAGMA
        # query_only makes the server refuse its writes, as PostgreSQL's READ ONLY does.
        return (BEGIN_READ_ONLY,) if readonly else ("BEGIN IMMEDIATE",)

    def raw_connections(self) -> list[aiosqlite.Connection]:
        """Every open aiosqlite connection of the pool, idle or in use (for tests)."""
        return self._pool.raw_connections()

    # -- the pool (in pool.py) ----------------------------------------------------------------

    async def open(self) -> None:
        await self._pool.open()

    async def probe(self) -> None:
        await self._pool.probe()

    async def refresh(self) -> None:
        await self._pool.refresh()

    async def close(self) -> None:
        await self._pool.close()

    def acquire(self, timeout: float | None) -> AbstractAsyncContextManager[Connection]:
        return cast(AbstractAsyncContextManager[Connection], self._pool.acquire(timeout))

    async def trim_idle(self) -> int:
        """Close idle connections beyond ``min_size`` (never :memory:'s); how many."""
        return await self._pool.trim_idle()

    def stats(self) -> PoolStats:
        return self._pool.stats()

    # -- the Backend protocol's remaining calls -------------------------------------------------

    def raw(self, conn: Connection) -> Any:
        return cast(SQLiteLease, conn).lend()

    def discard(self, conn: Connection) -> None:
        # An interrupted statement has ended before its lease does (settle), and a connection
        # goes back only without an open transaction; still, a file connection is replaced, as
        # promised. :memory:'s connection is the database itself: it is kept while it is in a
        # known state (the pool retires it otherwise).
        held = cast(SQLiteLease, conn).held
        if held is not None and not self.memory:
            held.discarded = True

    def in_transaction(self, conn: Connection) -> bool:
        return cast(SQLiteLease, conn).in_transaction

    def commit_applied(self, result: Any) -> bool:
        return True  # SQLite answers a COMMIT that cannot commit with an error

    def write_refused(self, exc: BaseException) -> bool:
        return False  # no read-only guard (FACTS)

    async def open_cursor(
        self,
        conn: Connection,
        query: str,
        args: tuple[Any, ...],
        *,
        begin: str | None,
        end: str | None,
        timeout: float | None,
    ) -> Cursor:
        """A cursor on ``query`` for ``db.iterate()`` (``stream.py``)."""
        return await open_cursor(
            cast(SQLiteLease, conn), query, args, begin=begin, end=end, timeout=timeout
        )


if TYPE_CHECKING:
    from ..base import Backend, Streams, TrimsIdle

    def _conforms(backend: SQLiteBackend) -> tuple[Backend, Streams, TrimsIdle]:
        return backend, backend, backend  # mypy checks the adapter against the protocols here
