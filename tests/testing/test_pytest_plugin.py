"""The pytest plugin a team uses to test its own service under outages (docs/testing.md),
run as a user runs it: a test file of theirs in a fresh pytest, through ``pytester``."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

USER_TESTS = """
import asyncio
import time

import pytest

from resilientdb import Supervisor
from resilientdb.testing import Outage


async def test_service_rides_out_every_outage(resilientdb_outage: Outage) -> None:
    outage = resilientdb_outage
    async with Supervisor(outage.dsn, gate_timeout=30) as sup:
        await sup.db.execute("CREATE TABLE IF NOT EXISTS notes (id int PRIMARY KEY)")
        await outage.restart_server()
        assert await sup.db.fetchval("SELECT 1") == 1
        assert await outage.terminate_connections() >= 1
        assert await sup.db.fetchval("SELECT 2") == 2
        assert outage.reset() >= 1
        assert await sup.db.fetchval("SELECT 3") == 3
        waiting = asyncio.ensure_future(sup.db.fetchval("SELECT 4"))
        started = time.monotonic()
        await outage.partition(1.0)
        assert await waiting == 4
        assert time.monotonic() - started >= 1.0


async def test_down_then_back(resilientdb_outage: Outage) -> None:
    async with Supervisor(resilientdb_outage.dsn, gate_timeout=30) as sup:
        assert await sup.db.fetchval("SELECT 1") == 1
        down = asyncio.ensure_future(resilientdb_outage.down(1.0))
        assert await sup.db.fetchval("SELECT 5") == 5  # waits at the gate, then succeeds
        await down
        assert resilientdb_outage.stats.refused >= 1


def test_sync_test_and_proxy_in_front_of_any_dsn(resilientdb_postgres, resilientdb_proxy):
    outage = resilientdb_proxy(resilientdb_postgres.dsn())
    assert outage.dsn.startswith("postgresql://app@127.0.0.1:")
    assert outage.dsn != resilientdb_postgres.dsn()
    with pytest.raises(RuntimeError, match="throwaway server"):
        asyncio.run(outage.restart_server())
    with outage.partitioned():
        pass
"""


def test_the_entry_point_is_registered() -> None:
    points = importlib.metadata.entry_points(group="pytest11")
    assert "resilientdb.testing.pytest_plugin" in {p.value for p in points}


def test_a_users_outage_tests_pass(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_service=USER_TESTS)
    # A user's project: asyncio tests through pytest-asyncio, nothing of ours configured.
    pytester.makeini(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=3)


def test_the_server_is_removed_after_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_dir="""
        def test_where(resilientdb_postgres):
            print("DIR", resilientdb_postgres.directory)
            assert resilientdb_postgres.running
        """
    )
    result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=1)
    found = re.search(r"DIR (\S+)", result.stdout.str())
    assert found is not None
    assert not Path(found.group(1)).exists()


def test_the_plugin_can_be_switched_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(resilientdb_postgres):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:resilientdb", "-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'resilientdb_postgres' not found*"])
