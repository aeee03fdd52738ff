"""One backend's supervision: its state, its gate and its single reconnect loop.

Callers never reconnect. They report what they saw (``report_lost``, ``report_suspect``) and
wait at the gate; the one task here probes with backoff and opens the gate again. That is
what keeps a database that is just coming back from being hit by every caller at once.

One connection dying is not an outage: a report while connected starts a check (one probe
on a fresh connection) and only a failed probe moves the backend to RECONNECTING, which
retires the pool. While a check runs the pool opens no new connections, and a caller about
to replay waits for the verdict (``settled``) before it goes back to the gate.

Invariants:
- ``gate.state`` changes only in ``_signal``, through the pure ``transition`` function,
  which also names every action to carry out (``start`` only enters the initial state).
- ``generation`` grows on every successful (re)connect, after the old pool generation is
  retired and before the gate opens, so a failure seen on an old connection after recovery
  (``report_lost`` with a stale generation) cannot start another reconnect.
- Exactly one task per backend ever probes; it is created by ``start`` and ended by ``aclose``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable
from typing import cast

from ._figures import Figures
from ._gate import Gate
from ._reach import Reach, hello_for, tcp_addresses
from ._redact import describe
from ._states import Action, Signal, State, transition
from ._tasks import Spawn, finish, spawn_unowned
from .backends.base import Backend, ErrorKind, Maintains
from .config import Options
from .events import (
    EventBus,
    Reconnecting,
    StateChanged,
)

__all__ = ["Monitor"]

logger = logging.getLogger("resilientdb")

# How long connections still being given back may take when the pool closes.
CLOSE_GRACE = 5.0


class Monitor(Figures):
    """Supervises one backend adapter (its figures and events: ``Figures``)."""

    def __init__(self, name: str, backend: Backend, options: Options, bus: EventBus) -> None:
        super().__init__(name, backend, options, bus, Gate(name, options.max_waiters))
        self.attempts = 0  # failed probes since the last success
        self._failing_since: float | None = None  # the failed call or probe that began a check
        self._next_delay = 0.0
        self._suspect = False
        self._rng = random.Random()
        self._wakeup: asyncio.Event | None = None
        self._first_attempt: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._opening = False
        self._checked: asyncio.Future[None] | None = None  # set while a check is pending
        self._spawn: Spawn = spawn_unowned
        self._stopping = False  # set by aclose: the loop ends even if a cancel was swallowed
        self._refused_since: float | None = None  # credentials refused since (auth_grace)
        # Knocks on the server's port between attempts (none for SQLite): see _reach.
        self.reach = Reach(
            tcp_addresses(backend), hello_for(backend), options.backoff.jitter, self._rng
        )
        backend.set_connect_gate(self._pool_may_connect)

    def _pool_may_connect(self) -> bool:
        # The pool opens connections only while connected and not checking (so that only the
        # check's probe knocks on a server that may be gone), or while this loop opens it.
        return self._opening or (self.gate.state is State.CONNECTED and self._checked is None)

    @property
    def checking(self) -> bool:
        """A check of the server is pending (a connection died or a statement timed out)."""
        return self._checked is not None

    async def settled(self, deadline: float | None) -> None:
        """Wait, at most until ``deadline`` (``loop.time()``), for a pending check to end."""
        checked = self._checked
        if checked is None or checked.done():
            return
        with contextlib.suppress(TimeoutError):
            # Shielded: one caller giving up must not cancel the verdict for the others.
            async with asyncio.timeout_at(deadline):
                await asyncio.shield(checked)

    def release_later(self, release: Awaitable[object]) -> asyncio.Task[None]:
        """Finish giving a connection back in the background (after a timeout, the driver
        may wait for its cancel request; the caller's deadline must not). ``aclose`` waits
        for these tasks, bounded."""

        async def run() -> None:
            with contextlib.suppress(Exception):
                await release

        task = self._spawn(run(), f"resilientdb-release-{self.name}")
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, spawn: Spawn = spawn_unowned) -> None:
        """Create the loop-bound parts and the reconnect task (with the supervisor's
        ``spawn``); the first attempt starts now."""
        self._spawn = spawn
        self._wakeup = asyncio.Event()
        self._first_attempt = asyncio.Event()
        self._next_delay = 0.0
        self._set_state(State.CONNECTING)  # the machine's initial state (CLOSED is final)
        self._task = spawn(self._run(), f"resilientdb-supervisor-{self.name}")

    async def wait_first_attempt(self, timeout: float) -> None:
        """Wait (bounded) until the first open has succeeded or failed."""
        if self._first_attempt is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._first_attempt.wait()

    async def aclose(self) -> None:
        """Stop the reconnect task, then CLOSE: waiters get ``SupervisorClosed``, the
        connections being given back get their bounded chance, the pool is closed."""
        self.gate.closed_reason = f"the supervisor of backend {self.name!r} is closed"
        # The loop first, so that no open or probe races the pool's close.
        self._stopping = True
        task, self._task = self._task, None
        await finish(task)
        if self._first_attempt is not None:
            self._first_attempt.set()  # a start() still waiting for it returns now
        await self._signal(Signal.CLOSE)

    # -- reports from callers (synchronous: the state flips before the caller awaits) ------

    def report_lost(self, generation: int, exc: BaseException, operation: str) -> None:
        """A caller saw a connection die: check the server (the state changes only if that
        check fails). Reports of an older generation, or while not connected, only count."""
        self._error(operation, exc)
        if generation == self.generation and self.state is State.CONNECTED:
            self.gate.last_error = exc
            self._request_check()

    def report_suspect(self, generation: int, exc: BaseException, operation: str) -> None:
        """A statement timed out: maybe slow, maybe a half-open socket. Check in background."""
        self.timeouts += 1
        self._error(operation, exc)
        if generation == self.generation and self.state is State.CONNECTED:
            self._request_check()

    def _request_check(self) -> None:
        if self._checked is None and self._wakeup is not None:
            self._failing_since = time.monotonic()
            self._checked = asyncio.get_running_loop().create_future()
            self._suspect = True
            self._wakeup.set()

    def _end_check(self) -> None:
        self._failing_since = None
        checked, self._checked = self._checked, None
        if checked is not None and not checked.done():
            checked.set_result(None)

    # -- the state machine --------------------------------------------------------------------

    async def _signal(self, signal: Signal, cause: BaseException | None = None) -> None:
        """Move the state machine and carry out every action the transition names.

        RETIRE_POOL is carried out before the new state is entered (the old pool generation
        must be gone before the gate opens); the other actions after it, in table order."""
        old = self.state
        new, actions = transition(old, signal)
        if Action.RETIRE_POOL in actions:
            await self.backend.refresh()
        if new is not old:
            if new is State.CONNECTED:
                # After the retirement, before the gate opens: see the module docstring.
                self.generation += 1
                self.gate.last_error = None
            self._set_state(new)
            self._announce(old, new, cause)
        for action in actions:
            if action is Action.RESET_ATTEMPTS:
                self.attempts = 0
                self.reach.reset()
            elif action is Action.RETRY:
                self._next_delay = self.options.backoff.delay(self.attempts, self._rng)
            elif action is Action.SLOW_PROBE:
                # Ramp up to the slow interval: a glitch that clears within a second (a file
                # moved back, a credential fixed) heals within a second; a lasting failure is
                # probed every failed_probe_interval.
                ramp = max(self.options.backoff.initial, 0.05) * 2.0 ** min(self.attempts, 30)
                self._next_delay = min(self.options.failed_probe_interval, ramp)
            elif action is Action.WAKE_WAITERS:
                self.gate.wake_all()
            elif action is Action.CLOSE_POOL:
                await self._close_pool()
        if self._wakeup is not None:
            self._wakeup.set()

    async def _close_pool(self) -> None:
        # Connections still being given back (after a timeout or a cancellation) get their
        # bounded chance first: closing the pool under them would leak their server side.
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=CLOSE_GRACE)
        await self.backend.close()

    def _set_state(self, new: State) -> None:
        now = time.monotonic()
        old = self.gate.state
        self.time_in_state[old] += now - self.state_since
        self.state_since = now
        self.gate.state = new
        if new is State.RECONNECTING and self._down_since is None:
            # Downtime counts from the first failed call or probe, not from the verdict.
            self._down_since = min(now, self._failing_since or now)
        if new is not State.CONNECTED:
            self._end_check()  # the verdict is in: callers go back to the gate
        if new is not old:
            self.bus.emit(StateChanged(backend=self.name, old=old, new=new))

    def _gave_up(self) -> bool:
        opts = self.options
        if opts.max_attempts is not None and self.attempts >= opts.max_attempts:
            return True
        return opts.max_downtime is not None and self.downtime >= opts.max_downtime

    # -- the one reconnect loop ---------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wakeup is not None
        while not self._stopping and self.state is not State.CLOSED:
            try:
                if self.state is State.CONNECTED:
                    if not await self._sleep_connected():
                        await self._maintain()
                    self._wakeup.clear()
                    if self._suspect and self.state is State.CONNECTED:
                        self._suspect = False
                        await self._check()
                    continue
                # Always yields, even at zero delay: a probe that fails without awaiting
                # must not starve the loop. The backoff step ends early when the server's
                # port comes back (FAILED keeps its slow interval: a permanent error).
                if self.state is State.FAILED:
                    await asyncio.sleep(self._next_delay)
                else:
                    await self.reach.wait(self._next_delay)
                if self.gate.state is not State.CLOSED:  # closed while sleeping
                    await self._attempt()
            except asyncio.CancelledError:
                raise
            except Exception:
                # The loop must outlive its own bugs: log, pause, carry on supervising.
                logger.exception("resilientdb supervisor loop of %r failed; continuing", self.name)
                await asyncio.sleep(self.options.backoff.maximum or 0.1)

    async def _attempt(self) -> None:
        backend = self.backend
        self.total_attempts += 1
        try:
            if backend.opened:
                await backend.probe()
            else:
                self._opening = True
                try:
                    await backend.open()
                finally:
                    self._opening = False
        except Exception as exc:
            self.attempts += 1
            self.gate.last_error = exc
            self.reach.failed(exc)
            self._error("connect", exc)
            if backend.classify_connect(exc) is ErrorKind.PERMANENT and not self._in_grace(exc):
                await self._signal(Signal.CONNECT_PERMANENT, exc)
            elif self.state is State.RECONNECTING and self._gave_up():
                await self._signal(Signal.GIVE_UP, exc)
            else:
                await self._signal(Signal.CONNECT_TRANSIENT, exc)
                if self.state is State.RECONNECTING:
                    self.bus.emit(
                        Reconnecting(
                            backend=self.name,
                            attempt=self.attempts,
                            delay=self._next_delay,
                            downtime=self.downtime,
                            cause=describe(exc),
                            initial=not self._ever_connected,
                        )
                    )
        else:
            self._refused_since = None
            await self._signal(Signal.CONNECT_OK)
        finally:
            if self._first_attempt is not None:
                self._first_attempt.set()

    def _in_grace(self, exc: BaseException) -> bool:
        """Credentials refused after the backend was once connected (a rotated password, its
        secret store lagging): retried like an outage for ``auth_grace`` seconds."""
        refused = getattr(self.backend, "auth_failed", None)
        if not self._ever_connected or refused is None or not refused(exc):
            return False
        now = time.monotonic()
        if self._refused_since is None:
            self._refused_since = now
        return now - self._refused_since < self.options.auth_grace

    async def _sleep_connected(self) -> bool:
        """Wait for a report; False when the maintenance interval passed first."""
        assert self._wakeup is not None
        interval = self.options.keepalive_interval
        if interval is None and self.options.max_lifetime is not None:
            interval = self.options.max_lifetime / 10
        if interval is None or getattr(self.backend, "maintain", None) is None:
            await self._wakeup.wait()
            return True
        try:
            async with asyncio.timeout(interval):
                await self._wakeup.wait()
        except TimeoutError:
            return False
        return True

    async def _maintain(self) -> None:
        generation = self.generation
        backend = cast(Maintains, self.backend)
        dead = await backend.maintain()
        if dead:
            # A connection died while idle: check the server now, not at the next call.
            self.report_suspect(
                generation, ConnectionError("an idle connection was dead"), "keepalive"
            )

    async def _check(self) -> None:
        """Probe once: the server answers (only some connections died: nothing else to do) or
        it does not (the outage starts; the failed probe counts as the first attempt)."""
        generation = self.generation
        try:
            await self.backend.probe()
        except Exception as exc:
            self._error("check", exc)
            if generation == self.generation and self.state is State.CONNECTED:
                self.gate.last_error = exc
                self.attempts = 1
                self.total_attempts += 1
                await self._signal(Signal.CONNECTION_LOST, exc)
        finally:
            self._end_check()
