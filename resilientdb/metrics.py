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
    resolved                                {"committed": n, "aborted": n, "unknown": n}:
                                            lost COMMITs resolved by asking the server
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ._monitor import Monitor
from ._statistics import BackendStatistics

__all__ = ["BackendStatistics", "as_dict", "backend_stats", "snapshot"]


def as_dict(st: BackendStatistics) -> dict[str, Any]:
    """The documented dict form of one backend's statistics."""
    pool, gate = st.pool, st.gate
    return {
        "state": st.state.value,
        "db.client.connection.count": {"idle": pool.idle, "used": pool.in_use},
        "db.client.connection.max": pool.max_size,
        "db.client.connection.idle.min": pool.min_size,
        "db.client.connection.pending_requests": gate.waiting,
        "db.client.connection.timeouts": st.timeouts,
        "db.client.connection.wait_time": {
            "sum": round(gate.wait_seconds, 6),
            "count": gate.wait_count,
        },
        "reconnects": st.reconnects,
        "replays": st.replays,
        "outcome_unknown": st.outcome_unknown,
        "time_in_state": {s.value: round(t, 6) for s, t in st.time_in_state.items()},
        "resolved": {
            "committed": st.resolved_committed,
            "aborted": st.resolved_aborted,
            "unknown": st.resolved_unknown,
        },
    }


def backend_stats(monitor: Monitor, now: float | None = None) -> dict[str, Any]:
    """One backend's figures now."""
    return as_dict(monitor.statistics(now))


def snapshot(monitors: Mapping[str, Monitor]) -> dict[str, dict[str, Any]]:
    """Every backend's figures, by backend name, taken at one instant."""
    now = time.monotonic()
    return {name: backend_stats(m, now) for name, m in monitors.items()}
