"""The awaitable gate every call passes before it touches a connection.

CONNECTED: the caller passes at the cost of one attribute read (checked inline by Database, so
the hot path takes no lock and makes no await here). CONNECTING / RECONNECTING: the caller
waits for the next state change, bounded by its deadline and by ``max_waiters``. FAILED: fail
fast with the last cause. CLOSED: ``SupervisorClosed``.

Waiters queue in a ``Waiting`` (``_waiting.py``, the one waiter queue the pools use too), not
on a shared ``asyncio.Event``: a cancelled or timed-out waiter removes exactly its own entry,
so nothing is left behind, and the count of waiters is the queue's length. A state change
hands every waiter a wake-up; each then re-checks the state.
"""

from __future__ import annotations

import asyncio

from ._redact import describe
from ._states import State
from ._statistics import GateStatistics
from ._waiting import Waiting
from .errors import DatabaseUnavailable, Overloaded, SupervisorClosed

__all__ = ["Gate"]


class Gate:
    """State plus waiters for one backend. Loop-free until a caller waits."""

    __slots__ = (
        "_waiters",
        "backend",
        "closed_reason",
        "last_error",
        "max_waiters",
        "state",
        "wait_count",
        "wait_seconds",
    )

    def __init__(self, backend: str, max_waiters: int) -> None:
        self.backend = backend
        self.max_waiters = max_waiters
        # Before start() the gate is closed: a call then fails at once instead of waiting.
        self.state = State.CLOSED
        self.closed_reason = (
            "the supervisor is not started: use `async with supervisor:` or "
            "`await supervisor.start()` first"
        )
        self.last_error: BaseException | None = None
        self._waiters: Waiting[None] = Waiting()
        self.wait_seconds = 0.0  # total time callers spent waiting here (metrics)
        self.wait_count = 0

    @property
    def waiting(self) -> int:
        """Callers waiting at the gate now."""
        return len(self._waiters)

    def statistics(self) -> GateStatistics:
        """The gate's figures now."""
        return GateStatistics(
            state=self.state,
            waiting=len(self._waiters),
            max_waiters=self.max_waiters,
            wait_seconds=self.wait_seconds,
            wait_count=self.wait_count,
        )

    def wake_all(self) -> None:
        """Let every waiter re-check the state (after each state change)."""
        while self._waiters.hand(None):
            pass

    async def wait(self, deadline: float | None) -> None:
        """Return once the state is CONNECTED, or raise why the caller cannot go on.

        ``deadline`` is in ``loop.time()`` seconds; ``None`` waits without bound.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self._wait(loop, deadline)
        finally:
            self.wait_count += 1
            self.wait_seconds += loop.time() - started

    async def _wait(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        while True:
            state = self.state
            if state is State.CONNECTED:
                return
            if state is State.FAILED:
                # Yield once: a caller retrying in a tight loop must not starve the event loop
                # (and with it the probe that would heal the backend).
                await asyncio.sleep(0)
                raise DatabaseUnavailable(
                    f"backend {self.backend!r} is failed: {_describe(self.last_error)}"
                ) from self.last_error
            if state is State.CLOSED:
                raise SupervisorClosed(self.closed_reason)
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise self._timed_out() from self.last_error
            if len(self._waiters) >= self.max_waiters:
                raise Overloaded(
                    f"backend {self.backend!r} is {state.value} and {len(self._waiters)} "
                    f"callers are already waiting (max_waiters={self.max_waiters})"
                ) from self.last_error
            try:
                await self.wait_change(remaining)
            except TimeoutError:
                raise self._timed_out() from self.last_error

    async def wait_change(self, timeout: float | None) -> None:
        """Wait for the next state change; ``TimeoutError`` after ``timeout`` seconds."""
        if timeout is None:
            await self._waiters.wait()
        else:
            async with asyncio.timeout(timeout):
                await self._waiters.wait()

    def _timed_out(self) -> DatabaseUnavailable:
        return DatabaseUnavailable(
            f"backend {self.backend!r} is still {self.state.value} at the call's deadline: "
            f"{_describe(self.last_error)}"
        )


def _describe(exc: BaseException | None) -> str:
    return "no error recorded" if exc is None else describe(exc)
