"""The PostgreSQL adapter, on asyncpg.

asyncpg's pool reconnects lazily on acquire, which is what the supervisor wants: while the
gate is closed nobody acquires, so only the reconnect loop's probe knocks on the server, and
after recovery ``expire_connections()`` retires the old generation in one call.

``on_connect`` runs once per new connection, bounded by ``connect_timeout``. asyncpg's release
runs ``RESET ALL``, which would undo the session settings the hook made; so after the hook
the session's settings are read back once, and that connection's reset query restores them
(``RESET ALL`` then ``set_config`` of each): every call starts from the hook's state, and a
``SET`` made by one call never leaks into the next. Releasing is bounded too: a connection
whose reset does not answer in time is terminated (asyncpg's own rule).

An acquire that would open a new connection is bounded by the caller's timeout (the shared
timeout wheel); one that finds an open connection free takes no timer at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

import asyncpg
from asyncpg import exceptions as pgexc

from .._redact import register_secret
from .._wheel import TimeoutWheel
from ..config import DSN, Options
from ._pg_pool import (
    CLOSE_TIMEOUT,
    SESSION_SETTINGS,
    Lease,
    close_connection,
    connected_holder_free,
    connection_class,
    restore_script,
    warm_up,
)
from ._sockets import tune_transport
from .base import (
    Backend,
    BackendFacts,
    Connection,
    ConnectPaused,
    ErrorKind,
    Maintains,
    PoolStats,
    TrimsIdle,
    with_closed_flag,
)

__all__ = ["SQLSTATE_KINDS", "PostgresBackend", "classify_error"]

FACTS = BackendFacts(
    "postgresql", atomic_batch=True, readonly_guard=("BEGIN READ ONLY", "ROLLBACK")
)
_FUNCTIONS = (
    "SELECT p.proname::text, bool_or(p.provolatile = 'v') FROM pg_catalog.pg_proc p "
    "WHERE p.proname::text = ANY($1::text[]) GROUP BY p.proname"
)
_VOLATILE_OPERATORS = (
    "SELECT DISTINCT o.oprname::text FROM pg_catalog.pg_operator o "
    "JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode WHERE p.provolatile = 'v'"
)


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
_UNSENT_MESSAGES = (
    "connection is closed",
    "pool is closing",
    "pool is closed",
    "released back to the pool",
)


def classify_error(exc: BaseException) -> ErrorKind:
    """The kind of ``exc`` from its type, SQLSTATE and message, following ``__cause__``."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        kind = _classify_one(cur)
        if kind is not ErrorKind.QUERY:
            return kind
        cur = cur.__cause__
    return ErrorKind.QUERY


def _classify_one(exc: BaseException) -> ErrorKind:
    if isinstance(exc, pgexc.PostgresError):
        code = exc.sqlstate or ""
        return SQLSTATE_KINDS.get(code) or SQLSTATE_CLASS_KINDS.get(code[:2], ErrorKind.QUERY)
    if isinstance(exc, pgexc.TargetServerAttributeNotMatched):
        return C  # target_session_attrs: no primary yet (mid-failover); another may come up
    if isinstance(exc, pgexc.ClientConfigurationError):
        return P  # a bad sslmode or option: retrying cannot fix it
    if isinstance(exc, pgexc.InterfaceError):
        text = str(exc)
        return C if any(m in text for m in _UNSENT_MESSAGES) else ErrorKind.QUERY
    if isinstance(exc, OSError | TimeoutError | EOFError):
        # Raw socket errors escape asyncpg: refused, reset, unreachable, DNS, and timeouts
        # of the connect itself.
        return C
    return ErrorKind.QUERY


class PostgresBackend:
    """asyncpg pool plus PostgreSQL's error semantics."""

    facts = FACTS

    def __init__(self, dsn: DSN, options: Options) -> None:
        self.dsn = dsn
        self.options = options
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        # Giving a connection back runs asyncpg's reset query: bounded like any statement.
        self._release_timeout = min(options.connect_timeout, options.command_timeout or math.inf)
        self._connection_class = connection_class(options.connect_kwargs)
        self._may_connect: Callable[[], bool] = lambda: True
        self._wheel = TimeoutWheel()
        self._expires: dict[int, float] = {}  # server pid -> when the connection retires
        register_secret(dsn.password)
        register_secret(dsn.options.get("password"))
        pw = options.connect_kwargs.get("password")
        register_secret(pw if isinstance(pw, str) else None)

    @property
    def opened(self) -> bool:
        return self._pool is not None

    async def _init_connection(self, conn: asyncpg.Connection[asyncpg.Record]) -> None:
        hook = self.options.on_connect
        if hook is None:
            return
        async with asyncio.timeout(self.options.connect_timeout):
            await hook(conn)
            settings = await conn.fetch(SESSION_SETTINGS)
        base = cast(Any, type(conn)).__bases__[0].get_reset_query(conn)  # the driver's own
        with contextlib.suppress(AttributeError):  # a connection class of the user's own
            cast(Any, conn)._resilientdb_reset = restore_script(base, list(settings))

    def begin_statements(self, isolation: str | None, readonly: bool) -> tuple[str, ...]:
        sql = "BEGIN"
        if isolation is not None:
            sql += f" ISOLATION LEVEL {isolation}"
        if readonly:
            sql += " READ ONLY"
        return (sql,)

    def set_connect_gate(self, may_connect: Callable[[], bool]) -> None:
        self._may_connect = may_connect

    async def _pool_connect(self, *args: Any, **kwargs: Any) -> Any:
        # asyncpg's pool reconnects lazily inside acquire() and in its min-size maintenance;
        # left alone, every caller queued in acquire() would knock on a dead server in turn.
        if not self._may_connect():
            raise ConnectPaused("the supervisor is reconnecting; the pool does not connect now")
        conn = await asyncpg.connect(*args, **kwargs)
        opts = self.options
        if opts.tcp_keepalive:
            tune_transport(getattr(conn, "_transport", None), opts.tcp_user_timeout)
        if opts.max_lifetime is not None:
            # Each connection gets its own jittered end of life, so a fleet started together
            # does not reconnect together.
            life = opts.max_lifetime * (1.0 - random.uniform(0.0, opts.lifetime_jitter))
            pid = conn.get_server_pid()
            self._expires[pid] = time.monotonic() + life
            conn.add_termination_listener(lambda _c: self._expires.pop(pid, None))
        return conn

    async def open(self) -> None:
        opts = self.options
        pool = asyncpg.create_pool(
            self.dsn.raw,
            # asyncpg's own floor maintenance would retry connecting in the background during
            # an outage (and log a traceback each time); the floor is opened here instead.
            min_size=0,
            max_size=opts.max_size,
            max_inactive_connection_lifetime=opts.max_idle or 0.0,
            timeout=opts.connect_timeout,
            # The connection-level default bounds every statement sent with timeout=None,
            # the release-time RESET included, at the cost of one protocol timer.
            command_timeout=opts.command_timeout,
            init=self._init_connection,
            connect=self._pool_connect,
            **{**opts.connect_kwargs, "connection_class": self._connection_class},
        )
        # min_size connections open concurrently, each bounded by `timeout`; the outer bound
        # covers on_connect hooks too. A failed open terminates what it opened.
        async with asyncio.timeout(opts.connect_timeout * 2):
            ready = await pool
            try:
                await warm_up(ready, max(opts.min_size, 1))
            except BaseException:
                ready.terminate()
                raise
        self._pool = ready

    async def probe(self) -> None:
        opts = self.options
        conn = await asyncpg.connect(
            self.dsn.raw, timeout=opts.connect_timeout, **dict(opts.connect_kwargs)
        )
        try:
            await conn.fetchval("SELECT 1", timeout=opts.connect_timeout)
        finally:
            await close_connection(conn)

    async def refresh(self) -> None:
        if self._pool is not None:
            await self._pool.expire_connections()

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout=CLOSE_TIMEOUT)
        except (TimeoutError, OSError, pgexc.PostgresError, pgexc.InterfaceError):
            pool.terminate()

    def acquire(self, timeout: float | None) -> AbstractAsyncContextManager[Connection]:
        pool = self._pool
        if pool is None:
            raise pgexc.InterfaceError("pool is closed")
        if timeout is not None and connected_holder_free(pool):
            timeout = None  # acquire() returns without waiting or connecting: no timer needed
        return Lease(pool, timeout, self._wheel, self._release_timeout)

    def raw(self, conn: Connection) -> Any:
        return conn

    def discard(self, conn: Connection) -> None:
        # terminate() closes the socket now; the pool replaces the connection when released.
        with contextlib.suppress(Exception):
            cast("asyncpg.Connection[asyncpg.Record]", conn).terminate()

    def classify(self, exc: BaseException, conn: Connection | None = None) -> ErrorKind:
        if isinstance(exc, pgexc.ProtocolViolationError):
            # 08P01: the server refused the message itself (a NUL in the query text) before
            # running anything, and closed the connection: the caller's error, no outage.
            return ErrorKind.QUERY
        return with_closed_flag(classify_error(exc), conn, exc)

    def classify_connect(self, exc: BaseException) -> ErrorKind:
        kind = classify_error(exc)
        if kind is ErrorKind.RETRYABLE:
            return C
        # Anything else failing at connect (a permission error, a broken on_connect hook)
        # will fail the same way next time: permanent, probed slowly.
        return kind if kind is C else P

    def unsent(self, exc: BaseException) -> bool:
        return isinstance(exc, pgexc.InterfaceError) and any(
            m in str(exc) for m in _UNSENT_MESSAGES
        )

    async def trim_idle(self) -> int:
        """Close idle connections beyond ``min_size`` (for the memory watchdog); how many.

        asyncpg has no public call for this. It goes through the pool's own inactivity path
        (``_deactivate_inactive_connection``), which never touches a connection in use and
        keeps the ``min_size`` floor; should asyncpg's internals change, nothing is trimmed.
        """
        pool = self._pool
        if pool is None:
            return 0
        before = pool.get_size()
        with contextlib.suppress(Exception):
            for holder in list(cast(Any, pool)._holders):
                if pool.get_size() <= self.options.min_size:
                    break
                if holder.is_connected() and holder._in_use is None:
                    # Cancel the pending inactivity timer first, or it would fire later on a
                    # holder that may be in use again by then.
                    holder._maybe_cancel_inactive_callback()
                    holder._deactivate_inactive_connection()
        return max(before - pool.get_size(), 0)

    async def maintain(self) -> int:
        """Keepalive and lifetime, on idle connections only; returns how many were dead.

        Every idle connection is taken out of the pool at once (so it is ours alone), retired
        if past its lifetime, else pinged; then the pool is topped up to ``min_size``.
        """
        pool, opts = self._pool, self.options
        if pool is None or not self._may_connect():
            return 0
        grabbed: list[Any] = []
        dead = 0
        try:
            for _ in range(pool.get_idle_size()):
                try:
                    async with asyncio.timeout(0.05):
                        grabbed.append(await pool.acquire())
                except TimeoutError:
                    break
            now = time.monotonic()
            for conn in grabbed:
                if self._expires.get(conn.get_server_pid(), now + 1) <= now:
                    self.discard(conn)  # retired: the pool opens a fresh one when needed
                    continue
                try:
                    await conn.fetchval("SELECT 1", timeout=min(opts.connect_timeout, 5.0))
                except Exception:
                    self.discard(conn)
                    dead += 1
        finally:
            for conn in grabbed:
                with contextlib.suppress(Exception):
                    await pool.release(conn)
        if not dead and pool.get_size() < opts.min_size:
            try:
                async with asyncio.timeout(opts.connect_timeout):
                    await warm_up(pool, opts.min_size)
            except Exception:
                dead += 1
        return dead

    def in_transaction(self, conn: Connection) -> bool:
        return bool(cast("asyncpg.Connection[asyncpg.Record]", conn).is_in_transaction())

    def commit_applied(self, result: Any) -> bool:
        return bool(result != "ROLLBACK")  # COMMIT of an aborted transaction answers ROLLBACK

    def write_refused(self, exc: BaseException) -> bool:
        return isinstance(exc, pgexc.PostgresError) and bool(exc.sqlstate == "25006")

    async def harmless_functions(
        self, conn: Connection, names: frozenset[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """Of ``names``, those with no VOLATILE overload; the VOLATILE operators' names."""
        raw = cast("asyncpg.Connection[asyncpg.Record]", conn)
        bound = self.options.connect_timeout
        rows = await raw.fetch(_FUNCTIONS, sorted(names), timeout=bound)
        operators = await raw.fetch(_VOLATILE_OPERATORS, timeout=bound)
        return (
            frozenset(name for name, volatile in rows if not volatile),
            frozenset(op for (op,) in operators),
        )

    def stats(self) -> PoolStats:
        pool, opts = self._pool, self.options
        if pool is None:
            return PoolStats(0, 0, 0, opts.min_size, opts.max_size)
        size, idle = pool.get_size(), pool.get_idle_size()
        return PoolStats(size, idle, size - idle, opts.min_size, opts.max_size)


if TYPE_CHECKING:  # mypy checks the adapter against the protocols it implements

    def _conforms(backend: PostgresBackend) -> tuple[Backend, Maintains, TrimsIdle]:
        return backend, backend, backend
