"""PostgreSQL's error table: SQLSTATE and asyncpg's client-side errors, by kind.

The walk over the cause chain and the connect-time mapping are the kit's (``_kit/errors.py``).
"""

from __future__ import annotations

from collections.abc import Mapping

from asyncpg import exceptions as pgexc

from ..._redact import describe
from ...errors import PreparedStatementsUnsupported
from .._kit.errors import ErrorTable
from ..base import ErrorKind

__all__ = ["ERRORS", "SQLSTATE_CLASS_KINDS", "SQLSTATE_KINDS", "classify_error"]

C, R, P = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT

# SQLSTATE -> kind. Codes not listed fall back to their class (SQLSTATE_CLASS_KINDS), then QUERY.
SQLSTATE_KINDS: Mapping[str, ErrorKind] = {
    "57P01": C,  # admin_shutdown: pg_terminate_backend, or the server's fast/smart shutdown
    "57P02": C,  # crash_shutdown: another backend crashed, the server resets everybody
    "57P03": C,  # cannot_connect_now: the server is starting up or shutting down
    "57P05": C,  # idle_session_timeout: the server closed an idle connection
    "25P03": C,  # idle_in_transaction_session_timeout: FATAL, the connection is closed
    "53300": C,  # too_many_connections: transient, someone will disconnect
    "40001": R,  # serialization_failure
    "40P01": R,  # deadlock_detected
    "28P01": P,  # invalid_password
    "28000": P,  # invalid_authorization_specification (no pg_hba entry, role cannot log in)
    "3D000": P,  # invalid_catalog_name: the database does not exist
}
SQLSTATE_CLASS_KINDS: Mapping[str, ErrorKind] = {
    "08": C,  # connection_exception and all its codes (08000, 08003, 08006, 08001, 08004...)
}

# InterfaceError texts that asyncpg raises from its pre-write state checks: nothing was sent.
# "released back to the pool": asyncpg hands a pooled connection back by itself when the
# connection dies, so the next call on the proxy fails this way before writing anything.
# "pool is closing" / "pool is closed": asyncpg's own pool, closed under a caller.
_UNSENT_MESSAGES = (
    "connection is closed",
    "pool is closing",
    "pool is closed",
    "released back to the pool",
)


def _classify_one(exc: BaseException) -> ErrorKind:
    if isinstance(exc, pgexc.PostgresError):
        code = exc.sqlstate or ""
        return SQLSTATE_KINDS.get(code) or SQLSTATE_CLASS_KINDS.get(code[:2], ErrorKind.QUERY)
    if isinstance(exc, pgexc.TargetServerAttributeNotMatched):
        return C  # target_session_attrs: no primary yet (mid-failover); another may come up
    if isinstance(exc, pgexc.ClientConfigurationError):
        return P  # a bad sslmode or option: retrying cannot fix it
    if isinstance(exc, pgexc.InterfaceError):
        return C if _unsent(exc) else ErrorKind.QUERY
    if isinstance(exc, OSError | TimeoutError | EOFError):
        # Raw socket errors escape asyncpg: refused, reset, unreachable, DNS, and timeouts
        # of the connect itself; the adapters' own PoolClosed and ConnectPaused.
        return C
    return ErrorKind.QUERY


def auth_refused(exc: BaseException) -> bool:
    """The server refused the credentials (28P01 invalid_password, 28000), along the chain."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, pgexc.PostgresError) and cur.sqlstate in ("28P01", "28000"):
            return True
        cur = cur.__cause__
    return False


def explain(exc: BaseException) -> BaseException:
    """``exc``, or the error that names its fix: asyncpg's own prepared statement gone missing
    (26000) or found twice (42P05) is a pooler in transaction mode (PgBouncer)."""
    if not isinstance(
        exc, pgexc.InvalidSQLStatementNameError | pgexc.DuplicatePreparedStatementError
    ) or "__asyncpg_" not in str(exc):
        return exc
    err = PreparedStatementsUnsupported(
        f"{describe(exc)}: a connection pooler between this application and PostgreSQL "
        "(PgBouncer with pool_mode = transaction or statement) does not keep the driver's "
        "prepared statements; nothing of the statement ran. Connect with "
        "connect_kwargs={'statement_cache_size': 0} (PgBouncer 1.21+ can also keep them: "
        "max_prepared_statements)"
    )
    err.__cause__ = exc
    return err


def _unsent(exc: BaseException) -> bool:
    return isinstance(exc, pgexc.InterfaceError) and any(m in str(exc) for m in _UNSENT_MESSAGES)


def _callers_fault(exc: BaseException) -> bool:
    # 08P01: the server refused the message itself (a NUL in the query text) before running
    # anything, and closed the connection: the caller's error, no outage.
    return isinstance(exc, pgexc.ProtocolViolationError)


ERRORS = ErrorTable(_classify_one, unsent_one=_unsent, callers_fault=_callers_fault)


def classify_error(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` from its type, SQLSTATE and message, following ``__cause__``."""
    return ERRORS.kind(exc)
