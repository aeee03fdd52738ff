"""Streaming memory: ``db.iterate()`` against ``db.fetch()`` over 1,000,000 rows per backend.

Each measurement runs in a fresh Python process (peak RSS only grows within a process): it
connects, warms up with a small read, notes its resident memory, then reads every row of a
1,000,000-row result (an integer and a 40-character text each) either with
``db.fetch()`` or with ``async for row in db.iterate(..., batch=1000)``, touching each row,
and reports the peak resident memory (``ru_maxrss``) minus the warm figure: the growth the
read cost. The order of the two alternates per round. PostgreSQL and MariaDB are throwaway
servers (``benchmarks/_servers.py``); SQLite reads a recursive CTE from a temporary file.

Run alone: ``python -m benchmarks.streaming [--quick] [--rounds N] [--rows N]``.
"""

from __future__ import annotations

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks import _servers
from benchmarks._common import parser, settings, write_json

MB = 1024 * 1024
PAD = 40


def query(family: str, rows: int) -> str:
    """``rows`` rows of (x, pad) that need no table."""
    if family == "postgresql":
        return f"SELECT g AS x, repeat('x', {PAD}) AS pad FROM generate_series(1, {rows}) g"
    if family == "mysql":
        return f"SELECT seq AS x, REPEAT('x', {PAD}) AS pad FROM seq_1_to_{rows}"
    return (
        f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {rows}) "
        f"SELECT x, substr(hex(zeroblob({PAD})), 1, {PAD}) AS pad FROM c"
    )


async def _measure(dsn: str, family: str, mode: str, rows: int) -> dict[str, Any]:
    """In the child process: one read of ``rows`` rows, the RSS growth it cost."""
    from resilientdb import Supervisor

    sql = query(family, rows)
    async with Supervisor(dsn, min_size=1, max_size=1, command_timeout=600) as sup:
        db = sup.db
        async for _ in db.iterate(query(family, 2000), batch=1000):
            pass
        await db.fetch(query(family, 2000))
        warm = psutil.Process().memory_info().rss
        started = time.perf_counter()
        count = total = 0
        if mode == "fetch":
            result = await db.fetch(sql)
            for row in result:
                count += 1
                total += row[0]
            del result
        else:
            async for row in db.iterate(sql, batch=1000):
                count += 1
                total += row[0]
        elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    assert count == rows and total == rows * (rows + 1) // 2, (count, total)
    return {"growth_mb": max(peak - warm, 0) / MB, "seconds": elapsed, "rows": count}


def _child(argv: list[str]) -> int:
    dsn, family, mode, rows = argv
    print(json.dumps(asyncio.run(_measure(dsn, family, mode, int(rows)))))
    return 0


def _run_child(dsn: str, family: str, mode: str, rows: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.streaming", "--child", dsn, family, mode, str(rows)],
        check=True,
        capture_output=True,
        text=True,
        timeout=900,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def run(s: Any, rounds: int = 2, rows: int | None = None) -> dict[str, Any]:
    """Every backend, ``rounds`` rounds of fetch and iterate (alternating order)."""
    n = rows or s.pick(1_000_000, 20_000)
    rounds = s.pick(rounds, 1)
    pg = await _servers.postgres()
    maria = await _servers.mariadb()
    with tempfile.TemporaryDirectory() as tmp:
        targets = {
            "postgresql": pg.dsn(),
            "mysql": maria.dsn(),
            "sqlite": f"sqlite:///{Path(tmp) / 'stream.db'}",
        }
        results: dict[str, Any] = {"rows": n, "backends": {}}
        print(f"{n:,} rows of (integer, {PAD}-character text); peak RSS growth per read\n")
        print(f"{'backend':<11} {'fetch MB':>9} {'iterate MB':>11} {'ratio':>7} "
              f"{'fetch s':>8} {'iterate s':>10}")  # fmt: skip
        for family, dsn in targets.items():
            got: dict[str, list[dict[str, Any]]] = {"fetch": [], "iterate": []}
            for r in range(rounds):
                order = ["fetch", "iterate"] if r % 2 == 0 else ["iterate", "fetch"]
                for mode in order:
                    got[mode].append(await asyncio.to_thread(_run_child, dsn, family, mode, n))
            fetch_mb = max(g["growth_mb"] for g in got["fetch"])
            iterate_mb = max(g["growth_mb"] for g in got["iterate"])
            fetch_s = min(g["seconds"] for g in got["fetch"])
            iterate_s = min(g["seconds"] for g in got["iterate"])
            # (Growth under 0.1 MB is within the measurement's grain: shown as 0.1.)
            ratio = fetch_mb / max(iterate_mb, 0.1)
            results["backends"][family] = {
                "fetch_growth_mb": round(fetch_mb, 1),
                "iterate_growth_mb": round(iterate_mb, 1),
                "fetch_seconds": round(fetch_s, 2),
                "iterate_seconds": round(iterate_s, 2),
            }
            print(f"{family:<11} {fetch_mb:>9.1f} {iterate_mb:>11.1f} {ratio:>6.0f}x "
                  f"{fetch_s:>8.2f} {iterate_s:>10.2f}", flush=True)  # fmt: skip
    write_json("streaming", results, s.out)
    return results


FLAT_MB = 10.0  # the target: iterating 1,000,000 rows grows the process by less than this


def verdicts(data: dict[str, Any] | None) -> list[tuple[str, bool, str]]:
    """The streaming target for RESULTS.md."""
    if data is None:
        return []
    got = data["backends"]
    ok = bool(got) and all(b["iterate_growth_mb"] < FLAT_MB for b in got.values())
    how = ", ".join(
        f"{name}: {b['iterate_growth_mb']} MB (fetch {b['fetch_growth_mb']} MB)"
        for name, b in got.items()
    )
    return [(f"iterate {data['rows']:,} rows: peak RSS growth < {FLAT_MB:.0f} MB", ok, how)]


def section(data: dict[str, Any]) -> str:
    """The streaming section of RESULTS.md."""
    lines = [
        "## 6. Streaming (`db.iterate`)",
        "",
        f"{data['rows']:,} rows of (integer, {PAD}-character text) read once with `db.fetch()` "
        "and once with `async for row in db.iterate(..., batch=1000)`, each in a fresh process: "
        "peak resident memory minus the figure after warm-up (`python -m benchmarks.streaming`).",
        "",
        "| backend | fetch: growth MB | iterate: growth MB | fetch s | iterate s |",
        "|---|---|---|---|---|",
    ]
    for name, b in data["backends"].items():
        lines.append(
            f"| {name} | {b['fetch_growth_mb']} | {b['iterate_growth_mb']} | "
            f"{b['fetch_seconds']} | {b['iterate_seconds']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=2, help="rounds per backend (default 2)")
    p.add_argument("--rows", type=int, default=None, help="rows per read (default 1,000,000)")
    args = p.parse_args(argv)
    try:
        asyncio.run(run(settings(args), args.rounds, args.rows))
    finally:
        _servers.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
