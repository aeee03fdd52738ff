"""MySQL's and MariaDB's error table: server and client error numbers and aiomysql's
client-side messages, by kind.

The walk over the cause chain and the connect-time mapping are the kit's (``_kit/errors.py``).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

from pymysql import err as myerr

from .._kit.errors import ErrorTable
from ..base import ErrorKind

__all__ = [
    "CODE_KINDS",
    "ERRORS",
    "ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION",
    "classify_error",
    "errno",
]

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY
ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION = 1792
ER_NET_PACKET_TOO_LARGE = 1153

# Error number (server ER_* or client CR_*) -> kind. Codes not listed are QUERY (syntax 1064,
# duplicate key 1062, unknown table 1146, KILL QUERY 1317, statement timeouts 1969/3024...).
CODE_KINDS: Mapping[int, ErrorKind] = {
    2003: C,  # CR_CONN_HOST_ERROR: can't connect; aiomysql wraps every OSError of connect in it
    2006: C,  # CR_SERVER_GONE_ERROR: never raised by aiomysql, kept for PyMySQL-style callers
    2013: C,  # CR_SERVER_LOST: EOF or socket error while reading (KILL, crash, shutdown, reset)
    2014: C,  # CR_COMMANDS_OUT_OF_SYNC: the protocol stream is out of step; nothing sane follows
    2055: C,  # CR_SERVER_LOST_EXTENDED: as 2013 (never raised by aiomysql)
    1040: C,  # ER_CON_COUNT_ERROR: too many connections; transient, someone will disconnect
    1203: C,  # ER_TOO_MANY_USER_CONNECTIONS: per-user max_user_connections; transient
    1226: C,  # ER_USER_LIMIT_REACHED: max_connections_per_hour and friends; passes with time
    1053: C,  # ER_SERVER_SHUTDOWN: the server is shutting down
    1077: C,  # ER_NORMAL_SHUTDOWN
    1078: C,  # ER_GOT_SIGNAL: the server got a signal and is going down
    1080: C,  # ER_FORCING_CLOSE: the server closes this thread while shutting down
    1152: C,  # ER_ABORTING_CONNECTION: the server aborted this connection
    1927: C,  # ER_CONNECTION_KILLED (MariaDB): KILL of this connection (also seen as 2013)
    4031: C,  # ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24+): closed for inactivity
    1213: R,  # ER_LOCK_DEADLOCK: the transaction (or the lone statement) was rolled back
    # ER_CHECKREAD ("Record has changed since last read"; innodb_snapshot_isolation): InnoDB
    # rolled the whole transaction back, as for a deadlock.
    1020: R,
    # ER_LOCK_WAIT_TIMEOUT: InnoDB rolls back the statement only (innodb_rollback_on_timeout
    # is off by default). A single autocommit statement is therefore safe to replay; inside
    # a transaction the transaction layer re-runs the whole transaction.
    1205: R,
    1045: P,  # ER_ACCESS_DENIED_ERROR: wrong user or password
    1044: P,  # ER_DBACCESS_DENIED_ERROR: no grant on the database (also: it does not exist)
    1049: P,  # ER_BAD_DB_ERROR: unknown database
    1129: P,  # ER_HOST_IS_BLOCKED: needs FLUSH HOSTS by an administrator
    1130: P,  # ER_HOST_NOT_PRIVILEGED: this host may not connect at all
    1251: P,  # ER_NOT_SUPPORTED_AUTH_MODE: the client cannot do the server's auth plugin
    2059: P,  # CR_AUTH_PLUGIN_CANNOT_LOAD: PyMySQL lacks the plugin the account uses
}

# Client-side errors without an error number, by message. All mean the connection is gone.
_CONNECTION_MESSAGES = (
    "Not connected",  # _ensure_alive (and the wrapper's pre-write check): nothing was written
    "Cancelled during execution",  # _ensure_alive after a cancel closed the connection
    "Already closed",  # ping(reconnect=False) on a closed connection: nothing was written
    "Packet sequence number wrong",  # InternalError: stream out of step; aiomysql closed it
)
# Of those, the ones raised by checks that run before anything is written: safe to replay.
_UNSENT_MESSAGES = _CONNECTION_MESSAGES[:3]


def errno(exc: BaseException) -> int | None:
    """The MySQL error number ``exc`` carries (server ER_* or client CR_*), if any."""
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, int) and not isinstance(first, bool) and first else None


def _classify_one(exc: BaseException) -> ErrorKind:
    if isinstance(exc, myerr.MySQLError):
        code = errno(exc)
        if code is not None:
            return CODE_KINDS.get(code, Q)
        text = str(exc)
        return C if any(m in text for m in _CONNECTION_MESSAGES) else Q
    if isinstance(exc, ssl.SSLCertVerificationError):
        return P  # the server's certificate fails verification: the same next time
    if isinstance(exc, OSError | TimeoutError | EOFError):
        # Raw socket errors, timeouts and IncompleteReadError; the adapters' own PoolClosed
        # and ConnectPaused are ones too.
        return C
    return Q


def _unsent(exc: BaseException) -> bool:
    return (
        isinstance(exc, myerr.Error)
        and errno(exc) is None
        and any(m in str(exc) for m in _UNSENT_MESSAGES)
    )


def _callers_fault(exc: BaseException) -> bool:
    # The statement is larger than the server's max_allowed_packet: refused before it ran,
    # and the server hung up. The caller's error, no outage.
    return errno(exc) == ER_NET_PACKET_TOO_LARGE


# The strongest kind found along the chain wins: aiomysql wraps every connect failure in 2003,
# a failed certificate check included.
ERRORS = ErrorTable(_classify_one, unsent_one=_unsent, callers_fault=_callers_fault, strongest=True)


def classify_error(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` from its error number, type and message, over its ``__cause__``
    chain (the strongest kind found: PERMANENT > CONNECTION > RETRYABLE > QUERY)."""
    return ERRORS.kind(exc)
