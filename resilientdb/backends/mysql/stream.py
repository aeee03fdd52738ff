"""The MySQL adapter's streams: ``db.iterate()`` on an unbuffered (server-side) cursor.

aiomysql's ``SSCursor`` reads rows off the socket as the caller asks for them, so memory
holds one batch, not the result. The server sends the whole result regardless (MySQL has no
way to stop a running SELECT's output short of closing the connection): a stream given up
early is either read to its end (``drain=True``: inside a transaction, whose connection must
survive) or its connection is closed at once, which ends the statement on the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aiomysql.cursors import SSCursor

from ..._row import Row, make_rows
from ...errors import StreamInterrupted
from .connection import alive

if TYPE_CHECKING:
    from .connection import MySQLConnection

__all__ = ["MySQLCursor", "open_cursor"]


class _SSCursor(SSCursor):  # type: ignore[misc]
    async def _show_warnings(self, conn: Any) -> None:
        """No SHOW WARNINGS round trip (as the adapter's buffered cursor)."""


class MySQLCursor:
    """One unbuffered result on one connection (``backends.base.Cursor``)."""

    __slots__ = ("_columns", "_conn", "_cur", "_end", "_exhausted")

    def __init__(self, conn: MySQLConnection, cur: Any, end: str | None) -> None:
        self._conn = conn
        self._cur = cur
        self._end = end  # ROLLBACK, when open_cursor began a read-only transaction
        desc = cur.description
        self._columns = [d[0] for d in desc] if desc else []
        self._exhausted = not desc  # no result set (a statement that returns no rows)

    async def fetch(self, n: int, timeout: float | None) -> list[Row]:
        """The next ``n`` rows at most; fewer (or none) at the end of the result."""
        if self._exhausted:
            return []
        if self._conn.raw._result is not self._cur._result:
            # Another statement ran on this connection (in the caller's transaction) and read
            # the rest of this result away first, as the driver does: an empty read now would
            # end the stream as if the result had no more rows.
            self._exhausted = True
            raise StreamInterrupted(
                "another statement ran on the transaction's connection while the stream was "
                "open: a MySQL connection carries one result at a time, so the driver read "
                "the rest of the stream's result away (read the stream to its end, or use "
                "db.fetch(), before running other statements in the transaction)",
                rows_delivered=0,
            )
        if timeout is None:
            timeout = self._conn.default_timeout
        try:
            async with asyncio.timeout(timeout):
                rows: Sequence[Sequence[Any]] = await self._cur.fetchmany(n)
        except BaseException as exc:
            if not isinstance(exc, Exception) or isinstance(exc, TimeoutError):
                # Cut off mid-packet: the connection is out of step for good.
                self._conn.raw.close()
            raise
        if len(rows) < n:
            self._exhausted = True
        return make_rows(self._columns, rows)

    async def close(self, timeout: float | None, *, drain: bool) -> None:
        """End the result (and the transaction ``open_cursor`` began).

        Not read to its end: with ``drain`` the rest is read and dropped (bounded by
        ``timeout``); without, the connection is closed (the caller discards it).
        """
        raw = self._conn.raw
        if not self._exhausted and not drain:
            raw.close()
            return
        try:
            async with asyncio.timeout(timeout):
                await self._cur.close()  # reads what is left, and any later result sets
                if self._end is not None:
                    await raw.query(self._end)
        except BaseException:
            raw.close()
            raise


async def open_cursor(
    conn: MySQLConnection,
    query: str,
    args: tuple[Any, ...],
    *,
    begin: str | None,
    end: str | None,
    timeout: float | None,
) -> MySQLCursor:
    """Send ``query`` on an unbuffered cursor (after ``begin``, when given)."""
    raw = conn.raw
    if timeout is None:
        timeout = conn.default_timeout
    if not alive(raw):
        from pymysql import err as myerr

        raw.close()
        raise myerr.InterfaceError(0, "Not connected (the server closed the connection)")
    cur = _SSCursor(raw, False)
    if args:
        query = cur.mogrify(query, args)  # formatting errors surface here, nothing sent
    try:
        async with asyncio.timeout(timeout):
            pending = raw._result
            if pending is not None and pending.unbuffered_active:
                await pending._finish_unbuffered_query()  # an earlier stream, dropped
            if begin is not None:
                await raw.query(begin)
            await cur.execute(query)
    except BaseException as exc:
        from pymysql import err as myerr

        if not isinstance(exc, myerr.MySQLError | UnicodeEncodeError):
            raw.close()  # cut off mid-protocol
        elif begin is not None and alive(raw):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(timeout):
                    await raw.query("ROLLBACK")
        raise
    return MySQLCursor(conn, cur, end if begin is not None else None)
