"""The exceptions resilientdb raises, all under one base class.

Query errors (syntax, constraint, permission) are never wrapped: they reach the caller as the
driver's own exception. These classes describe what the supervisor itself decided.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfigurationError",
    "CopyInterrupted",
    "DatabaseUnavailable",
    "NotSupported",
    "OutcomeUnknown",
    "Overloaded",
    "PreparedStatementsUnsupported",
    "ResilientDBError",
    "StreamInterrupted",
    "SupervisorClosed",
    "TransactionClosed",
    "TransactionLost",
    "TransactionRolledBack",
]


class ResilientDBError(Exception):
    """Base class of every exception raised by resilientdb itself."""


class ConfigurationError(ResilientDBError, ValueError):
    """Bad DSN, bad option or missing driver package, raised at construction, before any I/O."""


class DatabaseUnavailable(ResilientDBError):
    """The gate gave up: the backend is FAILED, or the call's deadline passed while recovering.

    Nothing was applied by the call that raised it. The last connection error is chained as
    ``__cause__`` where there is one.
    """


class Overloaded(DatabaseUnavailable):
    """Too many callers are already waiting for the backend to recover (``max_waiters``)."""


class OutcomeUnknown(ResilientDBError):
    """A non-idempotent operation may or may not have been applied.

    The connection was lost after the request may have reached the server, so replaying it
    could apply it twice. The driver's error is chained as ``__cause__``; the caller decides
    (for example by checking for a unique id it wrote).
    """


class TransactionLost(ResilientDBError):
    """The connection died inside ``db.transaction()``: the server rolled the transaction back."""


class TransactionRolledBack(ResilientDBError):
    """The server rolled the transaction back on its own: nothing of it was written.

    A statement inside the transaction failed, the caller caught its error and carried on,
    and the server had already aborted the transaction: PostgreSQL answers COMMIT with
    ROLLBACK, MySQL/MariaDB roll the whole transaction back on a deadlock, SQLite on some
    errors. Raised at COMMIT, or at the next statement of the handle when the driver already
    knows. The statement error that aborted the transaction is chained as ``__cause__`` when
    it is known. Never replayed silently: ``run_in_transaction`` runs the callable again only
    when that error was a lost race (deadlock, serialization failure).
    """


class TransactionClosed(ResilientDBError):
    """A transaction handle was used after its ``async with`` block ended.

    Nothing was sent and no connection was touched: the handle's connection may already
    serve another caller. Raised by every call on a used-up handle.
    """


class StreamInterrupted(DatabaseUnavailable):
    """A stream (``db.iterate()``) lost its connection after rows had reached the caller.

    Never replayed: rows already handed out would repeat or go missing. ``rows_delivered``
    says how many rows the caller received; the rest of the result was not read. Before the
    first row a stream follows the usual replay rules and raises the usual errors. The
    driver's error is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, rows_delivered: int) -> None:
        super().__init__(message)
        self.rows_delivered = rows_delivered

    def __reduce__(self) -> tuple[Any, ...]:
        return (_stream_interrupted, (str(self), self.rows_delivered))


def _stream_interrupted(message: str, rows_delivered: int) -> StreamInterrupted:
    return StreamInterrupted(message, rows_delivered=rows_delivered)


class SupervisorClosed(ResilientDBError):
    """The supervisor is closed (or was never started): no call can go through it."""


class PreparedStatementsUnsupported(ResilientDBError):
    """The driver's prepared statements went missing on the server side: a connection pooler
    (PgBouncer with ``pool_mode = transaction`` or ``statement``) hands each transaction
    another server connection. Nothing of the statement ran. The message names the fix
    (``statement_cache_size=0``); the driver's error is the ``__cause__``."""


for _cls in (
    ResilientDBError,
    ConfigurationError,
    DatabaseUnavailable,
    Overloaded,
    OutcomeUnknown,
    TransactionLost,
    SupervisorClosed,
    TransactionClosed,
    TransactionRolledBack,
    StreamInterrupted,
    PreparedStatementsUnsupported,
):
    # Shown as resilientdb.OutcomeUnknown in tracebacks: the public name, not the module path.
    _cls.__module__ = "resilientdb"
del _cls


class NotSupported(ResilientDBError, NotImplementedError):
    """The backend has no such feature (COPY, LISTEN/NOTIFY on a backend other than
    PostgreSQL). Raised before anything is sent: no connection was touched."""


class CopyInterrupted(ResilientDBError):
    """A COPY out (``copy_from_query`` / ``copy_from_table``) lost its connection after
    ``delivered`` bytes had already reached the caller's output, which cannot be rewound (a
    callable, or a file that is not seekable). Replaying would hand the caller those bytes
    twice, so nothing was replayed: the output holds a partial result. The driver's error is
    chained as ``__cause__``."""

    def __init__(self, message: str, delivered: int) -> None:
        super().__init__(message)
        self.delivered = delivered


NotSupported.__module__ = CopyInterrupted.__module__ = "resilientdb"
