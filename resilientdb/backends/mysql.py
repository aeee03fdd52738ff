"""The MySQL / MariaDB adapter, on aiomysql, with a small pool of its own.

Why not ``aiomysql.create_pool``: it hands out connections the server has already closed
(it looks for EOF only while refilling), its ``pool_recycle`` measures idle time, not age,
``acquire()`` takes no timeout, a connect cancelled midway leaks its socket, and nothing
stops it reconnecting while the supervisor probes. The pool here follows asyncpg instead:
``max_size`` bounds open connections and waiters are served in order; ``acquire(timeout)``
bounds the wait and the connect together; an idle connection is checked with no round trip
(closed flag, EOF or reset from the server after KILL / ``wait_timeout`` / restart,
transport, generation, jittered ``max_lifetime``, ``max_idle``) before it is handed out;
reuse is LIFO so the cold ones age out (down to ``min_size``); a connection given back
closed, past its lifetime, inside a transaction, without autocommit, or from a generation
retired by ``refresh()`` is closed, not pooled; new connections open only while the
supervisor's connect gate allows it (else ``ConnectPaused``). ``maintain()`` (the
monitor's keepalive) pings idle connections and tops the pool up to ``min_size``;
``trim_idle()`` serves the memory watchdog. TCP sockets get keepalive and
``TCP_USER_TIMEOUT`` (``tcp_keepalive``, ``tcp_user_timeout``).

aiomysql's traps, handled: its ``connect_timeout`` covers only the TCP open, so the whole
handshake is bounded by ``asyncio.timeout(connect_timeout)`` (``on_connect`` gets a bound of
its own), driven through ``Connection._connect()`` so that a cancelled connect closes its
socket. There is no read timeout: every call is bounded by its ``timeout``, and a call that
times out or is cancelled closes its connection (a reply may still arrive) and raises
``TimeoutError``; ``timeout=None`` means ``command_timeout``. ``ping()`` reconnects
silently by default, losing session state: the keepalive uses ``ping(reconnect=False)``
only, and ``probe`` opens a fresh connection. A connection whose server hung up while
idle is noticed before anything is written (``InterfaceError(0, 'Not connected ...')``,
safe to replay) where aiomysql would write and then raise 2013 (outcome unknown). The
``SHOW WARNINGS`` round trip aiomysql makes after a statement with warnings (to
``warnings.warn`` them) is skipped: its failure would make a completed write look unknown.

Calls run in autocommit mode: each single statement commits by itself. SQL reaches the
driver untouched, in PyMySQL's ``%s`` paramstyle, arguments as a tuple; with no arguments no
``%`` formatting happens. ``execute`` returns the affected row count (asyncpg: a command
tag), ``executemany`` the total. Rows are ``resilientdb._row.Row``. Driver internals used:
``Connection._connect``, ``_reader``, ``_writer`` (as aiomysql's own pool does).

The connection wrapper is in ``_mysql_connection.py``, the pool in ``_mysql_pool.py``;
this module keeps the error table and the ``MySQLBackend`` facade over the two.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

from pymysql import err as myerr

from .._redact import register_secret
from ..config import DSN, Options
from ._mysql_connection import MySQLConnection, driver_kwargs, quit_raw
from ._mysql_pool import Pool
from .base import BackendFacts, Connection, ErrorKind, PoolStats, with_closed_flag

__all__ = ["CODE_KINDS", "MySQLBackend", "MySQLConnection", "classify_error"]

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY
FACTS = BackendFacts(
    "mysql",
    # PyMySQL runs a batch as separate statements (or a multi-row INSERT), each committing
    # on its own in autocommit mode: a failure midway leaves the earlier rows applied.
    atomic_batch=False,
    readonly_guard=("START TRANSACTION READ ONLY", "ROLLBACK"),
    status_statement="DO 0",  # its OK packet carries SERVER_STATUS_IN_TRANS
)
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
    "pool is closed",  # the adapter's own pool after close(): nothing was written
    "Packet sequence number wrong",  # InternalError: stream out of step; aiomysql closed it
)
# Of those, the ones raised by checks that run before anything is written: safe to replay.
_UNSENT_MESSAGES = _CONNECTION_MESSAGES[:4]
_PRIORITY = {Q: 0, R: 1, C: 2, P: 3}


def _errno(exc: BaseException) -> int | None:
    first = exc.args[0] if exc.args else None
    return first if isinstance(first, int) and not isinstance(first, bool) and first else None


def classify_error(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` from its error number, type and message, over its ``__cause__`` chain.

    The strongest kind found wins (PERMANENT > CONNECTION > RETRYABLE > QUERY): aiomysql wraps
    every connect failure in 2003, a failed certificate check included.
    """
    seen: set[int] = set()
    best = Q
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        kind = _classify_one(cur)
        if _PRIORITY[kind] > _PRIORITY[best]:
            best = kind
        cur = cur.__cause__
    return best


def _classify_one(exc: BaseException) -> ErrorKind:
    if isinstance(exc, myerr.MySQLError):
        code = _errno(exc)
        if code is not None:
            return CODE_KINDS.get(code, Q)
        text = str(exc)
        return C if any(m in text for m in _CONNECTION_MESSAGES) else Q
    if isinstance(exc, ssl.SSLCertVerificationError):
        return P  # the server's certificate fails verification: the same next time
    if isinstance(exc, OSError | TimeoutError | EOFError):
        # Raw socket errors, timeouts and IncompleteReadError; ConnectPaused is one too.
        return C
    return Q


class MySQLBackend:
    """A small aiomysql pool plus MySQL's and MariaDB's error semantics."""

    facts = FACTS

    def __init__(self, dsn: DSN, options: Options) -> None:
        self.dsn = dsn
        self.options = options
        register_secret(dsn.password)
        pw = options.connect_kwargs.get("password")
        register_secret(pw if isinstance(pw, str) else None)
        self._kwargs = driver_kwargs(dsn, options)
        self._pool = Pool(self._kwargs, options)

    @property
    def opened(self) -> bool:
        return self._pool.opened

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        self._pool.set_connect_gate(may_connect)

    def begin_statements(self, isolation: str | None, readonly: bool) -> tuple[str, ...]:
        start = "START TRANSACTION READ ONLY" if readonly else "START TRANSACTION"
        if isolation is None:
            return (start,)
        # Without SESSION or GLOBAL it applies to the next transaction only.
        return (f"SET TRANSACTION ISOLATION LEVEL {isolation}", start)

    # -- connections and the pool (in _mysql_pool.py) ----------------------------------------

    async def open(self) -> None:
        if self._pool.opened:
            return
        if self.options.min_size == 0:
            await self.probe()  # still check the server and the credentials now
        await self._pool.open()

    async def probe(self) -> None:
        conn = await self._pool.connect(hook=False)
        try:
            await conn.fetchval("SELECT 1", timeout=self.options.connect_timeout)
        finally:
            quit_raw(conn.raw)

    async def refresh(self) -> None:
        # Connections in use are closed when released (their generation is old).
        self._pool.refresh()

    async def close(self) -> None:
        await self._pool.close()

    def acquire(self, timeout: float | None) -> AbstractAsyncContextManager[Connection]:
        return self._pool.acquire(timeout)

    async def maintain(self) -> int:
        """Keepalive and lifetime, on idle connections only; returns how many were dead.

        The idle connections are taken out of the pool, each with a slot (so they are ours
        alone and ``max_size`` holds), retired when past their lifetime, else pinged with
        ``ping(reconnect=False)``; then the pool is topped up to ``min_size``.
        """
        return await self._pool.maintain()

    async def trim_idle(self) -> int:
        """Close idle connections beyond ``min_size``, oldest first (memory watchdog)."""
        return await self._pool.trim_idle()

    def raw(self, conn: Connection) -> Any:
        return cast(MySQLConnection, conn).raw

    def discard(self, conn: Connection) -> None:
        with contextlib.suppress(Exception):
            cast(MySQLConnection, conn).raw.close()

    # -- errors -------------------------------------------------------------------------------

    def classify(self, exc: BaseException, conn: Connection | None = None) -> ErrorKind:
        if _errno(exc) == ER_NET_PACKET_TOO_LARGE:
            # The statement is larger than the server's max_allowed_packet: refused before it
            # ran, and the server hung up. The caller's error, no outage.
            return Q
        return with_closed_flag(classify_error(exc), conn, exc)

    def classify_connect(self, exc: BaseException) -> ErrorKind:
        kind = classify_error(exc)
        if kind is R:
            return C
        # Anything else failing at connect (a grant, a broken on_connect hook) fails the
        # same way next time: permanent, probed slowly.
        return kind if kind is C else P

    def unsent(self, exc: BaseException) -> bool:
        return (
            isinstance(exc, myerr.Error)
            and _errno(exc) is None
            and any(m in str(exc) for m in _UNSENT_MESSAGES)
        )

    def stats(self) -> PoolStats:
        return self._pool.stats()

    def in_transaction(self, conn: Connection) -> bool:
        # SERVER_STATUS_IN_TRANS of the last OK packet: an implicit commit clears it.
        return bool(cast(MySQLConnection, conn).raw.get_transaction_status())

    def commit_applied(self, result: Any) -> bool:
        return True  # MySQL answers a COMMIT that cannot commit with an error

    def write_refused(self, exc: BaseException) -> bool:
        return isinstance(exc, myerr.MySQLError) and (
            _errno(exc) == ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        )


if TYPE_CHECKING:
    from .base import Backend

    def _conforms(backend: MySQLBackend) -> Backend:
        return backend  # mypy checks the adapter against the Backend protocol here
