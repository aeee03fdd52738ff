"""The SQLite adapter's streams: ``db.iterate()`` as ``fetchmany`` on a cursor left open.

The cursor lives on the connection's worker thread between batches; each batch is one call
through the lease (``lease.py``), so a timeout or a cancellation interrupts it like any
statement. Closing the cursor ends the statement (its read snapshot and locks go with it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..._row import Row, row_type
from .connection import CLOSE_CURSOR, CURSOR, MORE

if TYPE_CHECKING:
    from .lease import SQLiteLease

__all__ = ["SQLiteCursor", "open_cursor"]


class SQLiteCursor:
    """A sqlite3 cursor on a lease's connection (``backends.base.Cursor``)."""

    __slots__ = ("_cur", "_lease", "_open", "_type")

    def __init__(self, lease: SQLiteLease, cur: Any) -> None:
        self._lease = lease
        self._cur = cur
        self._open = True
        desc = cur.description
        # One Row class for the whole result, as make_rows does (None: not a query).
        self._type = row_type([d[0] for d in desc]) if desc else None

    async def fetch(self, n: int, timeout: float | None) -> list[Row]:
        """The next ``n`` rows at most; fewer (or none) at the end."""
        if self._type is None:
            return []  # not a query: it ran to its end when the cursor opened
        rows = await self._lease._call(MORE, "", (self._cur, n), 0, timeout)
        return list(map(self._type, rows))

    async def close(self, timeout: float | None, *, drain: bool) -> None:
        """Close the cursor on the worker thread (cheap whether or not it was read to the end)."""
        if self._open:
            self._open = False
            await self._lease._call(CLOSE_CURSOR, "", (self._cur,), 0, timeout)


async def open_cursor(
    lease: SQLiteLease,
    query: str,
    args: tuple[Any, ...],
    *,
    begin: str | None,
    end: str | None,
    timeout: float | None,
) -> SQLiteCursor:
    """Run ``query`` up to its first row, on a cursor left open (SQLite has no read-only
    transaction to ``begin``: the backend declares no guard)."""
    cur = await lease._call(CURSOR, query, args, 0, timeout)
    return SQLiteCursor(lease, cur)
