"""Smoke test: every benchmark runs end to end in its tiny ``--quick`` mode.

Each module's ``main`` runs as ``python -m benchmarks.NAME --quick`` would (its own throwaway
servers, fault proxy, result files and plots, written to a temporary directory so the
committed results are untouched), and RESULTS.md is rendered from what it wrote. Figures
from a run this short mean nothing; the checks are about shape and about correctness
properties that hold whatever the timing (no write lost or duplicated, no call left failing,
no task left behind).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from benchmarks import memory, outages, overhead, report, storm
from harness.servers import MariaDBServer, PostgresServer, require


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


def _run(module: Any, out: Path, name: str) -> dict[str, Any]:
    assert module.main(["--quick", "--out", str(out)]) == 0
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return data


def _rendered(out: Path, heading: str) -> str:
    text = report.write(out).read_text()
    assert heading in text
    return text


def test_overhead_quick(out: Path) -> None:
    require(PostgresServer.BINARIES, "PostgreSQL")
    require(MariaDBServer.BINARIES, "MariaDB")
    data = _run(overhead, out, "overhead")
    for backend in ("postgres", "mariadb", "sqlite"):
        cases = [v for v in data[backend].values() if "time_ratio" in v]
        assert len(cases) == 4  # two queries at two concurrencies
        for case in cases:
            assert case["ops_per_s"]["resilientdb"] > 0
            assert case["time_ratio"][case["baseline"]] == 1.0
    assert set(data["postgres"]["SELECT 1 @1"]["ops_per_s"]) == {
        "asyncpg pool",
        "resilientdb",
        "SQLAlchemy",
        "SQLAlchemy pre-ping",
        "psycopg_pool",
        "psycopg_pool check",
    }
    assert data["gate"]["wall_ns_per_call"]["resilientdb"] > 0
    text = _rendered(out, "## 1. Overhead")
    assert "faster than SQLAlchemy with pre-ping" in text


def test_outages_quick(out: Path) -> None:
    require(PostgresServer.BINARIES, "PostgreSQL")
    data = _run(outages, out, "outages")
    assert set(data["scenarios"]) == {"restart", "blackhole", "reset"}
    for scenario in data["scenarios"].values():
        assert set(scenario) == set(outages.LIBRARIES)
        mine = scenario["resilientdb"]
        # Whatever the timing: nothing acknowledged is missing, nothing is stored twice.
        assert mine["lost"] == 0
        assert mine["duplicates"] == 0
        assert mine["ops_ok"] > 0
    assert (out / "outages.png").stat().st_size > 0
    _rendered(out, "## 2. Outages")


def test_storm_quick(out: Path) -> None:
    require(PostgresServer.BINARIES, "PostgreSQL")
    data = _run(storm, out, "storm")
    for shape in ("callers", "fleet"):
        for r in data["shapes"][shape].values():
            assert r["caller_errors"] == {}
            assert r["attempts_during_outage"] >= 1  # the reconnect loop did probe
            assert sum(r["series"]["attempts_per_100ms"]) >= r["attempts_during_outage"]
    assert (out / "storm.png").stat().st_size > 0
    _rendered(out, "## 3. Reconnect storm")


def test_memory_quick(out: Path) -> None:
    data = _run(memory, out, "memory")
    waiters = data["waiters"]
    assert waiters["failed_calls"] == 0
    assert waiters["tasks_waiting"] >= waiters["callers"]
    assert waiters["tasks_after"] == waiters["tasks_before"]
    for soak in (data["soak_rss"], data["soak_traced"]):
        assert soak["missed_cycles"] == 0
        assert soak["reconnects"] == soak["cycles"]
        assert soak["tasks_after"] == soak["tasks_before"]
    _rendered(out, "## 4. Memory and soak")
