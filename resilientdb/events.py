"""Typed events, the handler registry, and their delivery.

Every event is a frozen dataclass. ``supervisor.on(EventType, handler)`` registers a sync or
async handler; ``on(Event, handler)`` receives them all. Delivery runs on one background task,
in emission order, so a slow handler never blocks the supervisor and a failing one is logged
and isolated. Every event also goes to the ``resilientdb`` logger.

Nothing here ever carries a password: causes are kept as redacted text, and the exception
object, for ``on_error`` hooks that report to an error tracker, is excluded from ``repr``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ._states import State
from ._tasks import Spawn, finish, spawn_unowned

__all__ = [
    "Connected",
    "Disconnected",
    "ErrorOccurred",
    "Event",
    "EventBus",
    "MemoryPressure",
    "NotificationsMissed",
    "OperationReplayed",
    "OutcomeResolved",
    "ReconnectFailed",
    "Reconnected",
    "Reconnecting",
    "StateChanged",
]

logger = logging.getLogger("resilientdb")


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base class: ``backend`` names the backend, ``time`` is wall-clock seconds."""

    backend: str
    time: float = field(default_factory=time.time)

    level = logging.INFO

    def message(self) -> str:
        """One human line for the log."""
        return f"{type(self).__name__} {self.backend}"


@dataclass(frozen=True, kw_only=True)
class Connected(Event):
    """The backend connected for the first time."""

    def message(self) -> str:
        return f"backend {self.backend!r} connected"


@dataclass(frozen=True, kw_only=True)
class Disconnected(Event):
    """A connected backend lost its connection; the reconnect loop starts."""

    cause: str

    level = logging.WARNING

    def message(self) -> str:
        return f"backend {self.backend!r} disconnected: {self.cause}"


@dataclass(frozen=True, kw_only=True)
class Reconnecting(Event):
    """A reconnect attempt failed; the next comes after ``delay`` seconds. ``initial`` is
    true while the backend has never been connected (the first connection, not a reconnect)."""

    attempt: int
    delay: float
    downtime: float
    cause: str
    initial: bool = False

    level = logging.WARNING

    def message(self) -> str:
        what = "connection" if self.initial else "reconnect"
        return (
            f"backend {self.backend!r} {what} attempt {self.attempt} failed after "
            f"{self.downtime:.2f}s down, next in {self.delay:.2f}s: {self.cause}"
        )


@dataclass(frozen=True, kw_only=True)
class Reconnected(Event):
    """The backend is connected again after ``downtime`` seconds and ``attempts`` probes.

    ``downtime`` counts from the first failed call or probe that began the outage (not from
    the moment the probe's verdict came in) until the connection was back."""

    attempts: int
    downtime: float

    def message(self) -> str:
        return (
            f"backend {self.backend!r} reconnected after {self.downtime:.2f}s "
            f"({_attempts(self.attempts)})"
        )


@dataclass(frozen=True, kw_only=True)
class ReconnectFailed(Event):
    """The backend went FAILED: a permanent error, or the give-up limits were reached.

    The supervisor keeps probing every ``failed_probe_interval``; callers fail fast meanwhile.
    """

    attempts: int
    downtime: float
    cause: str
    permanent: bool

    level = logging.ERROR

    def message(self) -> str:
        why = "permanent error" if self.permanent else "gave up"
        return f"backend {self.backend!r} failed ({why}, {_attempts(self.attempts)}): {self.cause}"


@dataclass(frozen=True, kw_only=True)
class StateChanged(Event):
    """Every state transition of a backend."""

    old: State
    new: State

    level = logging.DEBUG

    def message(self) -> str:
        return f"backend {self.backend!r} state {self.old.value} -> {self.new.value}"


@dataclass(frozen=True, kw_only=True)
class OperationReplayed(Event):
    """An operation was replayed after a failure that made it safe to do so."""

    operation: str
    replay: int
    reason: str
    cause: str

    def message(self) -> str:
        return (
            f"backend {self.backend!r} replayed {self.operation} (replay {self.replay}, "
            f"{self.reason}): {self.cause}"
        )


@dataclass(frozen=True, kw_only=True)
class MemoryPressure(Event):
    """The process's memory crossed the watchdog's threshold."""

    rss: int
    limit: int
    ratio: float
    threshold: float
    trimmed: int = 0

    level = logging.WARNING

    def message(self) -> str:
        return (
            f"memory pressure: {self.rss} of {self.limit} bytes ({self.ratio:.0%} > "
            f"{self.threshold:.0%}); trimmed {self.trimmed} idle connections"
        )


@dataclass(frozen=True, kw_only=True)
class ErrorOccurred(Event):
    """An error the supervisor handled: a lost connection, a failed probe, an unknown outcome.

    ``error`` is the exception itself for error trackers (excluded from ``repr``);
    ``message_text`` is its redacted one-line description.
    """

    operation: str
    error_type: str
    message_text: str
    error: BaseException | None = field(default=None, repr=False, compare=False)

    # DEBUG: the story is already logged by Disconnected / Reconnecting / ReconnectFailed.
    level = logging.DEBUG

    def message(self) -> str:
        return f"backend {self.backend!r} {self.operation}: {self.error_type}: {self.message_text}"


@dataclass(frozen=True, kw_only=True)
class NotificationsMissed(Event):
    """LISTEN/NOTIFY: notifications on ``channels`` may have been missed.

    ``reason`` is ``"reconnected"`` (the listening connection was lost; LISTEN has been issued
    again on a new one, and whatever was notified in between is gone: resynchronise) or
    ``"overflow"`` (a subscriber fell behind and ``dropped`` notifications were discarded).
    The same object is also yielded, in order, by the ``db.listen()`` streams concerned.
    """

    channels: tuple[str, ...]
    reason: str
    dropped: int | None = None
    cause: str = ""

    level = logging.WARNING

    def message(self) -> str:
        what = f"{self.dropped} dropped" if self.dropped is not None else "may have been missed"
        why = f": {self.cause}" if self.cause else ""
        return (
            f"backend {self.backend!r} notifications on {', '.join(self.channels)} {what} "
            f"({self.reason}){why}"
        )


@dataclass(frozen=True, kw_only=True)
class OutcomeResolved(Event):
    """A connection was lost during COMMIT and the server was asked what became of the
    transaction: ``outcome`` is ``"committed"`` (the call succeeded), ``"aborted"`` (nothing
    was applied) or ``"unknown"`` (``OutcomeUnknown`` unless a re-run was allowed)."""

    outcome: str
    transaction_id: str
    waited: float  # seconds spent asking
    cause: str  # what lost the COMMIT

    level = logging.WARNING

    def message(self) -> str:
        return (
            f"backend {self.backend!r} lost COMMIT of transaction {self.transaction_id} "
            f"({self.cause}): resolved {self.outcome} after {self.waited:.3f}s"
        )


E = TypeVar("E", bound=Event)
Handler = Callable[[Any], Awaitable[None] | None]


class EventBus:
    """Handlers by event type, and the queue that delivers to them in order.

    The queue and its task exist only between ``start()`` and ``aclose()``: nothing tied to an
    event loop is created at construction.
    """

    def __init__(self) -> None:
        self._handlers: list[tuple[type[Event], Handler]] = []
        self._queue: asyncio.Queue[Event | None] | None = None
        self._task: asyncio.Task[None] | None = None

    def on(self, event_type: type[E], handler: Callable[[E], Awaitable[None] | None]) -> None:
        """Deliver events of ``event_type`` (and its subclasses) to ``handler``."""
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise TypeError(f"on() takes an Event subclass, not {event_type!r}")
        if not callable(handler):
            raise TypeError("on() takes a callable handler")
        self._handlers.append((event_type, handler))

    def off(self, event_type: type[Event], handler: Handler) -> None:
        """Stop delivering ``event_type`` to ``handler``."""
        self._handlers.remove((event_type, handler))

    def emit(self, event: Event) -> None:
        """Log the event and queue it for the handlers. Never raises, never blocks."""
        if logger.isEnabledFor(event.level):
            logger.log(event.level, event.message(), extra={"resilientdb_event": event})
        if self._queue is not None and self._handlers:
            self._queue.put_nowait(event)

    def start(self, spawn: Spawn = spawn_unowned) -> None:
        """Create the queue and its delivery task (with the supervisor's ``spawn``)."""
        self._queue = asyncio.Queue()
        self._task = spawn(self._deliver(self._queue), "resilientdb-events")

    async def aclose(self) -> None:
        """Deliver what is queued (handlers get 5 s), then stop."""
        if self._queue is None or self._task is None:
            return
        self._queue.put_nowait(None)
        task, self._task, self._queue = self._task, None, None
        await finish(task, grace=5.0)
        if not task.done() or task.cancelled():
            logger.warning("event handlers did not finish within 5 s; dropped the rest")

    async def _deliver(self, queue: asyncio.Queue[Event | None]) -> None:
        while (event := await queue.get()) is not None:
            for event_type, handler in list(self._handlers):
                if isinstance(event, event_type):
                    await _call(handler, event)


async def _call(handler: Handler, event: Event) -> None:
    try:
        result = handler(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        # A broken handler must never disturb the supervisor or the other handlers.
        logger.exception("event handler %r failed on %s", handler, type(event).__name__)


def _attempts(n: int) -> str:
    return "1 attempt" if n == 1 else f"{n} attempts"
