"""The MySQL / MariaDB room (aiomysql): ``backend`` (the adapter), ``pool`` (a pool of our
own), ``connection`` (one connection with asyncpg's API), ``errors`` (the error table),
``settings`` (what the registry checks at construction, into aiomysql's arguments).

Importing the package imports no driver: the registry reads ``settings`` while parsing DSNs,
and the names below load their module (and aiomysql) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._kit.lazy import lazy_names

if TYPE_CHECKING:
    from .backend import MySQLBackend
    from .connection import MySQLConnection
    from .errors import CODE_KINDS, classify_error

__all__ = ["CODE_KINDS", "MySQLBackend", "MySQLConnection", "classify_error"]

__getattr__ = lazy_names(
    __name__,
    {
        "CODE_KINDS": ".errors",
        "MySQLBackend": ".backend",
        "MySQLConnection": ".connection",
        "classify_error": ".errors",
    },
)
