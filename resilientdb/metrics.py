"""The figures behind ``supervisor.stats()`` and the Prometheus collector.

Names follow the OpenTelemetry database-client semantic conventions where one exists
(``db.client.connection.*``); resilientdb's own counters have plain names. A snapshot is a
plain dict of numbers, cheap to take (no I/O, no await), so a scrape never touches a database.

Per backend::

    state                                   "connected", ...
    db.client.connection.count              {"idle": n, "used": n}
    db.client.connection.max                pool max_size
    db.client.connection.idle.min           pool min_size
    db.client.connection.pending_requests   callers waiting at the gate now
    db.client.connection.timeouts           acquire and statement timeouts so far
    db.client.connection.wait_time          {"sum": seconds, "count": n} spent waiting at the gate
    reconnects, replays, outcome_unknown    counters
    time_in_state                           {"connected": seconds, ...} since start
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ._monitor import Monitor

__all__ = ["backend_stats", "snapshot"]


def backend_stats(monitor: Monitor, now: float | None = None) -> dict[str, Any]:
    """One backend's figures now."""
    now = time.monotonic() if now is None else now
    pool = monitor.backend.stats()
    in_state = dict(monitor.time_in_state)
    in_state[monitor.state] += now - monitor.state_since
    gate = monitor.gate
    return {
        "state": monitor.state.value,
        "db.client.connection.count": {"idle": pool.idle, "used": pool.in_use},
        "db.client.connection.max": pool.max_size,
        "db.client.connection.idle.min": pool.min_size,
        "db.client.connection.pending_requests": gate.waiting,
        "db.client.connection.timeouts": monitor.timeouts,
        # Filled in by the gate when it records its waits (wait_seconds / wait_count); a gate
        # without them reports zero rather than failing the snapshot.
        "db.client.connection.wait_time": {
            "sum": round(float(getattr(gate, "wait_seconds", 0.0)), 6),
            "count": int(getattr(gate, "wait_count", 0)),
        },
        "reconnects": monitor.reconnects,
        "replays": monitor.replays,
        "outcome_unknown": monitor.outcome_unknown,
        "time_in_state": {s.value: round(t, 6) for s, t in in_state.items()},
    }


def snapshot(monitors: Mapping[str, Monitor]) -> dict[str, dict[str, Any]]:
    """Every backend's figures, by backend name, taken at one instant."""
    now = time.monotonic()
    return {name: backend_stats(m, now) for name, m in monitors.items()}
