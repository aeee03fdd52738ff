"""One backend's figures and announcements: the counters, the time spent in each state, the
events that tell the application what happened, and the frozen statistics read by
``stats()``, health, Prometheus and ``resilientdb watch``.

The base of ``Monitor`` (``_monitor.py``), which owns the state machine; only the monitor and
this class change these figures (callers report through ``replayed`` and
``count_outcome_unknown``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ._gate import Gate
from ._redact import describe
from ._states import State
from ._statistics import BackendStatistics
from .backends.base import Backend, ErrorKind, PoolStats
from .config import Options
from .events import (
    Connected,
    Disconnected,
    ErrorOccurred,
    EventBus,
    OperationReplayed,
    OutcomeResolved,
    Reconnected,
    ReconnectFailed,
)

__all__ = ["Figures"]


class Figures:
    """Counters, time in state and events of one backend."""

    def __init__(
        self, name: str, backend: Backend, options: Options, bus: EventBus, gate: Gate
    ) -> None:
        self.name = name
        self.backend = backend
        self.options = options
        self.bus = bus
        self.gate = gate
        self.generation = 0
        self.total_attempts = 0  # every open/probe made while not connected
        self.reconnects = 0
        self.replays = 0
        self.outcome_unknown = 0
        self.timeouts = 0
        # Lost COMMITs whose outcome was asked of the server, by answer.
        self.resolved_committed = 0
        self.resolved_aborted = 0
        self.resolved_unknown = 0
        self.state_since = time.monotonic()
        self.time_in_state: dict[State, float] = dict.fromkeys(State, 0.0)
        self._down_since: float | None = None
        self._ever_connected = False
        # Connections being given back in the background (the monitor fills it).
        self._cleanups: set[asyncio.Task[Any]] = set()

    @property
    def state(self) -> State:
        return self.gate.state

    def replayed(self, operation: str, replay: int, cause: BaseException) -> None:
        """Count a replay and announce it (``OperationReplayed``)."""
        self.replays += 1
        self.bus.emit(
            OperationReplayed(
                backend=self.name,
                operation=operation,
                replay=replay,
                reason=type(cause).__name__,
                cause=describe(cause),
            )
        )

    def _error(self, operation: str, exc: BaseException) -> None:
        text = describe(exc)
        kind = type(exc).__name__
        self.bus.emit(
            ErrorOccurred(
                backend=self.name,
                operation=operation,
                error_type=kind,
                message_text=text[len(kind) + 2 :] if text.startswith(kind + ": ") else text,
                error=exc,
            )
        )

    def _announce(self, old: State, new: State, cause: BaseException | None) -> None:
        why = describe(cause) if cause is not None else "unknown"
        downtime = self.downtime
        if new is State.CONNECTED:
            if self._ever_connected:
                self.reconnects += 1
                self.bus.emit(
                    Reconnected(backend=self.name, attempts=self.total_attempts, downtime=downtime)
                )
            else:
                self.bus.emit(Connected(backend=self.name))
            self._ever_connected = True
            self._down_since = None
            self.total_attempts = 0
        elif new is State.RECONNECTING and old is State.CONNECTED:
            self.bus.emit(Disconnected(backend=self.name, cause=why))
        elif new is State.FAILED:
            permanent = (
                cause is not None and self.backend.classify_connect(cause) is ErrorKind.PERMANENT
            )
            self.bus.emit(
                ReconnectFailed(
                    backend=self.name,
                    attempts=self.total_attempts,
                    downtime=downtime,
                    cause=why,
                    permanent=permanent,
                )
            )

    def count_outcome_unknown(self) -> None:
        """An ``OutcomeUnknown`` was raised to a caller of this backend."""
        self.outcome_unknown += 1

    def resolved(self, outcome: str, xid: str, waited: float, cause: BaseException) -> None:
        """Count a lost COMMIT's resolution (``committed``, ``aborted`` or ``unknown``) and
        announce it (``OutcomeResolved``)."""
        if outcome == "committed":
            self.resolved_committed += 1
        elif outcome == "aborted":
            self.resolved_aborted += 1
        else:
            self.resolved_unknown += 1
        self.bus.emit(
            OutcomeResolved(
                backend=self.name,
                outcome=outcome,
                transaction_id=xid,
                waited=waited,
                cause=describe(cause),
            )
        )

    def statistics(self, now: float | None = None) -> BackendStatistics:
        """This backend's figures now (no I/O)."""
        now = time.monotonic() if now is None else now
        in_state = dict(self.time_in_state)
        in_state[self.state] += now - self.state_since
        return BackendStatistics(
            name=self.name,
            state=self.state,
            pool=self._pool_statistics(),
            gate=self.gate.statistics(),
            generation=self.generation,
            reconnects=self.reconnects,
            replays=self.replays,
            outcome_unknown=self.outcome_unknown,
            timeouts=self.timeouts,
            downtime=self.downtime,
            releasing=len(self._cleanups),
            time_in_state=in_state,
            resolved_committed=self.resolved_committed,
            resolved_aborted=self.resolved_aborted,
            resolved_unknown=self.resolved_unknown,
        )

    def _pool_statistics(self) -> PoolStats:
        try:
            return self.backend.stats()
        except Exception:
            # A broken adapter's gauges must not break a scrape or a readiness probe.
            opts = self.options
            return PoolStats(
                size=0, idle=0, in_use=0, min_size=opts.min_size, max_size=opts.max_size
            )

    @property
    def downtime(self) -> float:
        """Seconds since the backend was last connected (0 when connected)."""
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since
