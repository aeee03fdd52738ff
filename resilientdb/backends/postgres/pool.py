"""The PostgreSQL adapter's pool plumbing around asyncpg: the connection class with a reset
query of its own, a bounded lease, opening the floor, closing one connection.

The design is in ``backend.py``'s docstring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import asyncpg

from .._kit.pool import CLOSE_TIMEOUT
from .._kit.wheel import TimeoutWheel
from ..base import Connection

__all__ = [
    "SESSION_SETTINGS",
    "Lease",
    "close_connection",
    "connected_holder_free",
    "connection_class",
    "restore_script",
    "warm_up",
]

# Session settings after on_connect, and what restores them on release.
SESSION_SETTINGS = (
    "SELECT name, current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'"
)


def _with_own_reset(base: type[Any]) -> type[Any]:
    """``base`` (an asyncpg connection class) with a reset query set per connection."""

    def get_reset_query(self: Any) -> str:
        own: str | None = getattr(self, "_resilientdb_reset", None)
        return own if own is not None else str(base.get_reset_query(self))

    # No __slots__: instances get the __dict__ that holds `_resilientdb_reset`.
    return type(f"Resilient{base.__name__}", (base,), {"get_reset_query": get_reset_query})


_Connection = _with_own_reset(asyncpg.Connection)


def _literal(text: str) -> str:
    # E'' reads the same whatever standard_conforming_strings says.
    return "E'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def restore_script(base: str, settings: list[Any]) -> str:
    """``base`` (the driver's reset query) then ``set_config`` of each session setting."""
    restore = ", ".join(
        f"pg_catalog.set_config({_literal(name)}, {_literal(value)}, false)"
        for name, value in settings
    )
    return base + (f"\nSELECT {restore};" if restore else "")


class Lease:
    """``pool.acquire()`` bounded through the adapter's shared timeout wheel (``timeout``
    None: unbounded, for a free open connection), and a bounded release."""

    __slots__ = ("_conn", "_pool", "_release_timeout", "_timeout", "_wheel")

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        timeout: float | None,
        wheel: TimeoutWheel,
        release_timeout: float,
    ) -> None:
        self._pool = pool
        self._timeout = timeout
        self._wheel = wheel
        self._release_timeout = release_timeout
        self._conn: Any = None

    async def __aenter__(self) -> Connection:
        acquiring = self._pool.acquire()
        if self._timeout is None:
            self._conn = await acquiring
        else:
            self._conn = await self._wheel.wait(acquiring, self._timeout)
        return cast(Connection, self._conn)

    async def __aexit__(self, *exc_info: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn, timeout=self._release_timeout)


def connected_holder_free(pool: asyncpg.Pool[asyncpg.Record]) -> bool:
    """Whether ``pool.acquire()`` would hand out an open connection at once (asyncpg's
    holders queue is LIFO: the last one is next), so it needs no timeout."""
    queue = getattr(getattr(pool, "_queue", None), "_queue", None)
    if not queue:
        return False
    con = getattr(queue[-1], "_con", None)
    return con is not None and not con.is_closed()


def connection_class(connect_kwargs: Mapping[str, Any]) -> type[Any]:
    """Our connection class, over the user's own when ``connect_kwargs`` names one."""
    theirs = connect_kwargs.get("connection_class")
    if theirs is None or theirs is asyncpg.Connection:
        return _Connection
    return _with_own_reset(theirs)


async def warm_up(pool: asyncpg.Pool[asyncpg.Record], count: int) -> None:
    """Open ``count`` connections (at least one: that is what proves the server answers)."""
    conns = await asyncio.gather(*(pool.acquire() for _ in range(count)), return_exceptions=True)
    for conn in conns:
        if not isinstance(conn, BaseException):
            await pool.release(conn)
    for conn in conns:
        if isinstance(conn, BaseException):
            raise conn


async def close_connection(conn: asyncpg.Connection[asyncpg.Record]) -> None:
    try:
        await asyncio.wait_for(conn.close(), timeout=CLOSE_TIMEOUT)
    except (Exception, asyncio.CancelledError):
        conn.terminate()
        raise
