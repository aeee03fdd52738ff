"""A Prometheus collector for a supervisor (``pip install 'resilientdb[prometheus]'``).

::

    from prometheus_client import REGISTRY
    from resilientdb.integrations.prometheus import ResilientDBCollector

    REGISTRY.register(ResilientDBCollector(supervisor))

Each scrape reads ``supervisor.statistics()`` (no I/O, no await) and exports, with the backend
name as ``pool_name``:

- ``db_client_connection_count{state="idle|used"}`` (gauge)
- ``db_client_connection_max``, ``db_client_connection_idle_min`` (gauges: the pool's bounds)
- ``db_client_connection_pending_requests`` (gauge: callers waiting at the gate)
- ``db_client_connection_timeouts_total`` (counter)
- ``db_client_connection_wait_time_seconds`` (summary: ``_count`` and ``_sum`` of gate waits)
- ``resilientdb_state{state=...}`` (1 for the current state, 0 for the others)
- ``resilientdb_reconnects_total``, ``resilientdb_replays_total``,
  ``resilientdb_outcome_unknown_total`` (counters)
- ``resilientdb_time_in_state_seconds_total{state=...}`` (counter)
- ``resilientdb_outcome_resolved_total{outcome=...}`` (counter): lost COMMITs resolved by
  asking the server (``committed``, ``aborted``, ``unknown``)

The first four are the OpenTelemetry database-client metrics with Prometheus's naming rules
applied (dots to underscores, ``_total`` on counters, the unit as a suffix).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    SummaryMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry

from .. import State, Supervisor

__all__ = ["ResilientDBCollector", "register"]

_POOL = ["pool_name"]


class ResilientDBCollector:
    """A custom collector: one supervisor's figures, read at scrape time.

    Register one collector per supervisor; the backend names become the ``pool_name`` label,
    so two supervisors in one registry need distinct backend names.
    """

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def describe(self) -> Iterator[Metric]:
        """The metric families without samples (lets the registry check names cheaply)."""
        yield from _Families().all()

    def collect(self) -> Iterator[Metric]:
        """The metric families with the supervisor's figures now."""
        f = _Families()
        for name, st in self.supervisor.statistics().items():
            pool, gate = st.pool, st.gate
            f.count.add_metric(["idle", name], pool.idle)
            f.count.add_metric(["used", name], pool.in_use)
            f.max.add_metric([name], pool.max_size)
            f.idle_min.add_metric([name], pool.min_size)
            f.pending.add_metric([name], gate.waiting)
            f.timeouts.add_metric([name], st.timeouts)
            f.wait.add_metric([name], gate.wait_count, gate.wait_seconds)
            for value in State:
                f.state.add_metric([name, value.value], 1.0 if st.state is value else 0.0)
            f.reconnects.add_metric([name], st.reconnects)
            f.replays.add_metric([name], st.replays)
            f.unknown.add_metric([name], st.outcome_unknown)
            for state, seconds in st.time_in_state.items():
                f.time_in_state.add_metric([name, state.value], seconds)
            for outcome, n in (
                ("committed", st.resolved_committed),
                ("aborted", st.resolved_aborted),
                ("unknown", st.resolved_unknown),
            ):
                f.resolved.add_metric([name, outcome], n)
        yield from f.all()


class _Families:
    """One scrape's metric families, empty until filled."""

    def __init__(self) -> None:
        self.count = GaugeMetricFamily(
            "db_client_connection_count",
            "Connections open, by state (idle or used).",
            labels=["state", "pool_name"],
        )
        self.max = GaugeMetricFamily(
            "db_client_connection_max", "Connections the pool may open at most.", labels=_POOL
        )
        self.idle_min = GaugeMetricFamily(
            "db_client_connection_idle_min",
            "Idle connections the pool keeps at least.",
            labels=_POOL,
        )
        self.pending = GaugeMetricFamily(
            "db_client_connection_pending_requests",
            "Callers waiting at the gate for the backend to come back.",
            labels=_POOL,
        )
        self.timeouts = CounterMetricFamily(
            "db_client_connection_timeouts", "Acquire and statement timeouts.", labels=_POOL
        )
        self.wait = SummaryMetricFamily(
            "db_client_connection_wait_time_seconds",
            "Time callers spent waiting at the gate for a connection.",
            labels=_POOL,
        )
        self.state = GaugeMetricFamily(
            "resilientdb_state",
            "The backend's supervisor state: 1 for the current one.",
            labels=["pool_name", "state"],
        )
        self.reconnects = CounterMetricFamily(
            "resilientdb_reconnects", "Recoveries after a lost connection.", labels=_POOL
        )
        self.replays = CounterMetricFamily(
            "resilientdb_replays", "Operations replayed after a safe failure.", labels=_POOL
        )
        self.unknown = CounterMetricFamily(
            "resilientdb_outcome_unknown",
            "Operations that raised OutcomeUnknown (may or may not have been applied).",
            labels=_POOL,
        )
        self.time_in_state = CounterMetricFamily(
            "resilientdb_time_in_state_seconds",
            "Seconds spent in each state since the supervisor started.",
            labels=["pool_name", "state"],
        )
        self.resolved = CounterMetricFamily(
            "resilientdb_outcome_resolved",
            "Lost COMMITs resolved by asking the server, by its answer.",
            labels=["pool_name", "outcome"],
        )

    def all(self) -> list[Metric]:
        return [
            self.count,
            self.max,
            self.idle_min,
            self.pending,
            self.timeouts,
            self.wait,
            self.state,
            self.reconnects,
            self.replays,
            self.unknown,
            self.time_in_state,
            self.resolved,
        ]


def register(
    supervisor: Supervisor, registry: CollectorRegistry | None = None
) -> ResilientDBCollector:
    """Register a collector for ``supervisor`` on ``registry`` (default: the global one)."""
    collector = ResilientDBCollector(supervisor)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
