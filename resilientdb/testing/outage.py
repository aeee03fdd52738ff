"""Outages on demand for a test: a :class:`FaultProxy` run on its own event loop in a
background thread, so that it works from sync and async tests alike, whatever event loop
(and loop scope) the test uses, and optional server-side faults on a
:class:`~resilientdb.testing.postgres.TemporaryPostgres`.

::

    outage = Outage.start("postgresql://app@127.0.0.1:5432/app", server=None)
    sup = Supervisor(outage.dsn)             # the application talks through the proxy
    outage.reset()                           # every connection gets a TCP RST
    await outage.partition(2)                # a blackhole for 2 s, then healed
    await outage.down(1)                     # connections reset, new ones refused, for 1 s
    await outage.restart_server()            # with server=: a real restart
    await outage.terminate_connections()     # with server=: pg_terminate_backend()
    outage.close()

The pytest plugin (``resilientdb.testing.pytest_plugin``) hands these out as fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from ..config import parse_dsn, with_host
from .postgres import TemporaryPostgres
from .proxy import FaultProxy, ProxyStats

__all__ = ["Outage"]

T = TypeVar("T")
_CALL_TIMEOUT = 30.0


class _LoopThread:
    """An event loop in a daemon thread; ``call`` runs a function on it and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="resilientdb-outage", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_CALL_TIMEOUT)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        async def call() -> T:
            return fn(*args)

        return self.run(call())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(_CALL_TIMEOUT)
        if not self._thread.is_alive():
            self.loop.close()


class Outage:
    """A FaultProxy in front of one database, with outage helpers; see the module doc."""

    def __init__(
        self, dsn: str, *, server: TemporaryPostgres | None, thread: _LoopThread, proxy: FaultProxy
    ) -> None:
        self.target_dsn = dsn
        self.server = server
        self._thread = thread
        self._proxy = proxy
        self.dsn = with_host(parse_dsn(dsn), proxy.host, proxy.port)
        """The DSN to give the application: the same database, through the proxy."""

    @classmethod
    def start(cls, dsn: str, *, server: TemporaryPostgres | None = None) -> Outage:
        parsed = parse_dsn(dsn)
        if parsed.host is None:
            raise ValueError(f"{parsed}: a FaultProxy needs a TCP host and port")
        port = parsed.port or (5432 if parsed.backend == "postgres" else 3306)
        thread = _LoopThread()
        proxy = FaultProxy(parsed.host, port)
        try:
            thread.run(proxy.start())
        except BaseException:
            thread.close()
            raise
        return cls(dsn, server=server, thread=thread, proxy=proxy)

    def close(self) -> None:
        """Stop the proxy (every connection through it ends) and its thread."""
        with contextlib.suppress(Exception):
            self._thread.run(self._proxy.stop())
        self._thread.close()

    # -- network faults, at once ----------------------------------------------------------
    def reset(self) -> int:
        """Every live connection through the proxy gets a TCP RST; how many there were."""
        return self._thread.call(self._proxy.reset)

    def refuse(self) -> None:
        """New connections are reset at once, as a closed port; existing ones keep working."""
        self._thread.call(self._proxy.refuse)

    def blackhole(self) -> None:
        """A partition: bytes are held, nothing errors, until :meth:`heal`."""
        self._thread.call(self._proxy.blackhole)

    def heal(self) -> None:
        """Back to passing bytes through (held bytes are delivered)."""
        self._thread.call(self._proxy.pass_through)

    def set_latency(self, seconds: float) -> None:
        """Delay every chunk by ``seconds`` in both directions (0 to stop)."""
        self._thread.call(self._proxy.set_latency, seconds)

    @property
    def stats(self) -> ProxyStats:
        """The proxy's counters: connection attempts, refused, resets, active connections."""
        return self._thread.call(lambda: self._proxy.stats)

    @contextlib.contextmanager
    def partitioned(self) -> Iterator[None]:
        """``with outage.partitioned():`` a blackhole for the block's duration."""
        self.blackhole()
        try:
            yield
        finally:
            self.heal()

    # -- outages that last, awaited -------------------------------------------------------
    async def partition(self, seconds: float) -> None:
        """A network partition (blackhole) for ``seconds``, then healed."""
        self.blackhole()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.heal()

    async def down(self, seconds: float) -> None:
        """As a server going away: connections reset, new ones refused for ``seconds``."""
        self.reset()
        self.refuse()
        try:
            await asyncio.sleep(seconds)
        finally:
            self.heal()

    # -- server-side faults (the throwaway server only) -----------------------------------
    def _server(self) -> TemporaryPostgres:
        if self.server is None:
            raise RuntimeError("server-side faults need the throwaway server (server=...)")
        return self.server

    async def restart_server(self, mode: str = "fast") -> None:
        """A real restart: ``pg_ctl restart -m mode``; returns once it accepts again."""
        await asyncio.to_thread(self._server().restart, mode)

    async def terminate_connections(self, user: str = "app") -> int:
        """``pg_terminate_backend`` on every session of ``user``; how many there were."""
        return await asyncio.to_thread(self._server().terminate_connections, user)
