"""Reconnect storm: how hard resilientdb knocks on a database that is coming back.

Two shapes, each through a 3 s restart of the shared PostgreSQL behind one FaultProxy:

- ``callers``: 1,000 callers on one supervisor (pool of 10), each calling ``SELECT 1`` and
  pausing up to 1 s; during the outage they all wait at the gate.
- ``fleet``: 100 supervisors (``min_size=1, max_size=2``: a fleet of app instances), each
  with one caller calling ``SELECT 1`` every 100 ms.

Each shape runs with ``Backoff(jitter=0)`` and with the default backoff (±20 % jitter), in
alternating order. The proxy's counters are sampled every 20 ms: connection attempts per
100 ms, and its open client connections (the peak is the most connections the database saw
at once). Attempts are bounded by backoff steps per supervisor: about 7 in 3 s (50 ms
doubling, capped at 1 s), whatever the number of callers. Between attempts each supervisor
knocks on the port (a bare TCP connect, no handshake, every 25 ms) to reconnect as soon as
the server is back: the proxy sees those too; they are counted apart (``knocks``) and left
out of the attempts.

Run alone: ``python -m benchmarks.storm [--quick]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from benchmarks import _servers
from benchmarks._common import Settings, now, parser, quiet_logs, settings, write_json
from resilientdb import Backoff, State, Supervisor, events
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy

SAMPLE = 0.02
BUCKET = 0.1
VARIANTS = {"jitter 0": Backoff(jitter=0.0), "default (jitter 0.2)": Backoff()}


async def _caller(
    sup: Supervisor, stop: asyncio.Event, pause: Callable[[], float], errors: Counter[str]
) -> None:
    while not stop.is_set():
        try:
            await sup.db.fetchval("SELECT 1")
        except Exception as exc:
            errors[type(exc).__name__] += 1
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pause()):
                await stop.wait()


def _knocks(sups: list[Supervisor]) -> int:
    """TCP knocks made by the supervisors' monitors (``resilientdb._reach``): the proxy
    counts them as connections too, but they carry no handshake."""
    return sum(m.reach.knocks for sup in sups for m in sup._monitors.values())


async def _sample(
    proxy: FaultProxy,
    stop: asyncio.Event,
    out: list[tuple[float, int, int]],
    knocks: Callable[[], int],
    knocked: list[int],
) -> None:
    while not stop.is_set():
        st = proxy.stats
        k = knocks()
        # Connection attempts = the proxy's accepted connections less the knocks: handshakes.
        out.append((now(), st.connection_attempts - k, st.active_connections))
        knocked.append(k)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SAMPLE):
                await stop.wait()


async def run_one(shape: str, backoff: Backoff, s: Settings) -> dict[str, Any]:
    server = await _servers.postgres()
    n_sup = s.pick(100, 5) if shape == "fleet" else 1
    callers = s.pick(1000, 50) if shape == "callers" else n_sup
    down, warm, after = s.pick(3.0, 0.2), s.pick(1.0, 0.2), s.pick(4.0, 0.4)
    errors: Counter[str] = Counter()
    attempts_per_sup: list[int] = []
    samples: list[tuple[float, int, int]] = []
    knocked: list[int] = []
    back: list[float] = []  # wall-clock times of the Reconnected events
    stop, stop_sampling = asyncio.Event(), asyncio.Event()
    async with FaultProxy(server.host, server.port) as proxy:
        dsn = with_host(parse_dsn(server.dsn()), proxy.host, proxy.port)
        size = {"min_size": 1, "max_size": 2} if shape == "fleet" else {"max_size": 10}
        sups = [
            Supervisor(dsn, backoff=backoff, connect_timeout=2.0, memory_watchdog=False, **size)
            for _ in range(n_sup)
        ]
        for sup in sups:
            sup.on(events.Reconnected, lambda e: attempts_per_sup.append(e.attempts))
            sup.on(events.Reconnected, lambda e: back.append(e.time))
        try:
            await asyncio.gather(*(sup.start() for sup in sups))
            await asyncio.gather(*(sup.wait_until_connected(timeout=30) for sup in sups))
            sampler = asyncio.create_task(
                _sample(proxy, stop_sampling, samples, lambda: _knocks(sups), knocked)
            )
            rng = random.Random()
            pause = (lambda: rng.uniform(0, 1.0)) if shape == "callers" else (lambda: 0.1)
            tasks = [
                asyncio.create_task(_caller(sups[i % n_sup], stop, pause, errors))
                for i in range(callers)
            ]
            await asyncio.sleep(warm)
            t_stop = now()
            await asyncio.to_thread(server.stop, "fast")
            poll = asyncio.create_task(_servers.accepting_again(server, 60))
            await asyncio.sleep(down)
            await asyncio.to_thread(server.start)
            t_up = await poll
            t_all = await _all_connected(sups, 30)
            await asyncio.sleep(max(0.0, after - (now() - t_up)))
            stop.set()
            async with asyncio.timeout(40):
                await asyncio.gather(*tasks)
            stop_sampling.set()
            await sampler
        finally:
            stop.set()
            stop_sampling.set()
            async with asyncio.timeout(60):
                await asyncio.gather(*(sup.aclose() for sup in sups))
    # The outage, for counting attempts, ends when the server accepts again or when every
    # supervisor is back, whichever comes first: a supervisor back before the benchmark's own
    # poll sees the server (it knocks) refills its pool then, and that is not the outage.
    t_end = t_up
    if len(back) >= n_sup:
        t_end = min(t_up, max(back) - (time.time() - now()))
    summary = _summary(
        samples, t_stop, t_up, t_all, n_sup, callers, errors, attempts_per_sup, t_end
    )
    summary["pool_max_size"] = size["max_size"]
    summary["knocks"] = knocked[-1] - knocked[0] if knocked else 0
    return summary


async def _all_connected(sups: list[Supervisor], limit: float) -> float:
    """The moment every supervisor is CONNECTED again (polled every 10 ms, bounded)."""
    deadline = now() + limit
    while now() < deadline:
        if all(sup.state is State.CONNECTED for sup in sups):
            return now()
        await asyncio.sleep(0.01)
    return float("nan")


def _summary(
    samples: list[tuple[float, int, int]],
    t_stop: float,
    t_up: float,
    t_all: float,
    n_sup: int,
    callers: int,
    errors: Counter[str],
    attempts_per_sup: list[int],
    t_end: float,
) -> dict[str, Any]:
    def attempts_at(t: float) -> int:
        return max((a for ts, a, _ in samples if ts <= t), default=samples[0][1])

    base = attempts_at(t_stop)
    buckets: Counter[int] = Counter()
    prev = base
    for ts, attempts, _ in samples:
        if ts >= t_stop:
            buckets[int((ts - t_stop) / BUCKET)] += attempts - prev
            prev = attempts
    n = max(buckets, default=0) + 1
    during = attempts_at(t_end) - base
    after = samples[-1][1] - attempts_at(t_end)
    before_peak = max((c for ts, _, c in samples if ts < t_stop), default=0)
    return {
        "supervisors": n_sup,
        "callers": callers,
        "outage_s": round(t_up - t_stop, 3),
        "attempts_during_outage": during,
        "attempts_after_up": after,
        "attempts_per_supervisor": round(during / n_sup, 2),
        "reconnected_attempts_max": max(attempts_per_sup, default=0),
        "max_attempts_per_100ms": max(buckets.values(), default=0),
        # After the first second: the burst of the first probes (sent at once, on detection,
        # so jitter has nothing to spread) is over; what is left is the backoff's doing.
        "max_attempts_per_100ms_after_1s": max(
            (c for i, c in buckets.items() if i * BUCKET >= 1.0), default=0
        ),
        "peak_connections_before": before_peak,
        "peak_connections_after_up": max((c for ts, _, c in samples if ts >= t_up), default=0),
        "all_connected_after_up_s": round(t_all - t_up, 3),
        "caller_errors": dict(errors),
        "series": {
            "t": [round(i * BUCKET, 2) for i in range(n)],
            "attempts_per_100ms": [buckets[i] for i in range(n)],
        },
    }


async def run(s: Settings) -> dict[str, Any]:
    results: dict[str, Any] = {"shapes": {}}
    with quiet_logs():
        for i, shape in enumerate(("callers", "fleet")):
            names = list(VARIANTS)
            if i % 2:
                names.reverse()
            by_variant: dict[str, Any] = {}
            for name in names:
                print(f"storm: {shape} / {name}", flush=True)
                by_variant[name] = await run_one(shape, VARIANTS[name], s)
            results["shapes"][shape] = {name: by_variant[name] for name in VARIANTS}
    write_json("storm", results, s.out)
    plot(results, s)
    return results


def plot(results: dict[str, Any], s: Settings) -> None:
    from benchmarks._common import pyplot

    plt = pyplot()
    shapes = results["shapes"]
    fig, axes = plt.subplots(len(shapes), 1, figsize=(9, 3.4 * len(shapes)))
    for ax, (shape, by_variant) in zip(axes, shapes.items(), strict=True):
        first = next(iter(by_variant.values()))
        for name, r in by_variant.items():
            ax.step(r["series"]["t"], r["series"]["attempts_per_100ms"], where="post", label=name)
        ax.axvspan(0, first["outage_s"], color="red", alpha=0.12, label="server down")
        ax.set_title(
            f"{shape}: {first['supervisors']} supervisor(s), {first['callers']} callers",
            fontsize=10,
        )
        ax.set_ylabel("connection attempts / 100 ms")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[-1].set_xlabel("seconds since the server stopped")
    fig.tight_layout()
    s.out.mkdir(parents=True, exist_ok=True)
    fig.savefig(s.out / "storm.png", dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    s = settings(parser(__doc__).parse_args(argv))
    try:
        results = asyncio.run(run(s))
    finally:
        _servers.cleanup()
    from benchmarks.report import storm_section

    print(storm_section(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
