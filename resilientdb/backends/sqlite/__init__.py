"""The SQLite room (aiosqlite): ``backend`` (the adapter), ``pool`` (a pool of our own),
``connection`` (one aiosqlite connection and its worker thread), ``lease`` (one caller's hold
on a connection, with asyncpg's API), ``errors`` (the error table), ``settings`` (what the
registry checks at construction).

Importing the package imports no driver: the registry reads ``settings`` while parsing DSNs,
and the names below load their module (and aiosqlite) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._kit.lazy import lazy_names

if TYPE_CHECKING:
    from ..base import PoolClosed
    from .backend import SQLiteBackend
    from .connection import SQLiteConnection
    from .errors import EXTENDED_KINDS, PRIMARY_KINDS, DatabaseFileMoved, classify_error, error_code
    from .lease import SQLiteLease

__all__ = [
    "EXTENDED_KINDS",
    "PRIMARY_KINDS",
    "DatabaseFileMoved",
    "PoolClosed",
    "SQLiteBackend",
    "SQLiteConnection",
    "SQLiteLease",
    "classify_error",
    "error_code",
]

__getattr__ = lazy_names(
    __name__,
    {
        "EXTENDED_KINDS": ".errors",
        "PRIMARY_KINDS": ".errors",
        "DatabaseFileMoved": ".errors",
        "PoolClosed": "..base",
        "SQLiteBackend": ".backend",
        "SQLiteConnection": ".connection",
        "SQLiteLease": ".lease",
        "classify_error": ".errors",
        "error_code": ".errors",
    },
)
