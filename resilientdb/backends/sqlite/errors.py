"""SQLite's error table: result codes (message text only as a fallback) by kind, and the one
error the adapter raises itself.

The walk over the cause chain and the connect-time mapping are the kit's (``_kit/errors.py``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

from .._kit.errors import ErrorTable
from ..base import ConnectPaused, ErrorKind

__all__ = [
    "ERRORS",
    "EXTENDED_KINDS",
    "PRIMARY_KINDS",
    "WAIT_CODES",
    "DatabaseFileMoved",
    "classify_error",
    "error_code",
]

# Busy results that mean "SQLite waited and the lock is still taken": worth another slice.
WAIT_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_BUSY_RECOVERY, 773})


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


C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY

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


def _unsent(exc: BaseException) -> bool:
    if isinstance(exc, DatabaseFileMoved | ConnectPaused):
        return True
    if isinstance(exc, sqlite3.ProgrammingError):
        return str(exc).startswith(_SQLITE3_CLOSED)
    return type(exc) is ValueError and str(exc) in _AIOSQLITE_CLOSED


ERRORS = ErrorTable(_classify_one, unsent_one=_unsent)


def classify_error(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` from its SQLite result code (message text only as a fallback),
    following ``__cause__``."""
    return ERRORS.kind(exc)
