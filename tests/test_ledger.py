"""The ledger under fire: nothing acknowledged is lost, nothing is applied twice.

Every kind of operation of ``harness/ledger.py`` runs, with the fault schedules of
``harness/ledger_faults.py`` (transfers, single inserts, executemany
batches of INSERTs and UPDATEs, multi-statement texts, DDL inside transactions on MariaDB,
transactions whose callable catches an error and carries on) while the faults fire: proxy
resets, a partition, a restart, killed connections, and hot rows locked by another session,
which on MariaDB outlast the app's 1 s lock wait timeout (1205) and on PostgreSQL make
deadlocks (40P01), so that batches and multi-statement texts fail mid-way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from harness.ledger import MYSQL, POSTGRES, Report
from harness.ledger_faults import mysql_faults, postgres_faults, run_sqlite, run_through_proxy
from harness.servers import MariaDBServer, PostgresServer


def _check(report: Report, fired: dict[str, Any], min_ok: int) -> None:
    print("\n" + report.table())
    assert report.clean, report.table()
    assert not report.errors, report.errors
    assert sum(c["ok"] for c in report.kind_counts.values()) > min_ok
    for kind, c in report.kind_counts.items():
        assert c["ok"] + c["unknown"] + c["unavailable"] > 0, f"no {kind} ran"


async def test_ledger_postgres(pg: PostgresServer) -> None:
    report, fired = await run_through_proxy(pg, POSTGRES, postgres_faults, 1.0)
    _check(report, fired, 500)
    # The faults really happened.
    assert fired["proxy reset (connections)"] > 0
    old, new = fired["server restart (old pid, new pid)"]
    assert old != new
    assert fired["killed connections"] > 0


async def test_ledger_mysql(mariadb: MariaDBServer) -> None:
    report, fired = await run_through_proxy(mariadb, MYSQL, mysql_faults, 2.0)
    _check(report, fired, 300)
    assert fired["proxy reset (connections)"] > 0
    old, new = fired["server restart (old pid, new pid)"]
    assert old != new
    assert fired["killed connections"] > 0


async def test_ledger_sqlite(tmp_path: Path) -> None:
    report, fired = await run_sqlite(tmp_path / "ledger.db")
    _check(report, fired, 300)
    assert fired["write lock held by another process (exit code)"] == 0
    assert fired["connections closed underneath"] > 0
    assert fired["file moved away for 0.5 s (empty db created?)"] is False
