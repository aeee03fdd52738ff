"""Typed, frozen snapshots of one backend's figures (anyio's ``statistics()`` is the model).

Each part reports its own figures as an immutable object taken at one instant, with no I/O:
the gate (callers waiting), the pool (connections), the monitor (counters, time in each
state). ``supervisor.stats()``, the Prometheus collector, health reports and ``resilientdb
watch`` read these objects, never the parts' attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ._states import State
from .backends.base import PoolStats

__all__ = ["BackendStatistics", "GateStatistics"]


@dataclass(frozen=True, slots=True)
class GateStatistics:
    """The gate of one backend at one instant."""

    state: State
    waiting: int  # callers waiting at the gate now
    max_waiters: int
    wait_seconds: float  # total time callers have spent waiting here
    wait_count: int  # callers that have waited here


@dataclass(frozen=True, slots=True)
class BackendStatistics:
    """One backend's figures at one instant: ``db.statistics()``.

    ``reconnects``, ``replays``, ``outcome_unknown`` and ``timeouts`` count since the
    supervisor started; ``generation`` grows on every successful (re)connect;
    ``time_in_state`` is the seconds spent in each state, the current one included.
    """

    name: str
    state: State
    pool: PoolStats
    gate: GateStatistics
    generation: int
    reconnects: int
    replays: int
    outcome_unknown: int
    timeouts: int
    downtime: float  # seconds since the backend was last connected (0 when connected)
    releasing: int  # connections being given back in the background (after a timeout)
    time_in_state: Mapping[State, float]
    # Lost COMMITs resolved by asking the server, by its answer (PostgreSQL, ``resolve=``).
    resolved_committed: int = 0
    resolved_aborted: int = 0
    resolved_unknown: int = 0

    @property
    def waiting(self) -> int:
        """Callers waiting at the gate now."""
        return self.gate.waiting
