"""``resilientdb demo`` as a user runs it: the default run on a throwaway PostgreSQL, the
SQLite run, ``--dsn`` against a server, and every way out leaving nothing behind."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from harness.servers import MariaDBServer, PostgresServer, free_port

CLI = [sys.executable, "-m", "resilientdb.cli"]


def run(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def summary_row(stdout: str, name: str) -> list[str]:
    """The cells of the summary row ``name`` (one per run: resilientdb, then the raw driver)."""
    for line in stdout.splitlines():
        if line.startswith(name + "  "):
            return line[len(name) :].split()
    raise AssertionError(f"no row {name!r} in:\n{stdout}")


def check_demo_output(proc: subprocess.CompletedProcess[str], faults: int = 3) -> None:
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "Traceback" not in out + proc.stderr
    assert re.search(r"^\s+1s \|", out, re.MULTILINE), "no live line"
    assert out.count(">> ") == faults, out
    assert summary_row(out, "writes lost")[0] == "0"
    assert summary_row(out, "writes applied twice")[0] == "0"
    assert summary_row(out, "balances consistent")[0] == "yes"
    assert int(summary_row(out, "operations ok")[0].replace(",", "")) > 0
    for name in ("replays (automatic, safe)", "errors seen by the app", "p50 latency"):
        summary_row(out, name)
    assert re.search(r"^fault\s+at\s+lifted\s+recovery\s+errors\s+recovery\s+errors", out, re.M)


def leftovers(prefix: str) -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob(prefix + "*")}


def postmasters_under(directory: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if any(directory in part for part in cmdline):
            found.append(proc)
    return found


def test_demo_default_runs_on_a_throwaway_postgres_and_removes_it() -> None:
    before = leftovers("resilientdb-pg-")
    proc = run("demo", "--duration", "6")
    check_demo_output(proc, faults=4)
    out = proc.stdout
    assert "raw asyncpg" in out
    for fault in ("TCP RST", "backend connection terminated", "server restart", "partition"):
        assert fault in out, fault
    match = re.search(r"in (\S+resilientdb-pg-\S+) \(removed at the end\)", out)
    assert match, out
    assert not os.path.exists(match.group(1))
    assert leftovers("resilientdb-pg-") <= before
    assert not postmasters_under(match.group(1))


def test_demo_ctrl_c_removes_the_server() -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--duration", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        where = None
        deadline = time.monotonic() + 60
        for line in proc.stdout:  # bounded by the demo's own end (30 s) and the deadline
            where = where or re.search(r"in (\S+resilientdb-pg-\S+) \(removed", line)
            if re.match(r"^\s+2s \|", line) or time.monotonic() > deadline:
                break
        assert where is not None
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130
    assert not os.path.exists(where.group(1))
    assert not postmasters_under(where.group(1))


def test_demo_sqlite_short_run(tmp_path: Path) -> None:
    plot = tmp_path / "timeline.png"
    proc = run("demo", "--backend", "sqlite", "--duration", "4", "--plot", str(plot))
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
    proc = run("demo", "--duration", "4", "--dsn", pg.dsn())
    check_demo_output(proc)
    assert "raw asyncpg" in proc.stdout
    # The demo drops its tables.
    left = pg.admin_query(
        "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'resilientdb_demo%'", database="app"
    )
    assert left.strip() == "0"


def test_demo_through_a_fault_proxy_on_mariadb(mariadb: MariaDBServer) -> None:
    proc = run("demo", "--duration", "4", "--dsn", mariadb.dsn())
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
    assert "network database" in proc.stderr
    assert not Path("x.db").exists()


def test_demo_to_a_closed_port_says_refused_at_once() -> None:
    started = time.monotonic()
    proc = run("demo", "--dsn", f"postgresql://app@127.0.0.1:{free_port()}/app")
    assert proc.returncode == 1
    assert time.monotonic() - started < 8  # interpreter start-up on a busy machine included
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "connection refused" in lines[0]


def test_demo_without_postgres_says_so_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "RESILIENTDB_POSTGRES": str(tmp_path)}  # a bin dir with nothing
    proc = subprocess.run(
        [*CLI, "demo", "--duration", "2"], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("resilientdb demo: RESILIENTDB_POSTGRES=")
    assert "--backend sqlite" in lines[0]
