"""The Prometheus collector, scraped through the text exposition format."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import resilientdb.testing.fake  # noqa: F401  (registers fake://)
from resilientdb import Backoff, DatabaseUnavailable, OutcomeUnknown, State, Supervisor
from resilientdb.integrations.prometheus import ResilientDBCollector, register
from resilientdb.testing.fake import FakeBackend, FakeConnectionLost
from tests.handles import adapter, supervised

FAST = Backoff(initial=0.005, maximum=0.02, jitter=0.0)


def scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` from the text exposition, as Prometheus reads it."""
    text = generate_latest(registry).decode()
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def make() -> tuple[Supervisor, FakeBackend, FakeBackend]:
    sup = supervised(
        {"main": "fake://main", "cache": "fake://cache"},
        backoff=FAST,
        min_size=2,
        max_size=8,
        memory_watchdog=False,
    )
    main, cache = adapter(sup, "main"), adapter(sup, "cache")
    assert isinstance(main, FakeBackend) and isinstance(cache, FakeBackend)
    return sup, main, cache


async def test_exposition_names_and_values() -> None:
    sup, main, cache = make()
    registry = CollectorRegistry()
    register(sup, registry)
    async with sup:
        # One replay after a lost connection (a reconnect: the check's probe finds the server
        # down once), one unknown outcome (another reconnect).
        main.fail_next(FakeConnectionLost("lost"), sent=True)
        main.connect_outcomes.append(ConnectionRefusedError("down"))
        assert await sup["main"].fetch("SELECT 1") == [1]
        main.fail_next(FakeConnectionLost("lost"), sent=True)
        main.connect_outcomes.append(ConnectionRefusedError("down"))
        with pytest.raises(OutcomeUnknown):
            await sup["main"].execute("INSERT INTO t VALUES (1)")
        await sup.wait_until_connected(timeout=5)
        # Two callers waiting at the gate of the cache, which is down.
        cache.up = False
        with pytest.raises(DatabaseUnavailable):
            await sup["cache"].fetchval("SELECT 1", timeout=0.1)
        assert sup["cache"].state is State.RECONNECTING
        waiters = [
            asyncio.create_task(sup["cache"].fetchval("SELECT 1", timeout=5)) for _ in range(2)
        ]
        deadline = time.monotonic() + 5
        while sup["cache"].statistics().waiting < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        main.in_use = 3  # the fake's pool gauge: three connections in use

        s = scrape(registry)

        main.in_use = 0
        cache.up = True
        assert await asyncio.gather(*waiters) == [1, 1]

    assert value(s, "db_client_connection_count", state="used", pool_name="main") == 3
    assert value(s, "db_client_connection_count", state="idle", pool_name="main") == 0
    assert value(s, "db_client_connection_max", pool_name="main") == 8
    assert value(s, "db_client_connection_idle_min", pool_name="cache") == 2
    assert value(s, "db_client_connection_pending_requests", pool_name="cache") == 2
    assert value(s, "db_client_connection_pending_requests", pool_name="main") == 0
    assert value(s, "db_client_connection_timeouts_total", pool_name="main") == 0
    assert value(s, "db_client_connection_wait_time_seconds_count", pool_name="main") >= 0
    assert value(s, "db_client_connection_wait_time_seconds_sum", pool_name="main") >= 0
    assert value(s, "resilientdb_reconnects_total", pool_name="main") == 2
    assert value(s, "resilientdb_replays_total", pool_name="main") == 1
    assert value(s, "resilientdb_outcome_unknown_total", pool_name="main") == 1
    assert value(s, "resilientdb_outcome_unknown_total", pool_name="cache") == 0
    assert value(s, "resilientdb_state", pool_name="main", state="connected") == 1
    assert value(s, "resilientdb_state", pool_name="main", state="reconnecting") == 0
    assert value(s, "resilientdb_state", pool_name="cache", state="reconnecting") == 1
    assert value(s, "resilientdb_state", pool_name="cache", state="connected") == 0
    states = [k for k in s if k[0] == "resilientdb_state" and ("pool_name", "cache") in k[1]]
    assert len(states) == 5  # one series per state value
    connected_for = value(
        s, "resilientdb_time_in_state_seconds_total", pool_name="main", state="connected"
    )
    assert connected_for > 0


async def test_text_exposition_types_and_help() -> None:
    sup, _, _ = make()
    registry = CollectorRegistry()
    registry.register(ResilientDBCollector(sup))
    text = generate_latest(registry).decode()  # before start: zeros, state closed
    assert "# TYPE db_client_connection_count gauge" in text
    assert "# TYPE db_client_connection_timeouts_total counter" in text
    assert "# TYPE db_client_connection_wait_time_seconds summary" in text
    assert "# TYPE resilientdb_reconnects_total counter" in text
    assert 'resilientdb_outcome_resolved_total{outcome="committed",pool_name="main"} 0.0' in text
    assert 'resilientdb_state{pool_name="main",state="closed"} 1.0' in text
    assert 'db_client_connection_count{pool_name="main",state="idle"} 0.0' in text


def test_a_second_collector_for_the_same_names_is_refused() -> None:
    sup, _, _ = make()
    registry = CollectorRegistry()
    register(sup, registry)
    with pytest.raises(ValueError, match="Duplicated"):
        register(sup, registry)


async def test_stats_snapshot_keeps_its_keys_and_adds_wait_time() -> None:
    sup, _, _ = make()
    async with sup:
        stats = sup.stats()
    assert set(stats) == {"main", "cache"}
    assert set(stats["main"]) == {
        "state",
        "db.client.connection.count",
        "db.client.connection.max",
        "db.client.connection.idle.min",
        "db.client.connection.pending_requests",
        "db.client.connection.timeouts",
        "db.client.connection.wait_time",
        "reconnects",
        "replays",
        "outcome_unknown",
        "time_in_state",
        "resolved",
    }
    assert stats["main"]["resolved"] == {"committed": 0, "aborted": 0, "unknown": 0}
    assert set(stats["main"]["db.client.connection.wait_time"]) == {"sum", "count"}
    assert stats["main"]["time_in_state"]["connected"] > 0
