"""Small helpers of the streams (``_streams.py``): argument checks, the adapter's stream
methods, and ending the read-only transaction a failed first batch began."""

from __future__ import annotations

from typing import Any

from .backends.base import Connection, Streams

__all__ = ["check_batch", "check_timeout", "roll_back", "stream_methods"]


def check_batch(batch: object) -> int:
    """``batch`` as a row count, or a ValueError naming what to pass."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"batch must be a whole number of rows > 0, not {batch!r}")
    return batch


def stream_methods(backend: Any) -> Streams:
    """``backend`` as an adapter that streams (``backends.base.Streams``), or an error."""
    if not hasattr(backend, "open_cursor"):
        raise NotImplementedError(
            f"the {type(backend).__name__} adapter cannot stream results (no open_cursor)"
        )
    streams: Streams = backend
    return streams


async def roll_back(backend: Any, conn: Connection, begin: str | None, bound: float | None) -> None:
    """After a query error on a stream that began a read-only transaction: end it (the
    adapter did already where it could; this makes sure), or discard the connection."""
    if begin is None or conn.is_closed() or not backend.in_transaction(conn):
        return
    try:
        await conn.execute("ROLLBACK", timeout=bound)
    except Exception:
        backend.discard(conn)


def check_timeout(timeout: object) -> None:
    """A ValueError naming what to pass, unless ``timeout`` is a number of seconds > 0."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
