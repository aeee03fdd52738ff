"""The examples start and answer, run as a user runs them (subprocesses)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from harness.servers import PostgresServer, free_port

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def env_with(dsn: str) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": dsn}


@pytest.fixture(params=["sqlite", "postgres", "mysql"])
def notes_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """examples/fastapi_app.py under uvicorn on a free loopback port, on each backend (its
    queries are written once, with named parameters); yields its base URL."""
    dsn = f"sqlite:///{tmp_path / 'notes.db'}"
    if request.param != "sqlite":
        server = request.getfixturevalue("pg" if request.param == "postgres" else "mariadb")
        server.admin_query("DROP TABLE IF EXISTS notes", "app")  # from an earlier run
        dsn = server.dsn()
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "uvicorn", "--app-dir", str(EXAMPLES), "fastapi_app:app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        ],
        cwd=tmp_path,
        env=env_with(dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"uvicorn exited: {proc.communicate()[0]}"
            try:
                if httpx.get(f"{url}/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the app did not start within 30 s"
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            output, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    assert "Traceback" not in output, output


def test_fastapi_app_answers(notes_app: str) -> None:
    live = httpx.get(f"{notes_app}/health/live", timeout=5)
    assert live.status_code == 200
    assert live.json() == {"status": "pass"}

    ready = httpx.get(f"{notes_app}/health/ready", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "pass"
    assert ready.headers["content-type"].startswith("application/health+json")

    created = httpx.post(f"{notes_app}/notes", json={"text": "hello"}, timeout=10)
    assert created.status_code == 201, created.text
    note = created.json()
    assert note["body"] == "hello"

    listed = httpx.get(f"{notes_app}/notes", timeout=10)
    assert listed.status_code == 200
    assert listed.json() == [{"id": note["id"], "body": "hello"}]

    one = httpx.get(f"{notes_app}/notes/{note['id']}", timeout=10)
    assert one.json() == {"id": note["id"], "body": "hello"}
    assert httpx.get(f"{notes_app}/notes/nope", timeout=10).status_code == 404

    status = httpx.get(f"{notes_app}/status", timeout=10).json()
    assert status["state"] == "connected"

    # The 503 with Retry-After is part of the contract: the OpenAPI schema says so.
    schema = httpx.get(f"{notes_app}/openapi.json", timeout=10).json()
    for path, method in [("/notes", "get"), ("/notes", "post"), ("/notes/{note_id}", "get")]:
        unavailable = schema["paths"][path][method]["responses"]["503"]
        assert "Retry-After" in unavailable["headers"], (path, method)


def run_worker(dsn: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLES / "worker.py"), "--seconds", "2"],
        cwd=cwd,
        env=env_with(dsn),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def jobs_done(proc: subprocess.CompletedProcess[str]) -> int:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    match = re.search(r"worker finished: (\d+) jobs done, 0 with unknown outcome", proc.stdout)
    assert match, proc.stdout
    return int(match.group(1))


def test_worker_runs_on_sqlite(tmp_path: Path) -> None:
    assert jobs_done(run_worker(f"sqlite:///{tmp_path / 'jobs.db'}", tmp_path)) > 0


def test_worker_runs_on_postgres(pg: PostgresServer, tmp_path: Path) -> None:
    pg.admin_query("DROP TABLE IF EXISTS jobs", database="app")
    assert jobs_done(run_worker(pg.dsn(), tmp_path)) > 0
    done = int(pg.admin_query("SELECT count(*) FROM jobs WHERE status = 'done'", database="app"))
    assert done > 0
    pg.admin_query("DROP TABLE jobs", database="app")
