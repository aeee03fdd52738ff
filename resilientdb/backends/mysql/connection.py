"""The MySQL adapter's connections: opening one, and the wrapper that gives it asyncpg's API.

The design and aiomysql's traps are described in ``backend.py``'s docstring. Everything here
is about one connection; nothing here knows about the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import aiomysql
from aiomysql.cursors import Cursor
from pymysql import err as myerr

from ..._row import Row, make_rows, row_type
from .._kit.pool import expiry
from .._kit.sockets import tune_transport

if TYPE_CHECKING:
    from ...config import Options

__all__ = ["MySQLConnection", "alive", "connect", "quit_raw"]

_COM_QUIT = struct.pack("<i", 1) + b"\x01"  # length 1, sequence 0, COM_QUIT
_MULTI_PACKET = 2**24 - 1  # MySQL's largest packet: longer statements are split


def alive(raw: Any) -> bool:
    """No round trip: False once the server hung up (EOF, reset) or the driver closed it."""
    writer, reader = raw._writer, raw._reader
    if writer is None or reader is None or writer.transport.is_closing():
        return False
    return not (getattr(reader, "eof_received", False) or reader.exception() is not None)


def _too_long(query: str, raw: Any) -> bool:
    """Whether PyMySQL had to split ``query`` over several packets (error path only)."""
    return len(query.encode(raw.encoding, "surrogateescape")) >= _MULTI_PACKET


def quit_raw(raw: Any) -> None:
    """Close without awaiting: COM_QUIT (so the server logs no aborted client) when alive."""
    with contextlib.suppress(Exception):
        if alive(raw):
            raw._writer.write(_COM_QUIT)  # transport.close() flushes it first
    raw.close()


class _Cursor(Cursor):  # type: ignore[misc]
    async def _show_warnings(self, conn: Any) -> None:
        """No SHOW WARNINGS round trip after the statement (see ``backend.py``'s docstring)."""


class MySQLConnection:
    """An aiomysql connection with asyncpg's call API (``backends.base.Connection``).

    ``raw`` is the aiomysql connection. Every call takes ``timeout=`` (seconds; ``None``:
    the backend's ``command_timeout``); a call that times out or is cancelled closes the
    connection.
    """

    __slots__ = ("default_timeout", "expires", "generation", "idle_since", "raw")

    def __init__(
        self, raw: Any, generation: int, expires: float, default_timeout: float | None
    ) -> None:
        self.raw = raw
        self.generation = generation
        self.expires = expires  # monotonic time past which it is retired once idle
        self.default_timeout = default_timeout
        self.idle_since = 0.0

    def is_closed(self) -> bool:
        """True once the connection is closed or the server has hung up."""
        return not alive(self.raw)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Row]:
        """Every row of the (first) result set."""
        columns, rows, _ = await self._call(query, args, timeout, None)
        return make_rows(columns, rows)

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Row | None:
        """The first row, or ``None``."""
        columns, rows, _ = await self._call(query, args, timeout, None)
        return row_type(columns)(rows[0]) if rows else None

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        """One value of the first row (``column`` picks which), or ``None`` without rows."""
        _, rows, _ = await self._call(query, args, timeout, None)
        return rows[0][column] if rows else None

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> int:
        """Run a statement; returns the affected row count (rows found, for a SELECT)."""
        return (await self._call(query, args, timeout, None))[2]

    async def executemany(
        self, command: str, args: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        """Run ``command`` per argument tuple (PyMySQL batches ``INSERT ... VALUES``).

        Returns None, as asyncpg's and the SQLite adapter's do (PyMySQL's row count is not
        comparable across backends: a batched INSERT counts rows, ON DUPLICATE KEY twice)."""
        await self._call(command, (), timeout, [tuple(a) for a in args])

    async def _call(
        self,
        query: str,
        args: tuple[Any, ...],
        timeout: float | None,
        many: list[tuple[Any, ...]] | None,
    ) -> tuple[list[str], Sequence[Sequence[Any]], int]:
        raw = self.raw
        if timeout is None:
            timeout = self.default_timeout
        if not alive(raw):
            # The server hung up while this connection sat idle: say so before writing.
            raw.close()
            raise myerr.InterfaceError(0, "Not connected (the server closed the connection)")
        cur = _Cursor(raw, False)
        # Formatting errors (wrong argument count) surface here, before anything is written.
        if args:
            query = cur.mogrify(query, args)
        elif many:
            cur.mogrify(query, many[0])
        # asyncio.timeout(None) sets no timer: the bound costs nothing when there is none.
        async with asyncio.timeout(timeout):
            try:
                pending = raw._result
                if pending is not None and pending.unbuffered_active:
                    # A stream dropped unfinished inside a transaction (stream.py): read the
                    # rest of its result first, as aiomysql would (with a warning).
                    await pending._finish_unbuffered_query()
                if many is None:
                    count = await cur.execute(query)
                else:
                    count = await cur.executemany(query, many)
                description = cur.description
                rows = await cur.fetchall()
                while await cur.nextset():
                    pass  # later result sets (multi-statements): their errors are ours
            except BaseException as exc:
                if many is not None and isinstance(exc, myerr.InterfaceError):
                    # A batch goes row by row: a "not connected" check failing here came after
                    # some rows were sent. Lost, not unsent: never replayed as if nothing ran.
                    raw.close()
                    raise myerr.OperationalError(
                        2013, f"Lost connection to MySQL server during a batch ({exc})"
                    ) from exc
                if isinstance(exc, myerr.InternalError) and _too_long(query, raw):
                    # PyMySQL splits a statement this long over several packets; a server whose
                    # max_allowed_packet is smaller answers 1153 after the first and hangs up,
                    # and the reply then reads out of step. Nothing ran.
                    raw.close()
                    raise myerr.OperationalError(
                        1153, f"the statement is larger than max_allowed_packet ({exc})"
                    ) from exc
                if not isinstance(exc, myerr.MySQLError | UnicodeEncodeError):
                    # Cancelled, timed out, or failed mid-protocol: unread bytes may follow,
                    # so the connection cannot be reused. (A server error leaves it in step;
                    # a query the charset cannot encode fails before anything is written.)
                    raw.close()
                raise
        columns = [d[0] for d in description] if description else []
        return columns, rows, count or 0


async def connect(
    kwargs: dict[str, Any], opts: Options, generation: int, *, hook: bool = True
) -> MySQLConnection:
    """Open one connection, the whole handshake (and ``on_connect``) bounded in time."""
    raw = aiomysql.Connection(**kwargs)
    try:
        async with asyncio.timeout(opts.connect_timeout):
            await raw._connect()  # TCP, greeting, authentication, SET autocommit
        if opts.tcp_keepalive:
            tune_transport(raw._writer.transport, opts.tcp_user_timeout)
        if hook and opts.on_connect is not None:
            async with asyncio.timeout(opts.connect_timeout):
                await opts.on_connect(raw)
    except BaseException:
        raw.close()  # aiomysql leaves the socket open when its connect is cancelled
        raise
    return MySQLConnection(raw, generation, expiry(opts), opts.command_timeout)
