"""The ledger's bookkeeping: what each client saw, and the reconciliation against the database.

Every operation writes rows that carry client-generated unique ids (a journal row, a singles
row, or one hit on a mark of its own). ``reconcile`` counts each id in the database and holds
it against the outcome the client saw:

- success: every row of the operation exactly once (missing: lost; more: duplicated);
- ``OutcomeUnknown`` (and an unexpected error): every row at most once, whatever part of a
  batch or multi-statement text was applied;
- a failure that means "nothing applied" (``DatabaseUnavailable``, ``TransactionLost``,
  ``TransactionRolledBack``, the driver's own error): no row at all.

Updates of the shared hot marks (``hot-0``, ``hot-1``) carry no id of their own; they are
checked in aggregate: each mark's hits lie between the updates acknowledged and those
acknowledged or unknown.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Op:
    """One operation: the ids of the rows it writes, the hot marks it bumps."""

    rows: list[str] = field(default_factory=list)
    hot: list[str] = field(default_factory=list)


@dataclass
class Outcomes:
    """What the clients saw for one kind of operation."""

    ok: list[Op] = field(default_factory=list)
    unknown: list[Op] = field(default_factory=list)
    failed: list[Op] = field(default_factory=list)
    driver_errors: Counter[str] = field(default_factory=Counter)  # among `failed`
    errors: Counter[str] = field(default_factory=Counter)  # unexpected; among `unknown`
    latencies: list[float] = field(default_factory=list)


@dataclass
class Report:
    kind_counts: dict[str, dict[str, int]]
    lost: list[str]
    duplicated: list[str]
    applied_after_failure: list[str]
    balance_total: int
    expected_total: int
    journal_mismatch: list[int]
    replays: int
    errors: dict[str, int]
    faults: dict[str, Any]
    driver_errors: dict[str, int] = field(default_factory=dict)
    hot: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not (
            self.lost
            or self.duplicated
            or self.applied_after_failure
            or self.journal_mismatch
            or self.balance_total != self.expected_total
        )

    def table(self) -> str:
        rows = [
            "| operation | ok | outcome unknown | failed (not applied) | rows | lost rows "
            "| duplicated rows | rows applied though failed |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for kind, c in self.kind_counts.items():
            rows.append(
                f"| {kind} | {c['ok']} | {c['unknown']} | {c['unavailable']} | {c['rows']} "
                f"| {c['lost']} | {c['duplicated']} | {c['applied']} |"
            )
        for mark, h in self.hot.items():
            rows.append(
                f"| hot row {mark} (shared counter) | {h['acknowledged']} | {h['unknown']} "
                f"| {h['failed']} | hits {h['hits']} | {h['lost']} | {h['duplicated']} | - |"
            )
        rows.append("")
        rows.append(
            f"replays: {self.replays}; driver errors (counted as failed): "
            f"{dict(self.driver_errors) or 0}; unexpected errors: {dict(self.errors) or 0}"
        )
        rows.append(
            f"applied although reported failed: {len(self.applied_after_failure)}; "
            f"balance total {self.balance_total} (expected {self.expected_total}); "
            f"accounts disagreeing with the journal: {len(self.journal_mismatch)}"
        )
        rows.append(f"faults: {self.faults}")
        return "\n".join(rows)


def reconcile(
    kinds: dict[str, Outcomes],
    seen: Counter[str],
    hot_hits: dict[str, int],
    balances: dict[int, int],
    expected: dict[int, int],
    *,
    expected_total: int,
    replays: int,
    faults: dict[str, Any],
) -> Report:
    """Hold what the clients saw (``kinds``) against the rows found (``seen``: id -> count)."""
    kind_counts: dict[str, dict[str, int]] = {}
    lost: list[str] = []
    duplicated: list[str] = []
    applied: list[str] = []
    errors: Counter[str] = Counter()
    driver_errors: Counter[str] = Counter()
    hot_low: Counter[str] = Counter()
    hot_unknown: Counter[str] = Counter()
    hot_failed: Counter[str] = Counter()
    for kind, out in kinds.items():
        k_lost = [r for op in out.ok for r in op.rows if seen[r] == 0]
        k_dup = [r for op in out.ok + out.unknown for r in op.rows if seen[r] > 1]
        k_applied = [r for op in out.failed for r in op.rows if seen[r] > 0]
        for ops, counter in ((out.ok, hot_low), (out.unknown, hot_unknown)):
            counter.update(m for op in ops for m in op.hot)
        hot_failed.update(m for op in out.failed for m in op.hot)
        lost += k_lost
        duplicated += k_dup
        applied += k_applied
        errors.update(out.errors)
        driver_errors.update(out.driver_errors)
        kind_counts[kind] = {
            "ok": len(out.ok),
            "unknown": len(out.unknown),
            "unavailable": len(out.failed),  # the key benchmarks/_report_sections.py reads
            "rows": sum(len(op.rows) for ops in (out.ok, out.unknown, out.failed) for op in ops),
            "lost": len(k_lost),
            "duplicated": len(k_dup),
            "applied": len(k_applied),
        }
    hot: dict[str, dict[str, int]] = {}
    for mark, hits in sorted(hot_hits.items()):
        low, high = hot_low[mark], hot_low[mark] + hot_unknown[mark]
        hot[mark] = {
            "hits": hits,
            "acknowledged": low,
            "unknown": hot_unknown[mark],
            "failed": hot_failed[mark],
            "lost": max(0, low - hits),
            "duplicated": max(0, hits - high),
        }
        if hits < low:
            lost.append(f"{mark} ({low - hits} acknowledged hits missing)")
        if hits > high:
            duplicated.append(f"{mark} ({hits - high} hits more than acknowledged or unknown)")
    mismatch = [a for a in expected if balances.get(a) != expected[a]]
    return Report(
        kind_counts=kind_counts,
        lost=lost,
        duplicated=duplicated,
        applied_after_failure=applied,
        balance_total=sum(balances.values()),
        expected_total=expected_total,
        journal_mismatch=mismatch,
        replays=replays,
        errors=dict(errors),
        faults=faults,
        driver_errors=dict(driver_errors),
        hot=hot,
    )
