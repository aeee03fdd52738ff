"""The exceptions resilientdb raises, all under one base class.

Query errors (syntax, constraint, permission) are never wrapped: they reach the caller as the
driver's own exception. These classes describe what the supervisor itself decided.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "OutcomeUnknown",
    "Overloaded",
    "ResilientDBError",
    "SupervisorClosed",
    "TransactionLost",
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


class SupervisorClosed(ResilientDBError):
    """The supervisor is closed (or was never started): no call can go through it."""


for _cls in (
    ResilientDBError,
    ConfigurationError,
    DatabaseUnavailable,
    Overloaded,
    OutcomeUnknown,
    TransactionLost,
    SupervisorClosed,
):
    # Shown as resilientdb.OutcomeUnknown in tracebacks: the public name, not the module path.
    _cls.__module__ = "resilientdb"
del _cls
