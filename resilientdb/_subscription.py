"""A ``db.listen()`` subscription: its bounded queue and the items it yields.

The listening connection that feeds it is ``_listen.py``'s (whose docstring has the design).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from .events import NotificationsMissed

if TYPE_CHECKING:
    from ._listen import Listener

__all__ = ["Notification", "Subscription", "check_channel"]


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification: ``channel``, ``payload`` (``""`` when none was given) and ``pid``,
    the server process of the session that sent it."""

    channel: str
    payload: str
    pid: int


def check_channel(channel: object) -> str:
    """``channel`` if it is a usable channel name, else ``ValueError``/``TypeError``."""
    if not isinstance(channel, str):
        raise TypeError(f"a channel name is a str, not {type(channel).__name__}")
    if not channel or "\x00" in channel or len(channel.encode()) > 63:
        raise ValueError(
            f"channel name {channel!r} is not usable: it must be 1 to 63 bytes, without NUL "
            f"(PostgreSQL truncates longer identifiers)"
        )
    return channel


class Subscription:
    """``async with db.listen("a", "b") as sub: async for item in sub: ...``

    Items are :class:`Notification` and :class:`~resilientdb.events.NotificationsMissed`
    markers. Entering waits (bounded by ``timeout``) until LISTEN is in effect for every
    channel: anything notified after ``__aenter__`` returns is received. Leaving the block
    (or ``aclose()``) unsubscribes; the last subscriber to leave closes the connection. When
    the supervisor closes, iteration raises ``SupervisorClosed``.
    """

    def __init__(
        self, listener: Listener, channels: Iterable[str], max_queued: int, timeout: float | None
    ) -> None:
        self.channels = frozenset(channels)
        self.max_queued = max_queued
        self._listener = listener
        self._timeout = timeout
        self._queue: deque[Notification | NotificationsMissed] = deque()
        self._held: list[Notification] | None = None  # after a loss, until LISTEN is back
        self._dropped = 0
        self._wakeup: asyncio.Event | None = None
        self.active = False  # LISTEN in effect for every channel (since entering)
        self._entered = False
        self._closed = False
        self._error: BaseException | None = None

    def __repr__(self) -> str:
        state = "closed" if self._closed else "active" if self.active else "pending"
        return f"<Subscription {sorted(self.channels)} {state}, {len(self._queue)} queued>"

    async def __aenter__(self) -> Subscription:
        if self._entered:
            raise RuntimeError("a Subscription is entered once: call db.listen() again")
        self._entered = True
        self._wakeup = asyncio.Event()
        await self._listener.subscribe(self, self._timeout)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop receiving; the queue is discarded. Idempotent."""
        if not self._closed:
            self._closed = True
            self._queue.clear()
            self._listener.unsubscribe(self)
            if self._wakeup is not None:
                self._wakeup.set()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Notification | NotificationsMissed:
        if not self._entered:
            raise RuntimeError(
                "iterate a subscription inside `async with db.listen(...) as sub:` (that is "
                "what unsubscribes when the loop ends)"
            )
        while True:
            if self._queue:
                return self._queue.popleft()
            if self._dropped and self._held is None and not self._closed:
                return self._overflow()
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            assert self._wakeup is not None
            self._wakeup.clear()
            await self._wakeup.wait()

    # -- fed by the listener (synchronous: the connection's reader never waits) -------------

    def push(self, item: Notification) -> None:
        if self._closed:
            return
        held = self._held
        if len(self._queue) + (len(held) if held is not None else 0) >= self.max_queued:
            self._dropped += 1
            return
        if held is not None:
            held.append(item)
            return
        if self._dropped:
            self._queue.append(self._overflow())
        self._queue.append(item)
        self._wake()

    def hold(self) -> None:
        """The connection was lost: hold back what arrives until the marker is in place."""
        if self._held is None:
            self._held = []

    @property
    def holding(self) -> bool:
        return self._held is not None

    def release(self, marker: NotificationsMissed) -> None:
        """LISTEN is back for every channel: the marker, then what arrived meanwhile."""
        held, self._held = self._held or [], None
        if self._dropped:
            marker = _with_dropped(marker, self._dropped)
            self._dropped = 0
        self._queue.append(marker)
        self._queue.extend(held)
        self._wake()

    def activate(self) -> None:
        self.active = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _overflow(self) -> NotificationsMissed:
        dropped, self._dropped = self._dropped, 0
        marker = NotificationsMissed(
            backend=self._listener.name,
            channels=tuple(sorted(self.channels)),
            reason="overflow",
            dropped=dropped,
            cause=f"the subscriber fell behind (max_queued={self.max_queued})",
        )
        self._listener.emit(marker)
        return marker


def _with_dropped(marker: NotificationsMissed, dropped: int) -> NotificationsMissed:
    return NotificationsMissed(
        backend=marker.backend,
        channels=marker.channels,
        reason=marker.reason,
        dropped=dropped,
        cause=marker.cause,
    )
