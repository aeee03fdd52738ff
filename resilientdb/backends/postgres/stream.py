"""The PostgreSQL adapter's streams: ``db.iterate()`` on an asyncpg cursor.

A cursor (a portal on the server) exists only inside a transaction: outside the caller's own,
``open_cursor`` opens a read-only one and closing the stream rolls it back (which also drops
the portal). Inside the caller's transaction the portal is closed on its own when the stream
ends early, so that the transaction goes on without it.
"""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["PostgresCursor", "open_cursor"]


class PostgresCursor:
    """An asyncpg cursor (``backends.base.Cursor``)."""

    __slots__ = ("_conn", "_cursor", "_end")

    def __init__(self, conn: Any, cursor: Any, end: str | None) -> None:
        self._conn = conn
        self._cursor = cursor
        self._end = end

    async def fetch(self, n: int, timeout: float | None) -> list[Any]:
        """The next ``n`` rows at most (asyncpg Records, or the pool's ``record_class``)."""
        rows: list[Any] = await self._cursor.fetch(n, timeout=timeout)
        return rows

    async def close(self, timeout: float | None, *, drain: bool) -> None:
        """Roll back the transaction ``open_cursor`` began, or close the portal."""
        if self._end is not None:
            await self._conn.execute(self._end, timeout=timeout)
            return
        # asyncpg has no public call to close a cursor before its end; its own iterator uses
        # this one. Should it change, the portal lives on until the transaction ends.
        if getattr(self._cursor, "_portal_name", None):
            closer = getattr(self._cursor, "_close_portal", None)
            if closer is not None:
                await closer(timeout)


async def open_cursor(
    conn: Any,
    query: str,
    args: tuple[Any, ...],
    *,
    begin: str | None,
    end: str | None,
    timeout: float | None,
) -> PostgresCursor:
    """Open a cursor on ``query`` (after ``begin``, when given: a cursor needs a transaction)."""
    if begin is not None:
        await conn.execute(begin, timeout=timeout)
    try:
        cursor = await conn.cursor(query, *args, timeout=timeout)
    except Exception:
        if begin is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.execute("ROLLBACK", timeout=timeout)
        raise
    return PostgresCursor(conn, cursor, end if begin is not None else None)
