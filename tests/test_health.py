"""Health reports: the pass / warn / fail rules, the IETF shape, bounds, and no secrets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import resilientdb.testing.fake  # noqa: F401  (registers fake://)
from harness.polling import until
from harness.servers import SECURE_PASSWORD, SECURE_USER, PostgresServer
from resilientdb import Backoff, ConfigurationError, State, Supervisor
from resilientdb.health import HealthReport, HealthStatus
from resilientdb.testing.fake import FakeBackend
from tests.handles import adapter, supervised

FAST = Backoff(initial=0.005, maximum=0.02, jitter=0.0)
SLOW = Backoff(initial=30.0, maximum=30.0, jitter=0.0)  # no second attempt within a test


def make(dsn: Any = "fake://db", **options: Any) -> tuple[Supervisor, FakeBackend]:
    options.setdefault("backoff", FAST)
    options.setdefault("failed_probe_interval", 0.05)
    options.setdefault("memory_watchdog", False)
    sup = supervised(dsn, **options)
    backend = adapter(sup)
    assert isinstance(backend, FakeBackend)
    return sup, backend


def check_of(report: HealthReport, key: str) -> dict[str, Any]:
    [entry] = report.to_dict()["checks"][key]
    assert isinstance(entry, dict)
    return entry


async def test_connected_and_answering_is_pass_with_figures() -> None:
    sup, backend = make(min_size=2, max_size=7)
    async with sup:
        report = await sup.health()
        assert report.status is HealthStatus.PASS and report.ok and report.output is None
        b = report.backends["default"]
        assert b.status is HealthStatus.PASS and b.state is State.CONNECTED
        assert b.latency is not None and 0 <= b.latency < 5
        assert (b.min_size, b.max_size, b.waiting, b.reconnects) == (2, 7, 0, 0)
        assert b.time_in_state >= 0 and b.last_error is None and b.driver == "fake"
        assert ("fetchval", "SELECT 1") in backend.executed
        assert backend.in_use == 0  # the ping's connection went back

        body = report.to_dict()
        assert body["status"] == "pass" and "output" not in body
        assert set(body["checks"]) == {"default:connections", "default:responseTime"}
        conns = check_of(report, "default:connections")
        rt = check_of(report, "default:responseTime")
        for entry in (conns, rt):
            assert entry["componentType"] == "datastore" and entry["status"] == "pass"
            assert entry["time"].endswith("+00:00") and "output" not in entry
        assert conns["observedUnit"] == "connections" and conns["state"] == "connected"
        assert conns["pool"]["max"] == 7
        assert rt["observedUnit"] == "ms" and isinstance(rt["observedValue"], float)
        json.dumps(body)  # serialisable as is


async def test_ping_without_answer_is_warn_within_the_timeout() -> None:
    sup, backend = make()
    async with sup:
        backend.delay = 30.0  # every statement hangs
        started = time.monotonic()
        report = await sup.health(timeout=0.2)
        elapsed = time.monotonic() - started
        assert elapsed < 3.0  # bounded by 0.2 s, generous for a loaded machine
        assert report.status is HealthStatus.WARN and not report.ok
        b = report.backends["default"]
        assert b.latency is None and "did not answer" in (b.output or "")
        assert check_of(report, "default:responseTime")["status"] == "warn"
        assert check_of(report, "default:connections")["status"] == "pass"
        backend.delay = 0.0
        # A statement timeout is a hint of a half-open socket: the supervisor checked the
        # server in the background, found it fine, and stays connected.
        await until(lambda: backend.probes >= 1)
        assert sup.state is State.CONNECTED
        assert sup.stats()["default"]["db.client.connection.timeouts"] == 1
        assert (await sup.health()).status is HealthStatus.PASS


async def test_acquire_that_hangs_is_warn_within_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup, backend = make()

    @asynccontextmanager
    async def hanging(timeout: float | None) -> AsyncIterator[Any]:
        await asyncio.sleep(30)  # ignores its timeout, as a stuck pool might
        yield None

    async with sup:
        monkeypatch.setattr(backend, "acquire", hanging)
        started = time.monotonic()
        report = await sup.health(timeout=0.2)
        assert time.monotonic() - started < 3.0
        assert report.status is HealthStatus.WARN
        assert "pool exhausted" in (report.backends["default"].output or "")
        assert sup.stats()["default"]["db.client.connection.timeouts"] == 0  # not an outage
        assert sup.state is State.CONNECTED


async def test_unreachable_while_connected_is_fail_and_starts_the_reconnect() -> None:
    sup, backend = make()
    async with sup:
        backend.up = False
        report = await sup.health()
        assert report.status is HealthStatus.FAIL
        b = report.backends["default"]
        assert "connection refused" in (b.last_error or "")
        assert b.state is State.RECONNECTING  # the health check told the supervisor
        assert sup.state is State.RECONNECTING
        again = await sup.health()
        assert again.status is HealthStatus.FAIL
        assert "not connected: reconnecting" in (again.backends["default"].output or "")
        assert check_of(again, "default:connections")["status"] == "fail"
        assert again.to_dict()["checks"]["default:responseTime"][0]["observedValue"] is None
        backend.up = True
        await sup.wait_until_connected(timeout=5)
        healed = await sup.health()
        assert healed.status is HealthStatus.PASS
        assert healed.backends["default"].reconnects == 1


async def test_reconnecting_reports_waiters_and_the_cause() -> None:
    sup, backend = make(gate_timeout=5)
    backend.up = False
    async with sup:
        call = asyncio.create_task(sup.db.fetchval("SELECT 1"))
        await until(lambda: sup.db.statistics().waiting == 1)
        report = await sup.health()
        b = report.backends["default"]
        assert report.status is HealthStatus.FAIL and b.state is State.RECONNECTING
        assert b.waiting == 1 and b.latency is None
        assert "ConnectionRefusedError" in (b.last_error or "")
        assert "ConnectionRefusedError" in report.to_dict()["output"]
        backend.up = True
        assert await call == 1


async def test_failed_closed_and_not_started_are_fail_without_raising() -> None:
    sup, backend = make()
    report = await sup.health()  # not started: the gate is closed
    assert report.status is HealthStatus.FAIL
    assert report.backends["default"].state is State.CLOSED
    backend.permanent = True
    async with sup:
        assert sup.state is State.FAILED
        report = await sup.health()
        assert report.status is HealthStatus.FAIL
        assert "failed" in (report.backends["default"].output or "")
        assert "password authentication failed" in (report.backends["default"].last_error or "")
    report = await sup.health()
    assert report.status is HealthStatus.FAIL and "closed" in (report.output or "")


async def test_unexpected_error_in_the_ping_is_fail_not_an_exception(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup, backend = make()

    def broken(timeout: float | None) -> Any:
        raise RuntimeError("adapter bug")

    async with sup:
        monkeypatch.setattr(backend, "acquire", broken)
        report = await sup.health()
        assert report.status is HealthStatus.FAIL
        assert "RuntimeError: adapter bug" in (report.backends["default"].output or "")
        assert sup.state is State.CONNECTED  # not a connection error: no reconnect


async def test_backends_checked_concurrently_and_readiness_judges_required_ones() -> None:
    sup = supervised(
        {"main": "fake://main", "cache": "fake://cache"}, backoff=FAST, memory_watchdog=False
    )
    cache = adapter(sup, "cache")
    assert isinstance(cache, FakeBackend)
    async with sup:
        cache.delay = 30.0
        started = time.monotonic()
        report = await sup.health(timeout=0.3)
        assert time.monotonic() - started < 3.0
        assert report.status is HealthStatus.WARN
        assert report.backends["main"].status is HealthStatus.PASS
        assert report.output is not None and report.output.startswith("cache:")
        assert report.readiness(["main"]).status is HealthStatus.PASS
        assert report.readiness().status is HealthStatus.FAIL  # warn is not ready by default
        assert report.readiness(ready_on_warn=True).status is HealthStatus.WARN
        missing = report.readiness(["main", "nope"])
        assert missing.status is HealthStatus.FAIL and "nope: no such backend" in missing.output
        # The readiness view keeps every check in the body, for information.
        assert set(report.readiness(["main"]).to_dict()["checks"]) == set(
            report.to_dict()["checks"]
        )
        one = await sup["main"].health()
        assert set(one.backends) == {"main"} and one.status is HealthStatus.PASS
        cache.delay = 0.0


async def test_no_secret_in_a_report_of_a_fake_outage() -> None:
    sup, backend = make("fake://app:topsecret-pw@db/app", backoff=SLOW)
    backend.up = False
    backend.connect_outcomes.append(
        ConnectionRefusedError("cannot reach fake://app:topsecret-pw@db/app")
    )
    async with sup:
        report = await sup.health()
        assert report.status is HealthStatus.FAIL
        text = repr(report) + json.dumps(report.to_dict())
        assert "fake://app:***@db/app" in text
        assert "topsecret-pw" not in text


async def test_health_timeout_option_and_argument_are_validated() -> None:
    with pytest.raises(ConfigurationError, match="health_timeout"):
        supervised("fake://db", health_timeout=0)
    sup, _ = make()
    with pytest.raises(ValueError, match="timeout"):
        await sup.health(timeout=-1)


async def test_real_postgres_pass_then_fail_without_secrets(pg: PostgresServer) -> None:
    dsn = pg.dsn(user=SECURE_USER, password=SECURE_PASSWORD)
    sup = supervised(dsn, min_size=1, max_size=3, backoff=SLOW, memory_watchdog=False)
    try:
        async with sup:
            report = await sup.health(timeout=2)
            b = report.backends["default"]
            assert report.status is HealthStatus.PASS and b.driver == "postgres"
            assert b.latency is not None and b.latency > 0
            assert b.pool_size >= 1 and b.in_use == 0 and b.max_size == 3
            await asyncio.to_thread(pg.stop, "fast")
            down = await sup.health(timeout=2)
            assert down.status is HealthStatus.FAIL
            assert down.backends["default"].last_error
            assert sup.state is State.RECONNECTING
            text = repr(down) + json.dumps(down.to_dict()) + repr(report)
            assert SECURE_PASSWORD not in text
    finally:
        await asyncio.to_thread(pg.start)
