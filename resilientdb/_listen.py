"""LISTEN/NOTIFY that survives reconnects (PostgreSQL): one dedicated connection per Database.

Every subscriber of a Database (``db.listen(...)``) shares one connection, opened outside the
pool (it is not counted in ``max_size``: a Database with subscribers holds one connection more)
and owned by one task of the supervisor's, started with the first subscriber and ended, with
its connection closed, when the last one leaves or the supervisor closes.

When that connection is lost (a server restart, a reset, a ping that went unanswered) the task
waits for the gate, connects again and issues LISTEN for every channel before anything else.
Then each subscriber that was listening receives a ``NotificationsMissed`` marker, in order:
what it received before the marker came before the loss, what follows came after LISTEN was in
effect again, and anything notified in between may be lost. Notifications that arrive while the
channels are being listened to again are held back until the marker is in place, so that the
marker is never seen before every channel of its subscriber listens. The same event goes to the
supervisor's handlers.

Each subscriber has its own bounded queue. The connection's reader never waits for a
subscriber: when a queue is full the newest notifications are dropped (counted), and once the
subscriber has caught up it receives a ``NotificationsMissed`` marker (``reason="overflow"``,
``dropped``) before anything newer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ._redact import describe
from ._states import State
from ._subscription import Notification, Subscription
from ._tasks import finish
from .backends.base import ConnectPaused, ErrorKind
from .errors import DatabaseUnavailable, SupervisorClosed
from .events import NotificationsMissed

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["Listener"]

logger = logging.getLogger("resilientdb")

_GATE_POLL = 0.1  # how often a listener waiting for the backend looks at its state
_CLOSE_BOUND = 2.0


class Listener:
    """The dedicated listening connection of one Database and its subscribers."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.name = engine.name
        self._subs: list[Subscription] = []
        self._conn: Any = None
        self._generation = 0  # the monitor's generation when the connection was opened
        self._listening: set[str] = set()
        self._task: asyncio.Task[Any] | None = None
        self._changed: asyncio.Event | None = None
        self._closed = False
        self._gap: str | None = None  # the loss the next complete LISTEN ends (its cause)
        self._last_error: BaseException | None = None
        self.connects = 0  # connections opened (tests and statistics)

    @property
    def connection(self) -> Any:
        """The listening connection now, or None (tests)."""
        return self._conn

    def emit(self, event: NotificationsMissed) -> None:
        self._engine.monitor.bus.emit(event)

    # -- subscribers -------------------------------------------------------------------------

    async def subscribe(self, sub: Subscription, timeout: float | None) -> None:
        """Add ``sub`` and wait until LISTEN is in effect for all its channels."""
        gate = self._engine.gate
        if self._closed or gate.state is State.CLOSED:
            raise SupervisorClosed(gate.closed_reason)
        self._subs.append(sub)
        self._kick()
        bound = self._engine.options.gate_timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(bound):
                while not sub.active and not sub._closed:
                    assert sub._wakeup is not None
                    sub._wakeup.clear()
                    await sub._wakeup.wait()
        except TimeoutError:
            await sub.aclose()
            last = self._last_error or gate.last_error
            why = describe(last) if last is not None else "no error recorded"
            raise DatabaseUnavailable(
                f"backend {self.name!r}: LISTEN {', '.join(sorted(sub.channels))} was not in "
                f"effect within {bound}s (backend {gate.state.value}: {why})"
            ) from last
        except BaseException:
            await sub.aclose()
            raise
        if sub._error is not None:
            raise sub._error

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._kick()

    def _kick(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        self._changed.set()
        if self._subs and not self._closed and (self._task is None or self._task.done()):
            spawn = self._engine.monitor._spawn
            self._task = spawn(self._run(), f"resilientdb-listen-{self.name}")

    async def aclose(self) -> None:
        """End every subscription (``SupervisorClosed``), the task and the connection."""
        self._closed = True
        subs, self._subs = self._subs, []
        for sub in subs:
            sub.fail(SupervisorClosed(f"the supervisor of backend {self.name!r} is closed"))
        if self._changed is not None:
            self._changed.set()
        task, self._task = self._task, None
        await finish(task, grace=_CLOSE_BOUND * 2)
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()

    # -- the task ----------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                try:
                    await self._serve()
                except Exception as exc:
                    # A bug of ours must not leave subscribers waiting forever: they get it.
                    logger.exception("resilientdb listener of %r failed", self.name)
                    subs, self._subs = self._subs, []
                    for sub in subs:
                        err = DatabaseUnavailable(f"backend {self.name!r}: the listener failed")
                        err.__cause__ = exc
                        sub.fail(err)
                conn, self._conn = self._conn, None
                self._listening.clear()
                self._gap = None
                if conn is not None:
                    await self._close(conn)
                if self._closed or not self._subs:
                    return  # (checked after the last await: a newcomer restarts the loop)
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.terminate()  # cancelled: no waiting on the network

    async def _serve(self) -> None:
        """Keep one connection listening to every wanted channel while anyone subscribes."""
        assert self._changed is not None
        failures = 0
        while self._subs and not self._closed:
            self._changed.clear()
            conn = self._conn
            if conn is not None and conn.is_closed():
                self._lost(ConnectionError("the listening connection was closed"))
                conn = None
            if conn is None:
                if not await self._wait_gate():
                    return
                try:
                    conn = await self._connect()
                except Exception:
                    failures += 1
                    await self._pause(self._engine.options.backoff.delay(failures))
                    continue
                failures = 0
            try:
                await self._sync(conn)
            except Exception as exc:
                self._lost(exc)
                continue
            self._settle()
            await self._idle(conn)

    async def _connect(self) -> Any:
        engine = self._engine
        generation = engine.monitor.generation
        try:
            conn = await engine.backend.connect_dedicated()  # type: ignore[attr-defined]
        except Exception as exc:
            self._last_error = exc
            kind = engine.backend.classify_connect(exc)
            if not isinstance(exc, ConnectPaused) and kind is not ErrorKind.QUERY:
                # The server refused or vanished: let the monitor check it (only while it
                # thinks the backend is connected; otherwise this only counts).
                engine.monitor.report_lost(generation, exc, "listen")
            raise
        self._conn, self._generation = conn, generation
        self.connects += 1
        changed = self._changed
        assert changed is not None
        conn.add_termination_listener(lambda _c: changed.set())
        return conn

    async def _sync(self, conn: Any) -> None:
        """LISTEN to every wanted channel not yet listened to, UNLISTEN the others."""
        wanted = set().union(*(s.channels for s in self._subs)) if self._subs else set()
        bound = self._engine.options.connect_timeout
        for channel in sorted(wanted - self._listening):
            async with asyncio.timeout(bound):
                await conn.add_listener(channel, self._deliver)
            self._listening.add(channel)
        for channel in sorted(self._listening - wanted):
            async with asyncio.timeout(bound):
                await conn.remove_listener(channel, self._deliver)
            self._listening.discard(channel)

    def _settle(self) -> None:
        """Every wanted channel listens: release the markers, activate newcomers."""
        if self._gap is not None:
            cause, self._gap = self._gap, None
            for sub in self._subs:
                if sub.holding:
                    sub.release(self._marker(sub.channels, cause))
            self.emit(self._marker(self._listening, cause))
        for sub in self._subs:
            if not sub.active and sub.channels <= self._listening:
                sub.activate()

    def _marker(self, channels: Iterable[str], cause: str) -> NotificationsMissed:
        return NotificationsMissed(
            backend=self.name, channels=tuple(sorted(channels)), reason="reconnected", cause=cause
        )

    def _lost(self, exc: BaseException) -> None:
        """The connection is gone (or unusable): drop it; the subscribers listening so far
        hold what comes until the marker is in place."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.terminate()
        listening = [sub for sub in self._subs if sub.active]
        if listening:
            self._gap = self._gap or describe(exc)
            for sub in listening:
                sub.hold()
        self._listening.clear()
        self._last_error = exc
        if isinstance(exc, TimeoutError):
            self._engine.monitor.report_suspect(self._generation, exc, "listen")
        else:
            self._engine.monitor.report_lost(self._generation, exc, "listen")

    def _deliver(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        """asyncpg's callback, called on the loop: never blocks, never raises."""
        if conn is not self._conn:
            return  # a connection already given up
        item = Notification(channel, payload, pid)
        for sub in self._subs:
            if channel in sub.channels:
                sub.push(item)

    async def _wait_gate(self) -> bool:
        """Wait (polling: the listener is no caller queued at the gate) for CONNECTED;
        False when there is nothing to wait for any more."""
        gate = self._engine.gate
        while gate.state is not State.CONNECTED:
            if gate.state is State.CLOSED or self._closed or not self._subs:
                return False
            await self._pause(_GATE_POLL)
        return bool(self._subs) and not self._closed

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay`` seconds, or less if a subscriber comes or goes."""
        assert self._changed is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(delay, 0.01)):
                await self._changed.wait()
        self._changed.clear()

    async def _idle(self, conn: Any) -> None:
        """Until something changes; a ping every ``keepalive_interval`` finds a socket that
        died silently (a partition)."""
        assert self._changed is not None
        opts = self._engine.options
        interval = opts.keepalive_interval or 30.0
        while not self._changed.is_set():
            try:
                async with asyncio.timeout(interval):
                    await self._changed.wait()
                return
            except TimeoutError:
                pass
            try:
                await conn.fetchval("SELECT 1", timeout=min(opts.connect_timeout, 5.0))
            except Exception as exc:
                self._lost(exc)
                return

    @staticmethod
    async def _close(conn: Any) -> None:
        try:
            await asyncio.wait_for(conn.close(), timeout=_CLOSE_BOUND)
        except Exception:
            conn.terminate()
        except BaseException:
            conn.terminate()  # cancelled while closing: never leave the socket open
            raise
