"""The demo's figures, computed from the recorded operations and from the database itself.

- *errors seen by the app*: calls that raised, whatever the exception (``OutcomeUnknown``,
  ``DatabaseUnavailable``, a driver error).
- *writes lost*: writes the application was told succeeded whose unique id is not in the
  database. *applied twice*: ids present more than once (the id columns are not unique on
  purpose, so that a double apply cannot hide behind a constraint).
- *recovery* after a fault: from the moment the fault was lifted until reads, writes and
  transactions had each succeeded again after the last error the fault caused (the errors
  between its start and the next fault's). Operations that waited out the fault count as soon
  as they complete.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .faults import FaultRecord
from .workload import ACCOUNTS, INITIAL_BALANCE, KINDS, Op, Written

__all__ = ["Tally", "recovery", "render_faults", "render_summary", "tally"]


@dataclass(frozen=True)
class Tally:
    """One run's figures."""

    label: str
    ok: int
    errors: int
    by_type: Counter[str]
    unknown: int
    unknown_applied: int
    writes_ok: int
    lost: int
    duplicated: int
    failed_applied: int
    balances_ok: bool
    p50: float | None
    p99: float | None
    replays: int | None

    @property
    def clean(self) -> bool:
        """No acknowledged write lost, none applied twice, the balances add up."""
        return not (self.lost or self.duplicated) and self.balances_ok


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; ``None`` without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def tally(label: str, ops: Sequence[Op], written: Written, replays: int | None) -> Tally:
    """Reconcile ``ops`` (what the application was told) with ``written`` (the database)."""

    def applied(op: Op) -> int:
        assert op.op_id is not None
        ids = written.singles if op.kind == "write" else written.journal
        return ids[op.op_id]

    writes = [op for op in ops if op.op_id is not None]
    ok_writes = [op for op in writes if op.outcome == "ok"]
    unknown = [op for op in ops if op.outcome == "unknown"]
    failed = [op for op in writes if op.outcome in ("unavailable", "error")]
    duplicated = sum(1 for ids in (written.singles, written.journal) for n in ids.values() if n > 1)
    expected = dict.fromkeys(range(ACCOUNTS), INITIAL_BALANCE)
    for src, dst, amount in written.transfers:
        expected[src] -= amount
        expected[dst] += amount
    return Tally(
        label=label,
        ok=sum(1 for op in ops if op.outcome == "ok"),
        errors=sum(1 for op in ops if op.outcome != "ok"),
        by_type=Counter(op.error or "?" for op in ops if op.outcome != "ok"),
        unknown=len(unknown),
        unknown_applied=sum(1 for op in unknown if op.op_id is not None and applied(op) > 0),
        writes_ok=len(ok_writes),
        lost=sum(1 for op in ok_writes if applied(op) == 0),
        duplicated=duplicated,
        failed_applied=sum(1 for op in failed if applied(op) > 0),
        balances_ok=written.balances == expected,
        p50=percentile([op.end - op.start for op in ops if op.outcome == "ok"], 0.50),
        p99=percentile([op.end - op.start for op in ops if op.outcome == "ok"], 0.99),
        replays=replays,
    )


def recovery(ops: Sequence[Op], fault: FaultRecord, window_end: float) -> tuple[float | None, int]:
    """(seconds from the fault's lifting to recovery, or None if not within the window;
    errors between the fault's start and ``window_end``)."""
    errors = [op.end for op in ops if op.outcome != "ok" and fault.start <= op.end < window_end]
    anchor = max([fault.end, *errors])
    firsts = []
    for kind in KINDS:
        done = [op.end for op in ops if op.kind == kind and op.outcome == "ok" and op.end >= anchor]
        done = [t for t in done if t < window_end]
        if not done:
            return None, len(errors)
        firsts.append(min(done))
    return max(max(firsts) - fault.end, 0.0), len(errors)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f} ms"


def _types(counter: Counter[str]) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in counter.most_common(4)) or "none"


def render_summary(tallies: Sequence[Tally]) -> list[str]:
    """The summary table (one column per run), then the errors by exception type."""
    rows: list[tuple[str, list[str]]] = [
        ("operations ok", [f"{t.ok:,}" for t in tallies]),
        (
            "replays (automatic, safe)",
            ["-" if t.replays is None else f"{t.replays:,}" for t in tallies],
        ),
        ("outcome unknown (raised)", [_unknown(t) for t in tallies]),
        ("errors seen by the app", [f"{t.errors:,}" for t in tallies]),
        ("writes acknowledged", [f"{t.writes_ok:,}" for t in tallies]),
        ("writes lost", [str(t.lost) for t in tallies]),
        ("writes applied twice", [str(t.duplicated) for t in tallies]),
        ("failed writes applied anyway", [str(t.failed_applied) for t in tallies]),
        ("balances consistent", ["yes" if t.balances_ok else "NO" for t in tallies]),
        ("p50 latency", [_ms(t.p50) for t in tallies]),
        ("p99 latency", [_ms(t.p99) for t in tallies]),
    ]
    width = max(16, *(len(t.label) for t in tallies), *(len(c) for _, r in rows for c in r)) + 2
    head = f"{'':<30}" + "".join(f"{t.label:>{width}}" for t in tallies)
    lines = [head, "-" * len(head)]
    lines += [f"{name:<30}" + "".join(f"{c:>{width}}" for c in cells) for name, cells in rows]
    lines += [f"errors by type, {t.label}: {_types(t.by_type)}" for t in tallies]
    return lines


def _unknown(t: Tally) -> str:
    return f"{t.unknown} ({t.unknown_applied} applied)" if t.unknown else "0"


def render_faults(
    faults: Sequence[FaultRecord], runs: Sequence[tuple[str, Sequence[Op]]], end: float
) -> list[str]:
    """Per fault: when, and per run the recovery time and the errors it caused."""
    name_w, run_w = max([44, *(len(f.name) + 2 for f in faults)]), 24
    top = " " * (name_w + 15) + "".join(f"{label:>{run_w}}" for label, _ in runs)
    head = f"{'fault':<{name_w}}{'at':>7}{'lifted':>8}" + f"{'recovery':>14}{'errors':>10}" * len(
        runs
    )
    lines = [top, head, "-" * len(head)]
    for i, fault in enumerate(faults):
        window_end = faults[i + 1].start if i + 1 < len(faults) else end
        line = f"{fault.name:<{name_w}}{fault.start:>6.1f}s{fault.end:>7.1f}s"
        for _, ops in runs:
            seconds, errors = recovery(ops, fault, window_end)
            line += f"{'not in run' if seconds is None else _ms(seconds):>14}{errors:>10,}"
        lines.append(line)
    return lines
