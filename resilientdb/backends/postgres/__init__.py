"""The PostgreSQL room (asyncpg): ``backend`` (the adapter), ``pool`` (around asyncpg's pool),
``errors`` (the error table), ``settings`` (what the registry checks at construction).

Importing the package imports no driver: the registry reads ``settings`` while parsing DSNs,
and the names below load their module (and asyncpg) on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._kit.lazy import lazy_names

if TYPE_CHECKING:
    from .backend import PostgresBackend
    from .errors import SQLSTATE_CLASS_KINDS, SQLSTATE_KINDS, classify_error

__all__ = ["SQLSTATE_CLASS_KINDS", "SQLSTATE_KINDS", "PostgresBackend", "classify_error"]

__getattr__ = lazy_names(
    __name__,
    {
        "PostgresBackend": ".backend",
        "SQLSTATE_CLASS_KINDS": ".errors",
        "SQLSTATE_KINDS": ".errors",
        "classify_error": ".errors",
    },
)
