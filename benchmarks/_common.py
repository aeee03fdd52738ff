"""Shared helpers: throwaway servers, interleaved timing, result files."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
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


def write_json(name: str, data: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path
