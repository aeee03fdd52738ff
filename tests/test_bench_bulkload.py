"""Smoke test: the COPY bulk-load benchmark runs end to end in its ``--quick`` mode, in a
subprocess with its own throwaway PostgreSQL, writing to a temporary directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from harness.servers import require_postgres

ROOT = Path(__file__).resolve().parent.parent


def test_bulkload_quick(tmp_path: Path) -> None:
    require_postgres()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bulkload", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    assert "time ratio resilientdb/asyncpg" in proc.stdout
    data = json.loads((tmp_path / "bulkload.json").read_text())
    assert set(data["rows_per_s"]) == {"asyncpg pool", "resilientdb"}
    assert all(rate > 0 for rate in data["rows_per_s"].values())
    assert len(data["time_ratio_rounds"]) == data["rounds"]
