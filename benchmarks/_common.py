"""Shared helpers: interleaved timing, percentiles, profiles, result files, plots, CLI flags."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import logging
import pstats
import statistics
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"

Op = Callable[[], Awaitable[Any]]


async def throughput(op: Op, concurrency: int, duration: float) -> tuple[float, list[float]]:
    """Operations per second of ``op`` run by ``concurrency`` tasks for ``duration`` seconds,
    and the per-operation latencies (seconds)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        perf = time.perf_counter
        append = latencies.append
        while True:
            t0 = perf()
            if t0 >= stop_at:
                return
            await op()
            append(perf() - t0)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


async def interleaved(
    contenders: Mapping[str, Op],
    baseline: str,
    concurrency: int,
    rounds: int,
    slice_s: float,
) -> dict[str, Any]:
    """Run every contender for ``slice_s`` per round, the order rotated each round so that
    machine noise hits all alike. The ratio of a contender is, per round, baseline ops/s
    divided by its ops/s (a time ratio: 1.05 means 5 % slower than the baseline); the figure
    kept is the median over rounds."""
    for op in contenders.values():  # warm: statement caches, pool connections
        await throughput(op, concurrency, min(0.3, slice_s))
    names = list(contenders)
    per: dict[str, list[float]] = {n: [] for n in names}
    lat: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        if r % 2:
            order.reverse()
        got: dict[str, float] = {}
        for name in order:
            ops, latencies = await throughput(contenders[name], concurrency, slice_s)
            got[name] = ops
            per[name].append(ops)
            lat[name].extend(latencies)
        for name in names:
            ratios[name].append(got[baseline] / got[name] if got[name] else float("inf"))
    return {
        "baseline": baseline,
        "ops_per_s": {n: round(median(v)) for n, v in per.items()},
        "p50_us": {n: round(percentile(v, 50) * 1e6, 1) for n, v in lat.items()},
        "p99_us": {n: round(percentile(v, 99) * 1e6, 1) for n, v in lat.items()},
        "time_ratio": {n: round(median(v), 4) for n, v in ratios.items()},
        "time_ratio_rounds": {n: [round(x, 4) for x in v] for n, v in ratios.items()},
    }


@contextlib.contextmanager
def _thread_profiles(found: list[tuple[threading.Thread, cProfile.Profile]]) -> Iterator[None]:
    """Profile every thread started inside the block (a driver's worker threads: aiosqlite
    runs each statement on one) for its whole life."""
    original = threading.Thread.run

    def run(self: threading.Thread) -> None:
        profiler = cProfile.Profile()
        found.append((self, profiler))
        profiler.enable()
        try:
            original(self)
        finally:
            profiler.disable()

    threading.Thread.run = run  # type: ignore[method-assign]
    try:
        yield
    finally:
        threading.Thread.run = original  # type: ignore[method-assign]


async def profile_top(
    make: Callable[[], Any], method: str, concurrency: int, seconds: float, entries: int = 15
) -> str:
    """cProfile of a fresh client (``make()``) running ``method`` under load, its own worker
    threads included: the top entries by own time (where the time goes)."""
    threads: list[tuple[threading.Thread, cProfile.Profile]] = []
    profiler = cProfile.Profile()
    with _thread_profiles(threads):
        client = make()
        await client.open()
    try:
        profiler.enable()
        try:
            await throughput(getattr(client, method), concurrency, seconds)
        finally:
            profiler.disable()
    finally:
        await client.close()
    # Only threads that have ended (the client's own, closed above) have complete profiles.
    for thread, _ in threads:
        thread.join(timeout=5)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    for thread, thread_profiler in threads:
        if not thread.is_alive():
            stats.add(thread_profiler)
    stats.strip_dirs().sort_stats(pstats.SortKey.TIME).print_stats(entries)
    text = out.getvalue()
    start = text.find("   ncalls")  # keep the table only
    body = (text[start:] if start >= 0 else text).rstrip()
    if threads:
        body = f"(event loop plus {len(threads)} worker thread(s))\n" + body
    return body


def write_json(name: str, data: Any, out: Path | None = None) -> Path:
    directory = out or RESULTS
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")  # insertion order: the tables' order
    return path


def read_json(name: str, out: Path | None = None) -> Any:
    path = (out or RESULTS) / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Keep the event log (thousands of reconnect lines in a storm) off the terminal."""
    names = ("resilientdb", "asyncpg", "asyncio", "psycopg", "psycopg.pool", "sqlalchemy")
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


@dataclass(frozen=True)
class Settings:
    """Flags every benchmark takes: ``--quick`` (a smoke run of a few seconds) and ``--out``."""

    quick: bool
    out: Path

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny run (smoke test), seconds")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for JSON and PNG files")
    return p


def settings(args: argparse.Namespace) -> Settings:
    return Settings(quick=bool(args.quick), out=Path(args.out))


def now() -> float:
    return time.perf_counter()
