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

The connection wrapper is in ``connection.py``, the pool in ``pool.py``, the error table in
``errors.py``, the checks on the DSN and ``connect_kwargs`` in ``settings.py``; this module
keeps the ``MySQLBackend`` facade over them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

from pymysql import err as myerr

from ..._redact import register_dsn_secrets
from .._kit.errors import Classifies
from .._kit.roles import fits, role_name, wanted, wants_writer
from ..base import BackendFacts, Connection, Cursor, PoolStats
from .connection import MySQLConnection, quit_raw
from .errors import ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION, ERRORS, errno
from .hosts import read_only
from .pool import MySQLPool
from .settings import driver_kwargs
from .stream import open_cursor

if TYPE_CHECKING:
    from ..._dsn import DSN
    from ...config import Options

__all__ = ["MySQLBackend"]

# ER_OPTION_PREVENTS_STATEMENT (--read-only), ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION.
_READ_ONLY_REFUSALS = frozenset({1290, ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION})

FACTS = BackendFacts(
    "mysql",
    # PyMySQL runs a batch as separate statements (or a multi-row INSERT), each committing
    # on its own in autocommit mode: a failure midway leaves the earlier rows applied.
    atomic_batch=False,
    readonly_guard=("START TRANSACTION READ ONLY", "ROLLBACK"),
    status_statement="DO 0",  # its OK packet carries SERVER_STATUS_IN_TRANS
)


class MySQLBackend(Classifies):
    """A small aiomysql pool plus MySQL's and MariaDB's error semantics."""

    facts = FACTS
    errors = ERRORS

    def __init__(self, dsn: DSN, options: Options, kwargs: dict[str, Any] | None = None) -> None:
        """``kwargs``: aiomysql's connect arguments, validated by the registry's spec
        (``settings.driver_kwargs``); computed from ``dsn`` and ``options`` when not given."""
        self.dsn = dsn
        self.options = options
        register_dsn_secrets(dsn, options)
        self._kwargs = driver_kwargs(dsn, options) if kwargs is None else kwargs
        # A host list is tried in order (hosts.py), unless connect_kwargs names the host.
        hosts = dsn.hosts if len(dsn.hosts) > 1 and "host" not in options.connect_kwargs else ()
        self._pool = MySQLPool(self._kwargs, options, hosts, wanted(dsn))

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

    # -- connections and the pool (in pool.py) ------------------------------------------------

    async def open(self) -> None:
        if self._pool.opened:
            return
        if self.options.min_size == 0:
            await self.probe()  # still check the server and the credentials now
        await self._pool.open()

    @property
    def role(self) -> str | None:
        """The role of the node last seen (``primary`` or ``read-only``), for health."""
        return self._pool.role

    async def probe(self) -> None:
        conn = await self._pool.connect(hook=False)
        try:
            ro = await read_only(conn, self.options.connect_timeout)
            self._pool.role = role_name(False, ro)
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

    def stats(self) -> PoolStats:
        return self._pool.stats()

    def in_transaction(self, conn: Connection) -> bool:
        # SERVER_STATUS_IN_TRANS of the last OK packet: an implicit commit clears it.
        return bool(cast(MySQLConnection, conn).raw.get_transaction_status())

    def commit_applied(self, result: Any) -> bool:
        return True  # MySQL answers a COMMIT that cannot commit with an error

    def write_refused(self, exc: BaseException) -> bool:
        return isinstance(exc, myerr.MySQLError) and (
            errno(exc) == ER_CANT_EXECUTE_IN_READ_ONLY_TRANSACTION
        )

    async def open_cursor(
        self,
        conn: Connection,
        query: str,
        args: tuple[Any, ...],
        *,
        begin: str | None,
        end: str | None,
        timeout: float | None,
    ) -> Cursor:
        """A cursor on ``query`` for ``db.iterate()`` (``stream.py``)."""
        return await open_cursor(
            cast(MySQLConnection, conn), query, args, begin=begin, end=end, timeout=timeout
        )

    def auth_failed(self, exc: BaseException) -> bool:
        """The server refused the credentials (1045; a password rotated under us, maybe)."""
        cur: BaseException | None = exc
        for _ in range(10):  # aiomysql wraps connect failures; the chain is short
            if cur is None:
                return False
            if isinstance(cur, myerr.MySQLError) and errno(cur) == 1045:
                return True
            cur = cur.__cause__
        return False

    async def node_role(self, conn: Connection, timeout: float | None) -> tuple[str, bool]:
        """The node's role (``primary`` or ``read-only``) and whether it fits the DSN's
        ``target_session_attrs`` (for health)."""
        ro = await read_only(cast(MySQLConnection, conn), timeout or self.options.connect_timeout)
        self._pool.role = role_name(False, ro)
        return self._pool.role, fits(wanted(self.dsn), ro, ro)

    async def wrong_node(
        self, exc: BaseException, conn: Connection, in_transaction: bool = False
    ) -> bool:
        """A write refused under ``read_only`` (1290, 1792) while the DSN asks for a writable
        node (``target_session_attrs=read-write``), confirmed by asking the node."""
        if not (wants_writer(self.dsn) and errno(exc) in _READ_ONLY_REFUSALS):
            return False
        try:
            ro = await read_only(cast(MySQLConnection, conn), self.options.connect_timeout)
        except Exception:
            return False
        self._pool.role = role_name(False, ro)
        return ro


if TYPE_CHECKING:
    from ..base import Backend, Streams

    def _conforms(backend: MySQLBackend) -> tuple[Backend, Streams]:
        return backend, backend  # mypy checks the adapter against the Backend protocol here
