"""Health checks: what a readiness probe, a status page or an on-call engineer needs to know.

``await supervisor.health()`` (or ``await db.health()``) checks every backend at once and
returns a :class:`HealthReport`. The rules, per backend:

========================================  ======  =============================================
situation                                 status  why
========================================  ======  =============================================
CONNECTED, ``SELECT 1`` answered           pass
CONNECTED, no connection or no answer      warn    the pool is exhausted or the server is slow:
within the check's timeout                         the database is up, this process is busy
CONNECTED, the ping failed otherwise       fail    the connection is gone; the supervisor is told
                                                   and starts reconnecting at once
CONNECTING, RECONNECTING                   fail    calls are waiting at the gate: not ready
FAILED, CLOSED                             fail    calls fail fast
========================================  ======  =============================================

The overall status is the worst of the backends'. :meth:`HealthReport.readiness` judges only the
backends a service requires and, by default, counts ``warn`` as not ready.

A check never raises for a database problem and never outlasts its timeout: the ping takes its
own short acquire (``health_timeout``, default 1 s), not the pool's ``acquire_timeout``, and the
whole check runs under a hard deadline. An acquire that timed out is not counted as a
connection timeout in the metrics, and does not make the supervisor probe: a busy pool is not
an outage.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ._leases import Leases
from ._monitor import Monitor
from ._redact import describe
from ._states import State
from .backends.base import ErrorKind

__all__ = ["BackendHealth", "HealthReport", "HealthStatus", "check"]

PING = "SELECT 1"


class HealthStatus(enum.StrEnum):
    """The IETF health-check draft's statuses, ordered pass < warn < fail."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


_RANK = {HealthStatus.PASS: 0, HealthStatus.WARN: 1, HealthStatus.FAIL: 2}


def worst(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """The worst of ``statuses`` (``pass`` for none)."""
    return max(statuses, key=_RANK.__getitem__, default=HealthStatus.PASS)


@dataclass(frozen=True, kw_only=True)
class BackendHealth:
    """One backend's health at one instant. Every text in it is redacted."""

    name: str
    """The backend's name in the supervisor (``"default"`` for a single DSN)."""
    driver: str
    """``"postgres"``, ``"mysql"``, ``"sqlite"``."""
    status: HealthStatus
    state: State
    time_in_state: float
    """Seconds since the last state change."""
    latency: float | None
    """Seconds the ``SELECT 1`` took, acquire excluded; ``None`` when it did not answer."""
    pool_size: int
    idle: int
    in_use: int
    waiting: int
    """Callers waiting at the gate for a reconnect."""
    min_size: int
    max_size: int
    reconnects: int
    last_error: str | None
    """The cause of the current outage or of the failed ping, redacted; ``None`` when fine."""
    output: str | None = None
    """Why the status is not ``pass``, in one line."""
    role: str | None = None
    """The node's role where the driver can tell (``primary``, ``standby``, ``read-only``:
    a primary refusing writes); a node that does not fit the DSN's ``target_session_attrs``
    fails the check."""


@dataclass(frozen=True, kw_only=True)
class HealthReport:
    """The health of some backends. ``to_dict()`` is the ``application/health+json`` body."""

    status: HealthStatus
    backends: Mapping[str, BackendHealth]
    checked_at: float = field(default_factory=time.time)
    """Wall-clock time of the check (``time.time()``)."""
    output: str | None = None
    """Why the overall status is not ``pass``, in one line."""

    @classmethod
    def of(cls, backends: Sequence[BackendHealth], checked_at: float | None = None) -> HealthReport:
        """A report whose status is the worst of ``backends``'."""
        status = worst(b.status for b in backends)
        bad = [b for b in backends if b.status is not HealthStatus.PASS]
        output = "; ".join(f"{b.name}: {b.output}" for b in bad if b.output) or None
        return cls(
            status=status,
            backends={b.name: b for b in backends},
            checked_at=time.time() if checked_at is None else checked_at,
            output=output,
        )

    @property
    def ok(self) -> bool:
        """True when the overall status is ``pass``."""
        return self.status is HealthStatus.PASS

    def readiness(
        self, required: Iterable[str] | None = None, *, ready_on_warn: bool = False
    ) -> HealthReport:
        """The same checks, judged for a readiness probe.

        The status is the worst over the ``required`` backends only (``None``: all of them);
        with ``ready_on_warn=False`` a ``warn`` (pool exhausted) counts as ``fail``, so that
        ``fail`` always means "answer 503", as the health-check draft wants. The checks of
        backends that are not required stay in the body, for information.
        """
        names = list(self.backends) if required is None else list(required)
        unknown = [n for n in names if n not in self.backends]
        judged = [self.backends[n] for n in names if n in self.backends]
        status = worst(b.status for b in judged)
        reasons = [f"{b.name}: {b.output}" for b in judged if b.status is not HealthStatus.PASS]
        if unknown:
            status = HealthStatus.FAIL
            reasons += [f"{n}: no such backend" for n in unknown]
        if status is HealthStatus.WARN and not ready_on_warn:
            status = HealthStatus.FAIL
        return replace(self, status=status, output="; ".join(reasons) or None)

    def to_dict(self) -> dict[str, Any]:
        """The report in the shape of the IETF health-check draft (``application/health+json``).

        ``checks`` holds, per backend, ``"<name>:connections"`` (observed: connections in use,
        with the pool's figures and the state alongside) and ``"<name>:responseTime"``
        (observed: the ping in milliseconds). ``output`` appears on anything not ``pass``.
        """
        when = _iso(self.checked_at)
        checks: dict[str, list[dict[str, Any]]] = {}
        for b in self.backends.values():
            connections: dict[str, Any] = {
                "componentId": b.name,
                "componentType": "datastore",
                "observedValue": b.in_use,
                "observedUnit": "connections",
                "status": _state_status(b).value,
                "time": when,
                "state": b.state.value,
                "timeInState": round(b.time_in_state, 3),
                "driver": b.driver,
                "pool": {
                    "size": b.pool_size,
                    "idle": b.idle,
                    "inUse": b.in_use,
                    "waiting": b.waiting,
                    "min": b.min_size,
                    "max": b.max_size,
                },
                "reconnects": b.reconnects,
            }
            if b.last_error is not None:
                connections["lastError"] = b.last_error
            if b.role is not None:
                connections["role"] = b.role
            if connections["status"] != "pass":
                connections["output"] = f"backend is {b.state.value}" + (
                    f": {b.last_error}" if b.last_error else ""
                )
            response: dict[str, Any] = {
                "componentId": b.name,
                "componentType": "datastore",
                "observedValue": None if b.latency is None else round(b.latency * 1000, 3),
                "observedUnit": "ms",
                "status": b.status.value,
                "time": when,
            }
            if b.status is not HealthStatus.PASS:
                response["output"] = b.output or b.status.value
            checks[f"{b.name}:connections"] = [connections]
            checks[f"{b.name}:responseTime"] = [response]
        body: dict[str, Any] = {
            "status": self.status.value,
            "description": "resilientdb connection supervisor",
            "checks": checks,
        }
        if self.status is not HealthStatus.PASS and self.output:
            body["output"] = self.output
        return body


def _state_status(b: BackendHealth) -> HealthStatus:
    # The connections check judges the state alone; the ping's verdict is responseTime's.
    return HealthStatus.PASS if b.state is State.CONNECTED else HealthStatus.FAIL


def _iso(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat(timespec="milliseconds")


async def check(engines: Iterable[Leases], timeout: float | None = None) -> HealthReport:
    """Check every backend of ``engines`` concurrently; each bounded by ``timeout``
    (``None``: the backend's ``health_timeout``). Never raises for a database problem."""
    if timeout is not None and not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
    checked_at = time.time()
    results = await asyncio.gather(*(check_backend(e, timeout) for e in engines))
    return HealthReport.of(results, checked_at)


async def check_backend(engine: Leases, timeout: float | None = None) -> BackendHealth:
    """One backend's health; see the module docstring for the rules."""
    monitor = engine.monitor
    bound = monitor.options.health_timeout if timeout is None else timeout
    # Taken before the ping, so that the ping's own connection is not counted as in use.
    st = monitor.statistics()
    pool, state = st.pool, st.state
    facts: dict[str, Any] = {
        "name": st.name,
        "driver": monitor.backend.dsn.backend,
        "state": state,
        "time_in_state": max(time.monotonic() - monitor.state_since, 0.0),
        "pool_size": pool.size,
        "idle": pool.idle,
        "in_use": pool.in_use,
        "min_size": pool.min_size,
        "max_size": pool.max_size,
        "waiting": st.waiting,
        "reconnects": st.reconnects,
    }
    last = monitor.gate.last_error
    last_error = None if last is None else describe(last)
    if state is not State.CONNECTED:
        why = {
            State.CONNECTING: "connecting for the first time",
            State.RECONNECTING: (
                f"reconnecting ({monitor.attempts} attempt{'' if monitor.attempts == 1 else 's'} "
                "failed so far)"
            ),
            State.FAILED: "failed; probing slowly",
            State.CLOSED: "closed",
        }[state]
        return BackendHealth(
            **facts,
            status=HealthStatus.FAIL,
            latency=None,
            last_error=last_error,
            output=f"not connected: {why}" + (f": {last_error}" if last_error else ""),
        )
    status, latency, error, output, facts["role"] = await _ping(engine, bound)
    # A failed ping may have just started a reconnect: show the state as it is now.
    facts["state"] = monitor.state
    facts["time_in_state"] = max(time.monotonic() - monitor.state_since, 0.0)
    return BackendHealth(
        **facts,
        status=status,
        latency=latency,
        last_error=error or last_error,
        output=output,
    )


async def _ping(
    engine: Leases, bound: float
) -> tuple[HealthStatus, float | None, str | None, str | None, str | None]:
    """``(status, latency, error, output, role)`` of one ``SELECT 1`` bounded by ``bound``
    seconds, and of the node's role where the adapter can tell (``node_role``).

    Straight from the pool, not through the gate (the probe reports the state as it is, it
    does not wait for it to change), with the engine's own rules for a failed statement and
    for giving the connection back."""
    monitor = engine.monitor
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound
    generation = monitor.generation
    stage = "acquire"
    try:
        # The hard bound: whatever the adapter does with its own timeouts, the check ends.
        async with asyncio.timeout_at(deadline):
            cm = monitor.backend.acquire(bound)
            conn = await cm.__aenter__()
            stage = "ping"
            try:
                started = time.perf_counter()
                await conn.fetchval(PING, timeout=max(deadline - loop.time(), 0.001))
                latency = time.perf_counter() - started
                stage = "role check"
                role, fits = await _role(monitor.backend, conn, deadline - loop.time())
                if not fits:
                    # The node no longer takes what the DSN asks for (a fenced or demoted
                    # primary): retire the pool and let the supervisor find the right node.
                    monitor.backend.discard(conn)
                    await monitor.backend.refresh()
                    wanted = monitor.backend.dsn.options.get("target_session_attrs")
                    monitor.report_lost(
                        generation, ConnectionError(f"wrong node: {role}"), "health"
                    )
                    monitor.release_later(cm.__aexit__(None, None, None))
                    why = f"the node is {role}; the DSN asks for target_session_attrs={wanted}"
                    return HealthStatus.FAIL, latency, None, why, role
            except BaseException as exc:
                if isinstance(exc, Exception):
                    _safely(engine.classify_sent, exc, conn)  # a lost one is discarded
                else:
                    monitor.backend.discard(conn)  # cut off mid-statement: state unknown
                # In the background: the driver may wait for its cancel request.
                monitor.release_later(cm.__aexit__(type(exc), exc, exc.__traceback__))
                raise
        # Waited for (bounded by what is left of the check) so that the pool's figures are
        # exact for whoever looks next.
        await engine.release(cm, generation, "health", deadline)
        return HealthStatus.PASS, latency, None, None, role
    except TimeoutError as exc:
        if stage == "ping":
            # The server did not answer a trivial query: slow, or a half-open socket. Let the
            # supervisor check in the background, as for any statement timeout.
            monitor.report_suspect(generation, exc, "health")
            output = f"SELECT 1 did not answer within {bound:g}s"
        else:
            pool = monitor.statistics().pool
            output = (
                f"no connection from the pool within {bound:g}s ({pool.in_use} of "
                f"{pool.max_size} in use: pool exhausted, or the server is slow to accept)"
            )
        return HealthStatus.WARN, None, None, output, None
    except Exception as exc:
        text = describe(exc)
        if stage == "acquire" and _connect_lost(monitor, exc):
            # The pool could not reach the server: the readiness probe may be the first to
            # notice an outage on an idle service, so the supervisor hears of it now.
            monitor.report_lost(generation, exc, "health")
        elif stage == "ping" and _kind(monitor, exc) is ErrorKind.CONNECTION:
            monitor.report_lost(generation, exc, "health")
        # The supervisor checks the server now: report its verdict (bounded by the check).
        await monitor.settled(deadline)
        return HealthStatus.FAIL, None, text, f"{stage} failed: {text}", None


async def _role(backend: Any, conn: Any, bound: float) -> tuple[str | None, bool]:
    """The node's role and whether it fits the DSN (``None, True`` where none is known)."""
    ask = getattr(backend, "node_role", None)
    if ask is None:
        return None, True
    role, fits = await ask(conn, max(bound, 0.001))
    return str(role), bool(fits)


async def _wrong_node(monitor: Monitor, conn: Any, role: str | None, generation: int) -> str:
    """The node no longer takes what the DSN asks for (a fenced or demoted primary): retire
    the pool and let the supervisor find the right node; returns why the check fails."""
    backend = monitor.backend
    backend.discard(conn)
    await backend.refresh()
    monitor.report_lost(generation, ConnectionError(f"wrong node: {role}"), "health")
    wanted = backend.dsn.options.get("target_session_attrs")
    return f"the node is {role}; the DSN asks for target_session_attrs={wanted}"


def _safely(classify: Any, exc: Exception, conn: Any) -> None:
    try:
        classify(exc, conn)
    except Exception:
        return


def _kind(monitor: Monitor, exc: BaseException) -> ErrorKind:
    try:
        return monitor.backend.classify(exc)
    except Exception:
        return ErrorKind.QUERY


def _connect_lost(monitor: Monitor, exc: Exception) -> bool:
    try:
        kind = monitor.backend.classify_connect(exc)
    except Exception:
        return False
    return kind is ErrorKind.CONNECTION or kind is ErrorKind.PERMANENT
