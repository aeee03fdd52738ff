"""The ``resilientdb`` command, run as a user runs it: in a subprocess, reading its exit status,
stdout and stderr.

What a user is promised: exit 0 / 1 / 2 (pass / fail / bad input); a problem is one line on
stderr, never a traceback; a password never appears in anything printed.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.servers import SECURE_PASSWORD, SECURE_USER, MariaDBServer, PostgresServer, free_port

CLI = [sys.executable, "-m", "resilientdb.cli"]
WRONG_PASSWORD = "not-the-pw-42"


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *secrets: str) -> str:
    """The single stderr line of a failed command; no traceback, no secret anywhere."""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for secret in secrets:
        assert secret not in proc.stdout + proc.stderr
    return lines[0]


def unused_dsn(password: str | None = None) -> str:
    auth = f"{SECURE_USER}:{password}" if password else "app"
    return f"postgresql://{auth}@127.0.0.1:{free_port()}/app"


# --- check ------------------------------------------------------------------------------------


def test_check_passes_on_a_live_server(pg: PostgresServer) -> None:
    proc = run("check", pg.dsn())
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("pass: postgresql://app@127.0.0.1:")
    assert "SELECT 1" in proc.stdout
    assert proc.stderr == ""


def test_check_json_is_the_health_report_and_hides_the_password(pg: PostgresServer) -> None:
    dsn = pg.dsn(user=SECURE_USER, password=SECURE_PASSWORD)
    proc = run("check", dsn, "--json")
    assert proc.returncode == 0, proc.stderr
    assert SECURE_PASSWORD not in proc.stdout + proc.stderr
    body = json.loads(proc.stdout)
    assert body["status"] == "pass"
    assert body["checks"]["default:connections"][0]["state"] == "connected"
    assert isinstance(body["checks"]["default:responseTime"][0]["observedValue"], float)


def test_check_wrong_password_fails_in_one_line(pg: PostgresServer) -> None:
    proc = run("check", pg.dsn(user=SECURE_USER, password=WRONG_PASSWORD))
    assert proc.returncode == 1
    line = one_line_error(proc, WRONG_PASSWORD)
    assert line.startswith("resilientdb check: cannot connect to postgresql://secure:***@")
    assert "password" in line.lower()


def test_check_stopped_server_fails_in_one_line(pg: PostgresServer) -> None:
    pg.stop()
    proc = run("check", pg.dsn(user=SECURE_USER, password=SECURE_PASSWORD), "--timeout", "2")
    assert proc.returncode == 1
    line = one_line_error(proc, SECURE_PASSWORD)
    assert "cannot connect to postgresql://secure:***@127.0.0.1:" in line
    assert "refused" in line.lower()


def test_check_json_on_failure_still_prints_the_report() -> None:
    proc = run("check", unused_dsn(WRONG_PASSWORD), "--json", "--timeout", "2")
    assert proc.returncode == 1
    one_line_error(proc, WRONG_PASSWORD)
    body = json.loads(proc.stdout)
    assert body["status"] == "fail"
    assert body["checks"]["default:connections"][0]["state"] != "connected"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"postgresql://{SECURE_USER}:{SECURE_PASSWORD}@/app", "has no host"),
        (f"nosuch://{SECURE_USER}:{SECURE_PASSWORD}@127.0.0.1/app", "unknown scheme"),
        (f"postgresql://u:{SECURE_PASSWORD}@127.0.0.1/app?sslmod=require", "did you mean"),
        (f"postgresql://u:{SECURE_PASSWORD}@127.0.0.1:notaport/app", "malformed DSN"),
        ("sqlite://host/x.db", "SQLite takes no host"),
    ],
)
def test_check_bad_dsn_exits_2_in_one_line(dsn: str, expected: str) -> None:
    proc = run("check", dsn)
    assert proc.returncode == 2
    line = one_line_error(proc, SECURE_PASSWORD)
    assert line.startswith("resilientdb check: ")
    assert expected in line


def test_check_never_creates_a_sqlite_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    proc = run("check", f"sqlite:///{missing}")
    assert proc.returncode == 1
    one_line_error(proc)
    assert not missing.exists()


def test_bad_arguments_exit_2() -> None:
    proc = run("check", "sqlite:///x.db", "--timeout", "-1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr


def test_no_command_prints_help() -> None:
    proc = run()
    assert proc.returncode == 0
    for command in ("demo", "check", "wait", "watch"):
        assert command in proc.stdout


# --- wait -------------------------------------------------------------------------------------


def test_wait_returns_at_once_for_a_live_server(pg: PostgresServer) -> None:
    proc = run("wait", pg.dsn(), "--timeout", "20")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ready: postgresql://app@127.0.0.1:")


def test_wait_gives_up_after_its_timeout() -> None:
    started = time.monotonic()
    proc = run("wait", unused_dsn(WRONG_PASSWORD), "--timeout", "1.5")
    elapsed = time.monotonic() - started
    assert proc.returncode == 1
    line = one_line_error(proc, WRONG_PASSWORD)
    assert "did not accept connections within 1.5s" in line
    assert 1.5 <= elapsed < 30  # generous: interpreter start-up on a busy machine


def test_wait_bad_dsn_exits_2() -> None:
    proc = run("wait", "postgresql://app@/app", "--timeout", "5")
    assert proc.returncode == 2
    assert "has no host" in one_line_error(proc)


def test_wait_sees_a_stopped_server_come_up(pg: PostgresServer) -> None:
    pg.stop()
    proc = subprocess.Popen(
        [*CLI, "wait", pg.dsn(), "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        assert proc.poll() is None, "wait returned while the server was down"
        starter = threading.Thread(target=pg.start)
        starter.start()
        stdout, stderr = proc.communicate(timeout=90)
        starter.join(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert stdout.startswith("ready: ")


# --- watch ------------------------------------------------------------------------------------


def test_watch_prints_a_line_per_interval(pg: PostgresServer) -> None:
    proc = run("watch", pg.dsn(), "--count", "3", "--interval", "0.2")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("watching postgresql://app@127.0.0.1:")
    assert len(lines) == 4
    for line in lines[1:]:
        assert re.search(r"connected\s+pass\s+ping\s+[\d.]+ ms\s+pool \d+/1 ", line), line


def test_watch_shows_an_unreachable_server_without_a_traceback() -> None:
    proc = run("watch", unused_dsn(WRONG_PASSWORD), "--count", "2", "--interval", "0.2")
    assert proc.returncode == 1
    assert proc.stderr == ""
    assert WRONG_PASSWORD not in proc.stdout
    lines = proc.stdout.strip().splitlines()[1:]
    assert len(lines) == 2
    assert all(" fail " in line and "ConnectionRefusedError" in line for line in lines), lines


# --- demo -------------------------------------------------------------------------------------


def summary_row(stdout: str, name: str) -> list[str]:
    """The cells of the summary row ``name`` (one per run: resilientdb, then the raw driver)."""
    for line in stdout.splitlines():
        if line.startswith(name + "  "):
            return line[len(name) :].split()
    raise AssertionError(f"no row {name!r} in:\n{stdout}")


def check_demo_output(proc: subprocess.CompletedProcess[str]) -> None:
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Traceback" not in out + proc.stderr
    assert re.search(r"^\s+1s \|", out, re.MULTILINE), "no live line"
    assert out.count(">> ") == 3, "three faults injected"
    assert summary_row(out, "writes lost")[0] == "0"
    assert summary_row(out, "writes applied twice")[0] == "0"
    assert summary_row(out, "balances consistent")[0] == "yes"
    assert int(summary_row(out, "operations ok")[0].replace(",", "")) > 0
    for name in ("replays (automatic, safe)", "errors seen by the app", "p50 latency"):
        summary_row(out, name)
    assert re.search(r"^fault\s+at\s+lifted\s+recovery\s+errors\s+recovery\s+errors", out, re.M)


def test_demo_sqlite_short_run(tmp_path: Path) -> None:
    plot = tmp_path / "timeline.png"
    proc = run("demo", "--duration", "4", "--plot", str(plot), timeout=90)
    check_demo_output(proc)
    assert "raw aiosqlite" in proc.stdout
    if importlib.util.find_spec("matplotlib") is None:
        assert proc.stderr.strip() == (
            "resilientdb demo: --plot needs matplotlib (pip install matplotlib); "
            "running without a plot"
        )
        assert not plot.exists()
    else:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_through_a_fault_proxy(pg: PostgresServer) -> None:
    proc = run("demo", "--duration", "4", "--dsn", pg.dsn(), timeout=90)
    check_demo_output(proc)
    assert "raw asyncpg" in proc.stdout
    # The demo drops its tables.
    left = pg.admin_query(
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'resilientdb_demo%'", database="app"
    )
    assert left.strip() == "0"


def test_demo_through_a_fault_proxy_on_mariadb(mariadb: MariaDBServer) -> None:
    proc = run("demo", "--duration", "4", "--dsn", mariadb.dsn(), timeout=90)
    check_demo_output(proc)
    assert "raw aiomysql" in proc.stdout
    assert proc.stderr == ""  # no driver warnings leak out
    left = mariadb.admin_query(
        "SELECT count(*) FROM information_schema.tables "
        "WHERE table_schema = 'app' AND table_name LIKE 'resilientdb_demo%'"
    )
    assert left.strip() == "0"


def test_demo_rejects_a_sqlite_dsn() -> None:
    proc = run("demo", "--dsn", "sqlite:///x.db")
    assert proc.returncode == 2
    assert "network database" in one_line_error(proc)
