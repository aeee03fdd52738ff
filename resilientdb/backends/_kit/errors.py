"""One classifier over per-driver error tables.

Each driver room describes a single exception (``one``: its table lookup), which errors are
the caller's own although the connection closed (``callers_fault``), and which were raised
before anything was written (``unsent``). The walk along ``__cause__``, the connect-time
mapping and the closed-flag rule are the same for every driver and live here once
(docs/design.md, "When an operation is replayed").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from ..base import Connection, ErrorKind, PoolClosed, with_closed_flag

__all__ = ["Classifies", "ErrorTable"]

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY
_PRIORITY = {Q: 0, R: 1, C: 2, P: 3}


def _never(exc: BaseException) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class ErrorTable:
    """A driver's error semantics, from its per-exception lookup."""

    one: Callable[[BaseException], ErrorKind]
    """The kind of one exception, its cause left aside."""
    unsent_one: Callable[[BaseException], bool] = _never
    """Whether the driver raised it before writing anything (the adapters' own ``PoolClosed``
    is unsent for every driver)."""
    callers_fault: Callable[[BaseException], bool] = _never
    """A message the server refused before running it and then hung up on: the caller's error,
    not an outage (checked before the chain)."""
    strongest: bool = False
    """Walk the whole chain and keep the strongest kind (PERMANENT > CONNECTION > RETRYABLE >
    QUERY) instead of the first that is not QUERY: for drivers that wrap a cause in a weaker
    error (aiomysql wraps every connect failure, a failed certificate check included, in 2003)."""

    def kind(self, exc: BaseException) -> ErrorKind:
        """The kind of ``exc``, following ``__cause__``."""
        seen: set[int] = set()
        best = Q
        cur: BaseException | None = exc
        while cur is not None and id(cur) not in seen:
            seen.add(id(cur))
            kind = self.one(cur)
            if not self.strongest and kind is not Q:
                return kind
            if _PRIORITY[kind] > _PRIORITY[best]:
                best = kind
            cur = cur.__cause__
        return best

    def classify(self, exc: BaseException, conn: Connection | None = None) -> ErrorKind:
        """``Backend.classify``: the chain's kind, and the closed flag of ``conn``."""
        if self.callers_fault(exc):
            return Q
        return with_closed_flag(self.kind(exc), conn, exc)

    def classify_connect(self, exc: BaseException) -> ErrorKind:
        """``Backend.classify_connect``: a lost race or a lost connection while connecting is
        worth another try; anything else failing at connect (credentials, a grant, a missing
        file, a broken on_connect hook) fails the same way next time: permanent, probed slowly."""
        kind = self.kind(exc)
        return C if kind is C or kind is R else P

    def unsent(self, exc: BaseException) -> bool:
        """``Backend.unsent``."""
        return isinstance(exc, PoolClosed) or self.unsent_one(exc)


class Classifies:
    """The ``Backend`` protocol's error calls, answered from the adapter's ``errors`` table."""

    errors: ClassVar[ErrorTable]

    def classify(self, exc: BaseException, conn: Connection | None = None) -> ErrorKind:
        return self.errors.classify(exc, conn)

    def classify_connect(self, exc: BaseException) -> ErrorKind:
        return self.errors.classify_connect(exc)

    def unsent(self, exc: BaseException) -> bool:
        return self.errors.unsent(exc)
