"""FastAPI integration (``pip install 'resilientdb[fastapi]'``).

::

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from resilientdb import Database, Supervisor
    from resilientdb.integrations.fastapi import database, health_router, lifespan

    supervisor = Supervisor("postgresql://app@db/app")
    app = FastAPI(lifespan=lifespan(supervisor))
    app.include_router(health_router())          # GET /health/live and /health/ready

    @app.get("/users")
    async def users(db: Annotated[Database, Depends(database())]):
        return [dict(r) for r in await db.fetch("SELECT id, name FROM users")]

- ``/health/live`` never touches a database: 200 for as long as the event loop answers. Use
  it for Kubernetes' ``livenessProbe``: restarting a pod does not bring a database back.
- ``/health/ready`` runs ``supervisor.health()`` and answers 200 when every required backend
  is connected and its ``SELECT 1`` answered in time, else 503. The body is the report's
  ``application/health+json`` (IETF health-check draft). Use it for ``readinessProbe``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from .. import ConfigurationError, Database, HealthStatus, Supervisor
from .._redact import describe

__all__ = ["HEALTH_JSON", "database", "get_supervisor", "health_router", "lifespan"]

HEALTH_JSON = "application/health+json"
# Probes must see the state now, never a cached answer from a proxy.
_NO_STORE = {"Cache-Control": "no-store"}
_STATE_KEY = "resilientdb"


def lifespan(
    supervisor: Supervisor,
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """A lifespan that starts ``supervisor`` with the app and closes it at shutdown.

    ``FastAPI(lifespan=lifespan(supervisor))``. The supervisor is also stored on
    ``app.state.resilientdb``, where :func:`database` and :func:`health_router` find it.
    To combine with a lifespan of your own, enter it inside yours:
    ``async with lifespan(supervisor)(app): yield``.
    """

    @asynccontextmanager
    async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
        setattr(app.state, _STATE_KEY, supervisor)
        async with supervisor:
            yield

    return _lifespan


def get_supervisor(request: Request) -> Supervisor:
    """The supervisor the app's :func:`lifespan` stored (a dependency in its own right)."""
    supervisor = getattr(request.app.state, _STATE_KEY, None)
    if not isinstance(supervisor, Supervisor):
        raise RuntimeError(
            "no resilientdb supervisor on this app: create it with "
            "FastAPI(lifespan=resilientdb.integrations.fastapi.lifespan(supervisor)), or pass "
            "supervisor= explicitly"
        )
    return supervisor


def database(
    name: str | None = None, *, supervisor: Supervisor | None = None
) -> Callable[[Request], AsyncIterator[Database]]:
    """A dependency that yields a :class:`Database`: the backend ``name``, else the first.

    ``db: Annotated[Database, Depends(database("main"))]``. The supervisor is ``supervisor``
    or the one the app's :func:`lifespan` stored. Nothing is held across the request: every
    call on the Database acquires and releases its own connection.
    """
    if supervisor is not None and name is not None:
        supervisor[name]  # an unknown name fails at import time, not at the first request

    async def dependency(request: Request) -> AsyncIterator[Database]:
        sup = supervisor if supervisor is not None else get_supervisor(request)
        yield sup.db if name is None else sup[name]

    return dependency


def health_router(
    supervisor: Supervisor | None = None,
    *,
    required: Iterable[str] | None = None,
    timeout: float | None = None,
    ready_on_warn: bool = False,
    prefix: str = "/health",
    include_in_schema: bool = True,
) -> APIRouter:
    """An ``APIRouter`` with ``GET {prefix}/live`` and ``GET {prefix}/ready``.

    ``required``: the backends readiness depends on (``None``: all). A cache that the service
    can run without belongs outside it, so that its outage does not take every pod out of
    rotation. ``timeout`` bounds each backend's check (default: its ``health_timeout``); keep
    it below the probe's ``timeoutSeconds``. ``ready_on_warn=True`` keeps a pod whose pool is
    exhausted in rotation (200 with status ``warn``); the default takes it out (503) until a
    connection frees up.
    """
    wanted = None if required is None else list(required)
    if supervisor is not None and wanted is not None:
        unknown = [n for n in wanted if n not in supervisor.databases]
        if unknown:
            raise ConfigurationError(
                f"health_router: required backends {unknown} are not in the supervisor "
                f"(known: {list(supervisor.databases)})"
            )
    if timeout is not None and not timeout > 0:
        raise ConfigurationError(f"health_router: timeout must be > 0, not {timeout!r}")
    router = APIRouter(prefix=prefix, tags=["health"])

    @router.get("/live", include_in_schema=include_in_schema)
    async def live() -> Response:
        """Liveness: the event loop answers. Never touches a database."""
        return JSONResponse({"status": "pass"}, media_type=HEALTH_JSON, headers=_NO_STORE)

    @router.get("/ready", include_in_schema=include_in_schema)
    async def ready(request: Request) -> Response:
        """Readiness: 200 when every required backend is connected and answers, else 503."""
        try:
            sup = supervisor if supervisor is not None else get_supervisor(request)
            report = await sup.health(timeout)
        except Exception as exc:
            # health() does not raise for database problems; this is a wiring or a library
            # bug, and a probe must still get an answer it understands.
            body = {"status": "fail", "output": describe(exc)}
            return JSONResponse(body, 503, headers=_NO_STORE, media_type=HEALTH_JSON)
        view = report.readiness(wanted, ready_on_warn=ready_on_warn)
        code = 503 if view.status is HealthStatus.FAIL else 200
        return JSONResponse(view.to_dict(), code, headers=_NO_STORE, media_type=HEALTH_JSON)

    return router
