"""``resilientdb check``, ``wait`` and ``watch``: a database's health from a shell.

Each builds an ordinary :class:`~resilientdb.Supervisor` with one connection, so what they
report is what a service using resilientdb would see: the same classification of errors, the
same backoff, the same health report.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from .. import BackendStatistics, Supervisor
from ..config import DSN
from ..errors import ConfigurationError, DatabaseUnavailable
from ..health import BackendHealth, HealthReport, HealthStatus
from ._common import (
    EXIT_BAD_INPUT,
    EXIT_FAIL,
    EXIT_OK,
    CLIError,
    describe_config,
    parse_target,
    quiet_options,
    read_only_sqlite,
    say,
)

__all__ = ["check", "wait", "watch"]


def _supervisor(dsn: DSN, **options: Any) -> Supervisor:
    try:
        return Supervisor(read_only_sqlite(dsn), **{**quiet_options(), **options})
    except ConfigurationError as exc:  # a missing driver, an option the adapter refuses
        raise CLIError(describe_config(exc), EXIT_BAD_INPUT) from None


def _only(report: HealthReport) -> BackendHealth:
    return next(iter(report.backends.values()))


def _problem(dsn: DSN, b: BackendHealth) -> str:
    """Why ``b`` is not healthy, in one line that names the (redacted) DSN."""
    if b.state.value != "connected":
        return f"cannot connect to {dsn}: {b.last_error or b.state.value}"
    return f"{dsn}: {b.output or b.status.value}"


async def check(dsn_text: str, *, timeout: float, as_json: bool) -> int:
    """One health check; 0 when it passes, 1 when it does not (a ``warn`` included)."""
    dsn = parse_target(dsn_text)
    sup = _supervisor(dsn, connect_timeout=timeout, health_timeout=timeout)
    try:
        # start() returns after the first connection attempt, whatever its outcome.
        async with asyncio.timeout(timeout * 3 + 1):
            await sup.start()
            report = await sup.health(timeout)
    except TimeoutError:
        raise CLIError(f"no answer from {dsn} within {timeout:g}s") from None
    finally:
        await sup.aclose()
    b = _only(report)
    if as_json:
        say(json.dumps(report.to_dict(), indent=2))
    elif report.status is HealthStatus.PASS:
        latency = "" if b.latency is None else f" in {b.latency * 1000:.1f} ms"
        say(f"pass: {dsn} ({b.driver}) answered SELECT 1{latency}")
    if report.status is HealthStatus.PASS:
        return EXIT_OK
    raise CLIError(_problem(dsn, b))


async def wait(dsn_text: str, *, timeout: float, verbose: bool) -> int:
    """Wait until the database accepts connections (with the supervisor's backoff).

    Waits through errors that look permanent too (a database or user that an init script is
    still creating), probing them every second; gives up after ``timeout`` seconds.
    """
    dsn = parse_target(dsn_text)
    started = time.monotonic()
    # The supervisor's own backoff (50 ms doubling to 1 s); errors that look permanent are
    # probed every second instead of every 5 s: a container's database is often still starting.
    sup = _supervisor(dsn, connect_timeout=max(min(timeout, 5.0), 0.1), failed_probe_interval=1.0)
    # -v shows the supervisor's own log lines: one per failed attempt ("connection attempt
    # N failed ..."), so nothing is added here (that printed every attempt twice).
    del verbose
    try:
        async with asyncio.timeout(timeout + 15):  # start() and close() have their own bounds
            await sup.start()
            remaining = max(timeout - (time.monotonic() - started), 0.001)
            try:
                await sup.wait_until_connected(timeout=remaining)
            except DatabaseUnavailable:
                report = await sup.health(1.0)
                why = _only(report).last_error or _only(report).state.value
                raise CLIError(
                    f"{dsn} did not accept connections within {timeout:g}s: {why}"
                ) from None
    finally:
        await sup.aclose()
    say(f"ready: {dsn} accepts connections (after {time.monotonic() - started:.1f}s)")
    return EXIT_OK


def _watch_line(report: HealthReport, stats: BackendStatistics) -> str:
    b = _only(report)
    ping = "ping    -   " if b.latency is None else f"ping {b.latency * 1000:6.1f} ms"
    line = (
        f"{time.strftime('%H:%M:%S')}  {b.state.value:<12} {b.status.value:<4}  {ping}  "
        f"pool {b.pool_size}/{b.max_size} (idle {b.idle}, in use {b.in_use})  "
        f"waiting {b.waiting}  reconnects {b.reconnects}  "
        f"timeouts {stats.timeouts}"
    )
    if b.status is not HealthStatus.PASS:
        line += f"  | {b.output or b.last_error or ''}"
    return line


async def watch(dsn_text: str, *, interval: float, count: int | None) -> int:
    """A line per ``interval`` seconds (state, ping, pool figures) until Ctrl-C or ``count``.

    Exit status: that of the last check (0 pass, 1 otherwise); Ctrl-C exits 0.
    """
    dsn = parse_target(dsn_text)
    sup = _supervisor(dsn, health_timeout=min(interval, 1.0))
    say(f"watching {dsn} every {interval:g}s (Ctrl-C to stop)")
    status = HealthStatus.FAIL
    try:
        await sup.start()
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        n = 0
        while count is None or n < count:
            report = await sup.health()
            status = report.status
            say(_watch_line(report, sup.db.statistics()))
            n += 1
            if count is not None and n >= count:
                break
            next_at = max(next_at + interval, loop.time())
            await asyncio.sleep(next_at - loop.time())
    finally:
        await sup.aclose()
    return EXIT_OK if status is HealthStatus.PASS else EXIT_FAIL
