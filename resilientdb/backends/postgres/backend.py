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
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, cast

import asyncpg
from asyncpg import exceptions as pgexc

from ..._credentials import current_password
from ..._redact import register_dsn_secrets
from .._kit.errors import Classifies
from .._kit.pool import CLOSE_TIMEOUT, ConnectGate, expiry, keepalive, ping_bound
from .._kit.roles import WRITER, fits, role_name, wanted
from .._kit.sockets import tune_transport
from .._kit.wheel import TimeoutWheel
from ..base import (
    Backend,
    BackendFacts,
    Connection,
    Cursor,
    Maintains,
    PoolClosed,
    PoolStats,
    ResolvesOutcomes,
    Streams,
    TrimsIdle,
)
from . import catalog
from .catalog import ROLE
from .errors import ERRORS, auth_refused, explain
from .pool import (
    SESSION_SETTINGS,
    Lease,
    close_connection,
    connected_holder_free,
    connection_class,
    restore_script,
    warm_up,
)
from .stream import open_cursor

if TYPE_CHECKING:
    from ..._dsn import DSN
    from ...config import Options

__all__ = ["PostgresBackend"]

FACTS = BackendFacts(
    "postgresql",
    atomic_batch=True,
    readonly_guard=("BEGIN READ ONLY", "ROLLBACK"),
    stream_in_transaction=True,
)


class PostgresBackend(Classifies):
    """asyncpg pool plus PostgreSQL's error semantics."""

    facts = FACTS
    errors = ERRORS

    def __init__(self, dsn: DSN, options: Options) -> None:
        self.dsn = dsn
        self.options = options
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        # Giving a connection back runs asyncpg's reset query: bounded like any statement.
        self._release_timeout = min(options.connect_timeout, options.command_timeout or math.inf)
        self._connection_class = connection_class(options.connect_kwargs)
        self._may_connect = ConnectGate()
        self._wheel = TimeoutWheel()
        self._expires: dict[int, float] = {}  # server pid -> when the connection retires
        # target_session_attrs: asyncpg honours it on every connect (pool and probe); the
        # keepalive and a refused write check it again on connections already open.
        self._attrs = str(options.connect_kwargs.get("target_session_attrs") or wanted(dsn))
        self.role: str | None = None  # the role of the node last seen (health reports it)
        register_dsn_secrets(dsn, options)

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
        self._may_connect.set(may_connect)

    async def _pool_connect(self, *args: Any, **kwargs: Any) -> Any:
        # asyncpg's pool reconnects lazily inside acquire() and in its min-size maintenance;
        # left alone, every caller queued in acquire() would knock on a dead server in turn.
        self._may_connect.check()
        conn = await asyncpg.connect(*args, **kwargs)
        opts = self.options
        if opts.tcp_keepalive:
            tune_transport(getattr(conn, "_transport", None), opts.tcp_user_timeout)
        if opts.max_lifetime is not None:
            pid = conn.get_server_pid()
            self._expires[pid] = expiry(opts)
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
            **{**self._connect_kwargs(), "connection_class": self._connection_class},
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

    async def connect_dedicated(self) -> Any:
        """A connection outside the pool (``db.listen()``'s): the same DSN, ``connect_kwargs``,
        TCP keepalive and ``on_connect`` hook, bounded by ``connect_timeout``. Raises
        ``ConnectPaused`` while the supervisor is checking or reconnecting (only its probe
        knocks on the server then). The caller owns and closes it."""
        self._may_connect.check()
        opts = self.options
        conn = await asyncpg.connect(
            self.dsn.raw, timeout=opts.connect_timeout, **self._connect_kwargs()
        )
        try:
            if opts.tcp_keepalive:
                tune_transport(getattr(conn, "_transport", None), opts.tcp_user_timeout)
            if opts.on_connect is not None:
                async with asyncio.timeout(opts.connect_timeout):
                    await opts.on_connect(conn)
        except BaseException:
            conn.terminate()
            raise
        return conn

    def _connect_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.options.connect_kwargs)
        if self.options.password is not None:
            # asyncpg calls it (and awaits it) on every connect: a rotation is picked up.
            kwargs["password"] = self._password
        return kwargs

    async def _password(self) -> str:
        assert self.options.password is not None
        return await current_password(self.options.password)

    def explain(self, exc: BaseException) -> BaseException:
        """``exc``, or the error naming its fix (``errors.explain``: a pooler's doing)."""
        return explain(exc)

    def auth_failed(self, exc: BaseException) -> bool:
        """The server refused the credentials (a password rotated under us, maybe)."""
        return auth_refused(exc)

    async def probe(self) -> None:
        opts = self.options
        conn = await asyncpg.connect(
            self.dsn.raw, timeout=opts.connect_timeout, **self._connect_kwargs()
        )
        try:
            in_recovery, read_only = await conn.fetchrow(ROLE, timeout=opts.connect_timeout)
            self.role = role_name(in_recovery, read_only)
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
            raise PoolClosed("the PostgreSQL connection pool is closed")
        if timeout is not None and connected_holder_free(pool):
            timeout = None  # acquire() returns without waiting or connecting: no timer needed
        return Lease(pool, timeout, self._wheel, self._release_timeout)

    def raw(self, conn: Connection) -> Any:
        return conn

    def discard(self, conn: Connection) -> None:
        # terminate() closes the socket now; the pool replaces the connection when released.
        with contextlib.suppress(Exception):
            cast("asyncpg.Connection[asyncpg.Record]", conn).terminate()

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
        try:
            for _ in range(pool.get_idle_size()):
                try:
                    async with asyncio.timeout(0.05):
                        grabbed.append(await pool.acquire())
                except TimeoutError:
                    break
        except BaseException:
            for conn in grabbed:
                await pool.release(conn)
            raise

        async def fill() -> None:
            if pool.get_size() < opts.min_size:
                async with asyncio.timeout(opts.connect_timeout):
                    await warm_up(pool, opts.min_size)

        async def ping(conn: Any) -> None:
            if self._attrs in ("any", "prefer-standby"):
                await conn.fetchval("SELECT 1", timeout=ping_bound(opts))
            elif not await self._fits(conn, ping_bound(opts)):
                raise ConnectionError(f"the node is no longer {self._attrs}")

        return await keepalive(
            grabbed,
            # A connection opened before max_lifetime was set up has no entry: never expired.
            expires=lambda conn: self._expires.get(conn.get_server_pid(), math.inf),
            ping=ping,
            retire=self.discard,  # the pool opens a fresh one when needed
            kill=self.discard,
            give_back=pool.release,
            fill=fill,
        )

    def in_transaction(self, conn: Connection) -> bool:
        return bool(cast("asyncpg.Connection[asyncpg.Record]", conn).is_in_transaction())

    def commit_applied(self, result: Any) -> bool:
        return bool(result != "ROLLBACK")  # COMMIT of an aborted transaction answers ROLLBACK

    def write_refused(self, exc: BaseException) -> bool:
        return isinstance(exc, pgexc.PostgresError) and bool(exc.sqlstate == "25006")

    async def _fits(self, conn: Any, timeout: float | None) -> bool:
        """Ask the node its role (remembered for health); whether it fits the DSN."""
        in_recovery, read_only = await conn.fetchrow(ROLE, timeout=timeout)
        self.role = role_name(in_recovery, read_only)
        return fits(self._attrs, in_recovery, read_only)

    async def node_role(self, conn: Connection, timeout: float | None) -> tuple[str, bool]:
        """The node's role (``primary``, ``standby``, ``read-only``) and whether it fits the
        DSN's ``target_session_attrs`` (for health)."""
        ok = await self._fits(conn, timeout)
        return self.role or "unknown", ok

    async def wrong_node(
        self, exc: BaseException, conn: Connection, in_transaction: bool = False
    ) -> bool:
        """A write refused (25006) because the node no longer takes the writes the DSN asks
        for (``target_session_attrs=read-write`` or ``primary``), confirmed by asking it; a
        read-only transaction of the caller's own is not that (the node still fits).

        Inside a transaction, which the error has aborted, no query can run: the answer is
        what the server reports by itself (``in_hot_standby``, ``default_transaction_read_only``:
        PostgreSQL 14 and later), and no answer means "not confirmed"."""
        if not (self._attrs in WRITER and self.write_refused(exc)):
            return False
        if in_transaction:
            settings = cast(Any, conn).get_settings()
            standby = getattr(settings, "in_hot_standby", None)
            read_only = getattr(settings, "default_transaction_read_only", None)
            if standby is None or read_only is None:
                return False
            self.role = role_name(standby == "on", read_only == "on")
            return not fits(self._attrs, standby == "on", read_only == "on")
        try:
            return not await self._fits(conn, self.options.connect_timeout)
        except Exception:
            return False  # an aborted transaction of the caller's, or the connection is gone

    async def harmless_functions(
        self, conn: Connection, names: frozenset[str]
    ) -> tuple[frozenset[str], frozenset[str]]:
        """Of ``names``, those with no VOLATILE overload; the VOLATILE operators' names."""
        return await catalog.harmless_functions(conn, names, self.options.connect_timeout)

    async def transaction_mark(self, conn: Connection) -> tuple[str | None, str]:
        """Inside a transaction: its id (``None`` when it has none: it wrote nothing) and
        which run of the server assigned it. Sent just before COMMIT."""
        return await catalog.transaction_mark(conn)

    async def transaction_status(self, conn: Connection, xid: str) -> tuple[str | None, str]:
        """What the server says of transaction ``xid`` (``catalog.transaction_status``)."""
        return await catalog.transaction_status(conn, xid, self.options.connect_timeout)

    def stats(self) -> PoolStats:
        pool, opts = self._pool, self.options
        size, idle = (0, 0) if pool is None else (pool.get_size(), pool.get_idle_size())
        return PoolStats(size, idle, size - idle, opts.min_size, opts.max_size)

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
        return await open_cursor(conn, query, args, begin=begin, end=end, timeout=timeout)


if TYPE_CHECKING:  # mypy checks the adapter against the protocols it implements

    def _conforms(
        backend: PostgresBackend,
    ) -> tuple[Backend, Maintains, Streams, TrimsIdle, ResolvesOutcomes]:
        return backend, backend, backend, backend, backend
