"""SQLite result codes as the adapter reads them, and the one error it raises itself."""

from __future__ import annotations

import sqlite3

__all__ = ["DatabaseFileMoved", "error_code"]

# Busy results that mean "SQLite waited and the lock is still taken": worth another slice.
_WAIT_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_BUSY_RECOVERY, 773})


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
