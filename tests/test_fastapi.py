"""The FastAPI integration: a real app under uvicorn across an outage, plus ASGI unit cases."""

# No `from __future__ import annotations`: FastAPI reads the route annotations, and those
# refer to local variables (the supervisor of each test).

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI

import resilientdb.testing.fake  # noqa: F401  (registers fake://)
from harness.servers import PostgresServer
from resilientdb import Backoff, ConfigurationError, Database, State, Supervisor
from resilientdb.integrations.fastapi import (
    HEALTH_JSON,
    database,
    get_supervisor,
    health_router,
    lifespan,
)
from resilientdb.testing.fake import FakeBackend
from tests.handles import adapter, supervised

FAST = Backoff(initial=0.005, maximum=0.02, jitter=0.0)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # The test runner owns the process's signals; uvicorn must not take them over.
        yield


@asynccontextmanager
async def serve(app: FastAPI) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn in this event loop on a free loopback port; yield its URL."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, lifespan="on", log_level="warning", access_log=False
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if task.done():
                task.result()
                raise AssertionError("uvicorn stopped during startup")
            assert time.monotonic() < deadline, "uvicorn did not start"
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=15)


def client_for(base_url: str) -> httpx.AsyncClient:
    # trust_env=False: a proxy configured in the environment must not see loopback probes.
    return httpx.AsyncClient(base_url=base_url, trust_env=False, timeout=10)


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def summary(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["status"]


# --- a real server, a real database -------------------------------------------------------------


async def test_readiness_follows_a_database_outage(pg: PostgresServer) -> None:
    sup = supervised(
        pg.dsn(),
        backoff=Backoff(initial=0.05, maximum=0.2),
        health_timeout=1.0,
        memory_watchdog=False,
    )
    app = FastAPI(lifespan=lifespan(sup))
    app.include_router(health_router())
    timeline: list[tuple[str, int, str]] = []

    async def probe(phase: str, client: httpx.AsyncClient) -> httpx.Response:
        live = await client.get("/health/live")
        assert summary(live) == (200, "pass"), f"liveness failed during {phase}"
        ready = await client.get("/health/ready")
        assert ready.headers["content-type"] == HEALTH_JSON
        timeline.append((phase, *summary(ready)))
        return ready

    try:
        async with serve(app) as url, client_for(url) as client:
            assert sup.state is State.CONNECTED  # the lifespan started it
            assert summary(await probe("before", client)) == (200, "pass")

            await asyncio.to_thread(pg.stop, "fast")
            down = await probe("outage", client)
            # The probe itself found the outage on this idle service and told the supervisor.
            assert summary(down) == (503, "fail")
            again = await probe("outage", client)
            assert summary(again) == (503, "fail")
            check = again.json()["checks"]["default:connections"][0]
            assert check["state"] == "reconnecting" and "lastError" in check

            await asyncio.to_thread(pg.start)
            deadline = time.monotonic() + 20
            while (ready := await probe("recovery", client)).status_code != 200:
                assert ready.json()["status"] == "fail"
                assert time.monotonic() < deadline, f"never ready again: {timeline}"
                await asyncio.sleep(0.05)
            assert ready.json()["status"] == "pass"
            assert ready.json()["checks"]["default:connections"][0]["reconnects"] == 1
            assert summary(await probe("after", client)) == (200, "pass")
        assert sup.state is State.CLOSED  # the lifespan closed it with the app
    finally:
        print("readiness timeline:", timeline)  # kept in the report (-s / -rA)
        await asyncio.to_thread(pg.ensure_running)


async def test_readiness_with_an_exhausted_pool_answers_within_its_timeout(
    pg: PostgresServer,
) -> None:
    sup = supervised(pg.dsn(), min_size=1, max_size=1, acquire_timeout=30, memory_watchdog=False)
    app = FastAPI(lifespan=lifespan(sup))
    app.include_router(health_router(timeout=0.5))
    app.include_router(health_router(timeout=0.5, ready_on_warn=True, prefix="/lenient"))
    async with serve(app) as url, client_for(url) as client:
        assert summary(await client.get("/health/ready")) == (200, "pass")
        async with sup.db.acquire() as conn:
            started = time.monotonic()
            strict = await client.get("/health/ready")
            elapsed = time.monotonic() - started
            # Bounded by the check's own 0.5 s, far from the pool's 30 s acquire_timeout.
            assert elapsed < 5.0
            assert summary(strict) == (503, "fail")
            rt = strict.json()["checks"]["default:responseTime"][0]
            assert rt["status"] == "warn" and "pool exhausted" in rt["output"]
            conns = strict.json()["checks"]["default:connections"][0]
            assert conns["status"] == "pass" and conns["pool"]["inUse"] == 1
            assert summary(await client.get("/lenient/ready")) == (200, "warn")
            assert await conn.fetchval("SELECT 1") == 1  # the held connection is untouched
        assert summary(await client.get("/health/ready")) == (200, "pass")
        assert sup.stats()["default"]["db.client.connection.timeouts"] == 0


# --- ASGI transport: the fine-grained cases ---------------------------------------------------


def two_backends() -> tuple[Supervisor, FakeBackend]:
    sup = supervised(
        {"main": "fake://main", "cache": "fake://cache"}, backoff=FAST, memory_watchdog=False
    )
    cache = adapter(sup, "cache")
    assert isinstance(cache, FakeBackend)
    return sup, cache


async def test_live_never_touches_the_database() -> None:
    sup, _ = two_backends()
    app = FastAPI()
    app.include_router(health_router(sup))
    async with asgi_client(app) as client:
        r = await client.get("/health/live")  # not even started
        assert summary(r) == (200, "pass")
        assert r.headers["content-type"] == HEALTH_JSON
        assert r.headers["cache-control"] == "no-store"
        assert summary(await client.get("/health/ready")) == (503, "fail")
    for name in sup:
        backend = adapter(sup, name)
        assert isinstance(backend, FakeBackend)
        assert backend.opens == 0 and backend.acquired == 0


async def test_required_backends_decide_readiness() -> None:
    sup, cache = two_backends()
    app = FastAPI()
    app.include_router(health_router(sup))
    app.include_router(health_router(sup, required=["main"], prefix="/main"))
    async with sup, asgi_client(app) as client:
        assert summary(await client.get("/health/ready")) == (200, "pass")
        cache.up = False
        everything = await client.get("/health/ready")
        assert summary(everything) == (503, "fail")
        body = everything.json()
        assert body["output"].startswith("cache:")
        assert body["checks"]["cache:responseTime"][0]["status"] == "fail"
        assert body["checks"]["main:responseTime"][0]["status"] == "pass"
        main_only = await client.get("/main/ready")
        assert summary(main_only) == (200, "pass")
        # The cache's failing check is still shown, for information.
        assert main_only.json()["checks"]["cache:connections"][0]["status"] == "fail"
        assert main_only.headers["content-type"] == HEALTH_JSON


async def test_body_shape_follows_the_health_check_draft() -> None:
    sup, _ = two_backends()
    app = FastAPI()
    app.include_router(health_router(sup))
    async with sup, asgi_client(app) as client:
        body = (await client.get("/health/ready")).json()
    assert set(body) == {"status", "description", "checks"}
    assert set(body["checks"]) == {
        "main:connections",
        "main:responseTime",
        "cache:connections",
        "cache:responseTime",
    }
    for [entry] in body["checks"].values():
        assert entry["componentType"] == "datastore"
        assert {"observedValue", "observedUnit", "status", "time"} <= set(entry)
        assert entry["status"] == "pass" and "output" not in entry


async def test_unknown_required_backend_is_a_configuration_error() -> None:
    sup, _ = two_backends()
    with pytest.raises(ConfigurationError, match="nope"):
        health_router(sup, required=["main", "nope"])
    with pytest.raises(ConfigurationError, match="timeout"):
        health_router(sup, timeout=0)
    with pytest.raises(KeyError, match="nope"):
        database("nope", supervisor=sup)


async def test_lifespan_dependency_and_state_in_routes() -> None:
    sup, _ = two_backends()
    app = FastAPI(lifespan=lifespan(sup))
    app.include_router(health_router())

    @app.get("/which")
    async def which(
        first: Annotated[Database, Depends(database())],
        cache: Annotated[Database, Depends(database("cache"))],
        sv: Annotated[Supervisor, Depends(get_supervisor)],
    ) -> dict[str, Any]:
        return {
            "first": first.name,
            "cache": cache.name,
            "value": await cache.fetchval("SELECT 1"),
            "state": sv.state,
        }

    async with lifespan(sup)(app):  # what uvicorn does around the app
        assert app.state.resilientdb is sup and sup.state is State.CONNECTED
        async with asgi_client(app) as client:
            r = await client.get("/which")
            assert r.json() == {"first": "main", "cache": "cache", "value": 1, "state": "connected"}
            assert summary(await client.get("/health/ready")) == (200, "pass")
    assert sup.state is State.CLOSED


async def test_missing_supervisor_still_answers_the_probe() -> None:
    app = FastAPI()  # no lifespan: nothing stored on app.state
    app.include_router(health_router())
    async with asgi_client(app) as client:
        r = await client.get("/health/ready")
        assert summary(r) == (503, "fail")
        assert "no resilientdb supervisor" in r.json()["output"]
        assert summary(await client.get("/health/live")) == (200, "pass")


def test_importing_resilientdb_does_not_import_fastapi() -> None:
    code = (
        "import sys, resilientdb, resilientdb.integrations; "
        "bad = {'fastapi', 'starlette', 'prometheus_client'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
