"""Smoke test: every benchmark runs end to end in its tiny ``--quick`` mode.

Each module runs as ``python -m benchmarks.NAME --quick --out DIR`` in a subprocess (its own
throwaway servers, fault proxy, result files and plots, written to a temporary directory so
the committed results are untouched), and RESULTS.md is rendered from what it wrote by
``python -m benchmarks.report``. The tests never import the benchmarks. Figures
from a run this short mean nothing; the checks are about shape and about correctness
properties that hold whatever the timing (no write lost or duplicated, no call left failing,
no task left behind).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.servers import MariaDBServer, require, require_postgres

ROOT = Path(__file__).resolve().parent.parent

# The outage benchmark's contenders (benchmarks/outages.py, LIBRARIES).
OUTAGE_LIBRARIES = {
    "resilientdb",
    "resilientdb, idempotent writes",
    "asyncpg pool",
    "SQLAlchemy pre-ping",
    "psycopg_pool check",
}


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench")


def _module(name: str, *args: str) -> None:
    """``python -m benchmarks.NAME ARGS`` from the repository root; it must exit 0."""
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{name}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, f"benchmarks.{name} exited {proc.returncode}:\n{proc.stderr}"


def _run(out: Path, name: str) -> dict[str, Any]:
    _module(name, "--quick", "--out", str(out))
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    return data


def _rendered(out: Path, heading: str) -> str:
    _module("report", "--out", str(out))
    text = (out / "RESULTS.md").read_text()
    assert heading in text
    return text


def test_overhead_quick(out: Path) -> None:
    require_postgres()
    require(MariaDBServer.BINARIES, "MariaDB")
    data = _run(out, "overhead")
    for tasks in (1, 32):  # the cost of resolving lost COMMITs: both contenders ran
        assert data["resolve"][f"transfer @{tasks}"]["time_ratio"] > 0
    for backend in ("postgres", "mariadb", "sqlite"):
        cases = [v for v in data[backend].values() if "time_ratio" in v]
        # Three queries (SELECT 1, 100 rows, 10,000 rows) at two concurrencies.
        assert len(cases) == 6
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
    assert data["bulkload"]["time_ratio"] > 0  # the COPY comparison ran, both contenders
    assert set(data["bulkload"]["rows_per_s"]) == {"asyncpg pool", "resilientdb"}
    text = _rendered(out, "## 1. Overhead")
    assert "faster than SQLAlchemy with pre-ping" in text
    assert "COPY bulk load" in text and "the cost of learning the transaction id" in text


def test_outages_quick(out: Path) -> None:
    require_postgres()
    data = _run(out, "outages")
    assert set(data["scenarios"]) == {"restart", "blackhole", "reset"}
    for scenario in data["scenarios"].values():
        assert set(scenario) == OUTAGE_LIBRARIES
        mine = scenario["resilientdb"]
        # Whatever the timing: nothing acknowledged is missing, nothing is stored twice.
        assert mine["lost"] == 0
        assert mine["duplicates"] == 0
        assert mine["ops_ok"] > 0
    assert (out / "outages.png").stat().st_size > 0
    _rendered(out, "## 2. Outages")


def test_storm_quick(out: Path) -> None:
    require_postgres()
    data = _run(out, "storm")
    for shape in ("callers", "fleet"):
        for r in data["shapes"][shape].values():
            assert r["caller_errors"] == {}
            assert r["attempts_during_outage"] >= 1  # the reconnect loop did probe
            assert sum(r["series"]["attempts_per_100ms"]) >= r["attempts_during_outage"]
    assert (out / "storm.png").stat().st_size > 0
    _rendered(out, "## 3. Reconnect storm")


def test_memory_quick(out: Path) -> None:
    data = _run(out, "memory")
    waiters = data["waiters"]
    assert waiters["failed_calls"] == 0
    assert waiters["tasks_waiting"] >= waiters["callers"]
    assert waiters["tasks_after"] == waiters["tasks_before"]
    for soak in (data["soak_rss"], data["soak_traced"]):
        assert soak["missed_cycles"] == 0
        assert soak["reconnects"] == soak["cycles"]
        assert soak["tasks_after"] == soak["tasks_before"]
    _rendered(out, "## 4. Memory and soak")


def test_streaming_quick(out: Path) -> None:
    data = _run(out, "streaming")
    assert set(data["backends"]) == {"postgresql", "mysql", "sqlite"}
    for b in data["backends"].values():
        # Every row read both ways (the child asserts the count and the sum).
        assert b["fetch_growth_mb"] >= 0 and b["iterate_growth_mb"] >= 0
    _rendered(out, "## 6. Streaming")
