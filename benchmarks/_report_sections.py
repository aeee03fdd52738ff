"""The sections of RESULTS.md, one per benchmark, and the targets checked against the data."""

from __future__ import annotations

from typing import Any

BACKEND_NAMES = {"postgres": "PostgreSQL", "mariadb": "MariaDB", "sqlite": "SQLite"}
RESTART_SCENARIO = "restart"
IDEMPOTENT = "resilientdb, idempotent writes"


def _cases(backend: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in backend.items() if isinstance(v, dict) and "ops_per_s" in v}


def overhead_section(data: dict[str, Any]) -> str:
    lines = [
        "## 1. Overhead",
        "",
        f"{data['rounds']} interleaved rounds of {data['slice_s']} s per contender; pools of "
        "10 connections (SQLite: 4). Time ratio = raw ops/s / library ops/s, median over "
        "rounds (1.05 = 5 % slower than the raw driver). p50 / p99: latency of one call.",
    ]
    for key, title in BACKEND_NAMES.items():
        backend = data.get(key)
        if not backend:
            continue
        lines += [
            "",
            f"### {title}",
            "",
            "| query | tasks | library | ops/s | p50 (us) | p99 (us) | time ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for case, r in _cases(backend).items():
            query, tasks = case.rsplit(" @", 1)
            for name in r["ops_per_s"]:
                ratio = r["time_ratio"][name]
                shown = f"**{ratio:.3f}**" if name == "resilientdb" else f"{ratio:.3f}"
                lines.append(
                    f"| {query} | {tasks} | {name} | {r['ops_per_s'][name]:,} "
                    f"| {r['p50_us'][name]:,} | {r['p99_us'][name]:,} | {shown} |"
                )
    gate = data.get("gate")
    if gate:
        lines += [
            "",
            "### The gate alone (fake backend, no I/O)",
            "",
            f"Median of {gate['rounds']} rounds of {gate['calls_per_round']:,} sequential "
            "`fetchval` calls.",
            "",
            "| path | wall ns / call | CPU ns / call |",
            "|---|---|---|",
        ]
        for name, ns in gate["wall_ns_per_call"].items():
            lines.append(f"| {name} | {ns:,} | {gate['cpu_ns_per_call'][name]:,} |")
        lines += [
            "",
            f"resilientdb's own work per call (gate, replay bookkeeping, acquire wrapper): "
            f"**{gate['gate_ns']:,} ns** over the pool + connection path, "
            f"{gate['supervisor_ns']:,} ns over the bare connection call.",
        ]
    resolve = data.get("resolve")
    if resolve:
        lines += [
            "",
            "### Resolving a lost COMMIT: the cost of learning the transaction id (PostgreSQL)",
            "",
            "A transfer through `run_in_transaction`, resolving against plain, alternated on "
            "one supervisor (target 1.05).",
            "",
            "| case | time ratio | extra per transaction |",
            "|---|---|---|",
        ]
        for case, r in resolve.items():
            if not isinstance(r, dict):
                continue  # the target and the method, not a case
            lines.append(f"| {case} | {r['time_ratio']:.3f} | {r['extra_us']} us |")
    bulk = data.get("bulkload")
    if bulk:
        rate = bulk["rows_per_s"]
        lines += [
            "",
            "### COPY bulk load (PostgreSQL)",
            "",
            f"`db.copy_records_to_table` against asyncpg's pool, {bulk['rows']:,} rows a load, "
            f"median of {bulk['rounds']} interleaved rounds: asyncpg {rate['asyncpg pool']:,} "
            f"rows/s, resilientdb {rate['resilientdb']:,} rows/s, time ratio "
            f"**{bulk['time_ratio']:.3f}**.",
        ]
    profiles = [
        (BACKEND_NAMES[key], case, r["profile"])
        for key in BACKEND_NAMES
        for case, r in _cases(data.get(key) or {}).items()
        if "profile" in r
    ]
    if profiles:
        lines += ["", "### Profiles where the overhead target was missed", ""]
        for title, case, by_lib in profiles:
            for lib, text in by_lib.items():
                lines += [f"{title}, {case}, {lib} (cProfile, top entries by own time):", ""]
                lines += ["```", text, "```", ""]
    return "\n".join(lines).rstrip()


def outage_section(data: dict[str, Any]) -> str:
    lines = [
        "## 2. Outages",
        "",
        f"The same read/write workload through each fault: {data.get('workers', 16)} "
        f"workers, each starting one operation every {data.get('pace_ms', 20)} ms at most "
        "(3 reads of `SELECT 1`, then 1 write), each "
        f"library alone behind its own FaultProxy, pools of {data['pool_size']}; no "
        "application-level retries. Writes are plain `INSERT`s of a client-generated id "
        "into a table without a unique constraint; the second resilientdb line writes "
        "`INSERT ... SELECT ... WHERE NOT EXISTS (same id)` marked `idempotent=True`, which "
        "resilientdb may replay. errors = exceptions the application saw; lost = writes "
        "reported successful but missing; dup = ids stored twice; unknown applied / not = "
        "writes that raised and were / were not applied; recovery = from the server accepting "
        "connections again to the first successful operation; stall = longest gap between two "
        "successes; attempts = connections the proxy accepted from the fault on, less "
        "resilientdb's knocks (a bare TCP connect and the protocol's first exchange between "
        "its reconnect attempts; their number in brackets). Plot: "
        "`results/outages.png`.",
        "",
        "Timeouts: " + "; ".join(f"{lib}: {t}" for lib, t in data["timeouts"].items()) + ".",
    ]
    for scenario, by_lib in data["scenarios"].items():
        outage = max(r["outage_s"] for r in by_lib.values())
        lines += [
            "",
            f"### {scenario} ({outage:.1f} s until reachable again)"
            if outage > 0.01
            else f"### {scenario}",
            "",
            "| library | ok ops | errors (read / write) | error types | lost | dup "
            "| unknown applied / not | recovery (ms) | stall (ms) | attempts |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for lib, r in by_lib.items():
            types = ", ".join(f"{k} {v}" for k, v in sorted(r["error_types"].items())) or "-"
            rec = "never" if r["recovery_s"] is None else f"{r['recovery_s'] * 1000:,.0f}"
            lines.append(
                f"| {lib} | {r['ops_ok']:,} | {r['errors']} ({r['errors_read']} / "
                f"{r['errors_write']}) | {types} | {r['lost']} | {r['duplicates']} "
                f"| {r['unknown_applied']} / {r['unknown_not_applied']} | {rec} "
                f"| {r['stall_s'] * 1000:,.0f} | {r['connection_attempts']}"
                + (f" ({r['knocks']} knocks) |" if r.get("knocks") else " |")
            )
        for lib, r in by_lib.items():
            if lib.startswith("resilientdb"):
                for kind, text in r.get("error_examples", {}).items():
                    lines.append(f"\n{lib}, {kind}: _{text}_")
    return "\n".join(lines)


def storm_section(data: dict[str, Any]) -> str:
    lines = [
        "## 3. Reconnect storm",
        "",
        "A 3 s restart of the one PostgreSQL behind one FaultProxy. callers: 1,000 callers on "
        "one supervisor (pool of 10); fleet: 100 supervisors (min_size=1, max_size=2), one "
        "caller each. attempts = connections the proxy accepted, less the supervisors' "
        "knocks (bare TCP connects and the protocol's first exchange between attempts, no "
        "handshake; their number over the run in brackets) (outage: from the stop to "
        "the server accepting again, or to every supervisor being back if that came "
        "first; after: from then to the end, the pools refilling included); per "
        "supervisor = outage attempts / supervisors; max / 100 ms: the "
        "busiest 100 ms, and in brackets the busiest from 1 s after the stop on (each "
        "supervisor's first probe goes at once, on detection, so jitter shows from the second "
        "step on); peak = most open proxy connections at once (sampled every 20 ms); all "
        "connected = from the server accepting again until every supervisor is connected. "
        "Plot: `results/storm.png`.",
        "",
        "| shape | backoff | outage (s) | attempts outage / after | outage attempts per "
        "supervisor | max / 100 ms (from 1 s) | peak conns before / after | all connected "
        "(ms) | caller errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for shape, by_variant in data["shapes"].items():
        for name, r in by_variant.items():
            errs = ", ".join(f"{k} {v}" for k, v in r["caller_errors"].items()) or "0"
            lines.append(
                f"| {shape} ({r['supervisors']} x, {r['callers']:,} callers) | {name} "
                f"| {r['outage_s']:.1f} | {r['attempts_during_outage']} / "
                f"{r['attempts_after_up']}"
                + (f" ({r['knocks']:,} knocks)" if r.get("knocks") else "")
                + f" | {r['attempts_per_supervisor']} "
                f"| {r['max_attempts_per_100ms']} ({r['max_attempts_per_100ms_after_1s']}) "
                f"| {r['peak_connections_before']} / {r['peak_connections_after_up']} "
                f"| {r['all_connected_after_up_s'] * 1000:,.0f} | {errs} |"
            )
    return "\n".join(lines)


def memory_section(data: dict[str, Any]) -> str:
    w, rss, tr = data["waiters"], data["soak_rss"], data["soak_traced"]
    warm, cycles = data["warm_cycles"], rss["cycles"]
    lines = [
        "## 4. Memory and soak",
        "",
        "On the fake backend (no driver buffers): resilientdb's own memory.",
        "",
        f"### {w['callers']:,} callers waiting at the gate",
        "",
        "| measure | value |",
        "|---|---|",
        f"| resident memory before / waiting / after release (MB) | {w['rss_before_mb']} / "
        f"{w['rss_waiting_mb']} / {w['rss_after_mb']} |",
        f"| resident memory per waiting caller | {w['rss_per_caller_bytes']:,} bytes |",
        f"| allocated per waiting caller (tracemalloc) | {w['traced_per_caller_bytes']:,} bytes |",
        f"| of which a bare task waiting on an Event | {w['traced_per_bare_task_bytes']:,} bytes |",
        f"| resilientdb's share per waiting caller | {w['resilientdb_per_caller_bytes']:,} bytes |",
        f"| tasks alive before / waiting / after | {w['tasks_before']} / {w['tasks_waiting']:,} "
        f"/ {w['tasks_after']} |",
        f"| calls that failed after the database came back | {w['failed_calls']} |",
        "",
        f"### {cycles:,} reconnect cycles",
        "",
        "| measure | resident (psutil) | allocated (tracemalloc) |",
        "|---|---|---|",
        f"| after {warm:,} cycles (MB) | {rss[f'rss_at_{warm}_mb']} "
        f"| {tr[f'traced_at_{warm}_mb']} (from here on) |",
        f"| after {cycles:,} cycles (MB) | {rss[f'rss_at_{cycles}_mb']} "
        f"| {tr[f'traced_at_{cycles}_mb']} |",
        f"| growth (MB) | **{rss['growth_mb']}** | **{tr['growth_mb']}** |",
        f"| reconnects / cycles without one | {rss['reconnects']:,} / {rss['missed_cycles']} "
        f"| {tr['reconnects']:,} / {tr['missed_cycles']} |",
        f"| tasks alive before / after | {rss['tasks_before']} / {rss['tasks_after']} "
        f"| {tr['tasks_before']} / {tr['tasks_after']} |",
        f"| time (s) | {rss['seconds']} | {tr['seconds']} |",
    ]
    if tr["top_growth"]:
        lines += [
            "",
            f"Lines that grew most under tracemalloc (cycle {warm:,} to the end):",
            "",
            "```",
        ]
        lines += tr["top_growth"]
        lines += ["```"]
    return "\n".join(lines)


def ledger_section(data: dict[str, Any]) -> str:
    """The ledger run (``benchmarks/ledger.py``): money moved under a schedule of faults."""
    lines = [
        "## 5. Ledger under fire",
        "",
        "`benchmarks/ledger.py`: workers move money and insert rows while faults fire (network "
        "databases: proxy resets, partitions, restarts, killed connections, lock contention; "
        "SQLite: another process holding the write lock, connections closed underneath, the "
        "file moved away and back); then the database is reconciled against what every "
        "client saw.",
    ]
    for backend, run in data.items():
        lines += [
            "",
            f"### {backend} ({len(run.get('faults', {}))} faults fired)",
            "",
            "| operation | ok | outcome unknown | unavailable | lost | duplicated |",
            "|---|---|---|---|---|---|",
        ]
        for op, c in run.get("kind_counts", {}).items():
            lines.append(
                f"| {op} | {c['ok']:,} | {c['unknown']} | {c['unavailable']} | {c['lost']} "
                f"| {c['duplicated']} |"
            )
        lines += [
            "",
            f"Balance {run.get('balance_total')} (expected {run.get('expected_total')}); "
            f"replays {run.get('replays')}; unexpected errors {len(run.get('errors') or {})}; "
            f"clean: {'yes' if run.get('clean') else '**no**'}.",
        ]
    return "\n".join(lines)


def verdicts(data: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """(target, met, what was measured) for every target the data covers."""
    out: list[tuple[str, bool, str]] = []
    overhead = data.get("overhead")
    if overhead:
        for key, title in BACKEND_NAMES.items():
            cases = _cases(overhead.get(key) or {})
            if not cases:
                continue
            limit = next(iter(cases.values()))["target"]
            worst = max(r["time_ratio"]["resilientdb"] for r in cases.values())
            each = ", ".join(f"{c}: {r['time_ratio']['resilientdb']:.3f}" for c, r in cases.items())
            out.append((f"overhead ratio <= {limit:.2f} on {title}", worst <= limit, each))
        pg = _cases(overhead.get("postgres") or {})
        if pg:
            slower = [
                c
                for c, r in pg.items()
                if r["ops_per_s"]["resilientdb"] <= r["ops_per_s"].get("SQLAlchemy pre-ping", 0)
            ]
            speedup = ", ".join(
                f"{c}: {r['ops_per_s']['resilientdb'] / r['ops_per_s']['SQLAlchemy pre-ping']:.2f}x"
                for c, r in pg.items()
            )
            out.append(("faster than SQLAlchemy with pre-ping", not slower, speedup))
    out += _outage_verdicts(data.get("outages"))
    out += _storm_verdicts(data.get("storm"))
    memory = data.get("memory")
    if memory:
        limit = memory["growth_limit_mb"]
        rss, tr = memory["soak_rss"], memory["soak_traced"]
        growth = max(rss["growth_mb"], tr["growth_mb"])
        out.append(
            (
                f"memory growth across the soak < {limit:g} MB",
                growth < limit,
                f"{rss['cycles']:,} cycles: resident {rss['growth_mb']} MB, "
                f"allocated {tr['growth_mb']} MB after cycle {memory['warm_cycles']:,}; "
                f"tasks {rss['tasks_before']} before, {rss['tasks_after']} after",
            )
        )
    return out


def _outage_verdicts(data: dict[str, Any] | None) -> list[tuple[str, bool, str]]:
    if not data:
        return []
    restart = data["scenarios"].get(RESTART_SCENARIO, {})
    out: list[tuple[str, bool, str]] = []
    plain, idem = restart.get("resilientdb"), restart.get(IDEMPOTENT)
    if plain and idem:
        counts = ", ".join(f"{lib} {r['errors']}" for lib, r in restart.items())
        out.append(
            (
                "zero errors seen by the application through a restart shorter than the gate "
                "timeout: reads, and writes marked idempotent",
                plain["errors_read"] == 0 and idem["errors"] == 0,
                f"resilientdb read errors {plain['errors_read']}; with idempotent writes "
                f"{idem['errors']} errors in all. All errors, every library: {counts}",
            )
        )
        types = ", ".join(f"{k} {v}" for k, v in plain["error_types"].items()) or "none"
        out.append(
            (
                "the same for plain INSERTs (not marked idempotent)",
                plain["errors"] == 0,
                f"{plain['errors_write']} write errors ({types}); of those applied: "
                f"{plain['unknown_applied']}",
            )
        )
    bad = [
        f"{scenario}/{lib}: lost {r['lost']}, dup {r['duplicates']}"
        for scenario, by_lib in data["scenarios"].items()
        for lib, r in by_lib.items()
        if lib.startswith("resilientdb") and (r["lost"] or r["duplicates"])
    ]
    out.append(
        (
            "no write lost or applied twice by resilientdb (every fault)",
            not bad,
            "; ".join(bad) or "0 lost, 0 duplicated",
        )
    )
    return out


def backoff_steps(seconds: float, initial: float = 0.05, maximum: float = 1.0) -> int:
    """Probes a supervisor makes in ``seconds`` at most: delays as short as jitter allows."""
    steps, elapsed, delay = 1, 0.0, initial  # the first probe goes at once
    while True:
        elapsed += delay * 0.8
        if elapsed > seconds:
            return steps
        steps += 1
        delay = min(delay * 2, maximum)


def _storm_verdicts(data: dict[str, Any] | None) -> list[tuple[str, bool, str]]:
    if not data:
        return []
    ok, parts = True, []
    for shape, by_variant in data["shapes"].items():
        for name, r in by_variant.items():
            # Callers already past the gate when the server died may each open one
            # connection before the first failure closes the gate: at most the pool's size.
            bound = backoff_steps(r["outage_s"]) + r["pool_max_size"]
            ok = ok and r["attempts_per_supervisor"] <= bound
            parts.append(
                f"{shape} ({r['supervisors']} sup., {r['callers']:,} callers), {name}: "
                f"{r['attempts_per_supervisor']} per supervisor (bound {bound})"
            )
    return [
        (
            "connection attempts during an outage bounded by backoff steps per supervisor, "
            "not by callers",
            ok,
            "; ".join(parts),
        )
    ]
