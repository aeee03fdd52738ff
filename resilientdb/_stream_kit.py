"""Small helpers of the streams (``_streams.py``): argument checks, the adapter's stream
methods, ending the read-only transaction a failed first batch began, and the error a stream
cut off after its first row raises."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._redact import describe
from ._replay import verdict
from .backends.base import Connection, Streams
from .errors import StreamInterrupted

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["check_batch", "check_timeout", "cut_off", "roll_back", "stream_methods"]

_OP = "iterate"


def cut_off(
    engine: Engine, exc: Exception, query: str, idempotent: bool | None, delivered: int
) -> Exception:
    """What a stream whose connection was lost after ``delivered`` rows raises: never a
    replay. A write streamed (``DELETE ... RETURNING``), or a read calling functions that may
    write, ends on the server after its last row is sent, so whether it was applied is
    unknown (``OutcomeUnknown``: "run it again" could apply it twice); a read is
    ``StreamInterrupted``, saying how many rows reached the caller."""
    v = verdict(query, engine.backend.facts.family)
    if idempotent is not True and (not v.read_only or v.lookup):
        unknown = engine.unknown(_OP, exc, "its query may write")
        unknown.add_note(f"resilientdb: the stream had delivered {delivered} rows")
        return unknown
    return StreamInterrupted(
        f"backend {engine.name!r}: the stream was interrupted after {delivered} rows had been "
        f"delivered ({describe(exc)}); it is not replayed, because rows already handed out "
        f"would repeat or go missing. Run the query again (for example from the last key "
        f"seen).",
        rows_delivered=delivered,
    )


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
