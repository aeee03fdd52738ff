"""The ledger workload: money moves under fire, then the database is reconciled against what
every client saw. Shared by ``tests/test_ledger.py`` (small) and ``benchmarks/ledger.py``.

Each operation carries a client-generated unique id. Afterwards:
- every operation the client saw succeed is in the database exactly once;
- every ``OutcomeUnknown`` is there at most once;
- every operation that failed before it was applied (``DatabaseUnavailable``,
  ``TransactionLost`` out of retries) is absent;
- the balances still sum to the starting total and agree with the journal.
The journal's op id is deliberately not unique, so a write applied twice shows as a duplicate
instead of being hidden by a constraint.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from resilientdb import DatabaseUnavailable, OutcomeUnknown, Supervisor, TransactionLost

Fault = tuple[float, str, Callable[[], Awaitable[Any]]]


@dataclass(frozen=True)
class Dialect:
    """What differs between backends: placeholders and DDL."""

    name: str
    placeholder: Callable[[int], str]
    serial: str

    def p(self, n: int) -> str:
        return self.placeholder(n)


POSTGRES = Dialect("postgres", lambda n: f"${n}", "bigserial PRIMARY KEY")
MYSQL = Dialect("mysql", lambda n: "%s", "bigint AUTO_INCREMENT PRIMARY KEY")
SQLITE = Dialect("sqlite", lambda n: "?", "integer PRIMARY KEY AUTOINCREMENT")


@dataclass
class Outcomes:
    ok: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
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
            "| operation | ok | outcome unknown | failed (not applied) | lost | duplicated |",
            "|---|---|---|---|---|---|",
        ]
        for kind, c in self.kind_counts.items():
            rows.append(
                f"| {kind} | {c['ok']} | {c['unknown']} | {c['unavailable']} "
                f"| {c['lost']} | {c['duplicated']} |"
            )
        rows.append("")
        rows.append(f"replays: {self.replays}; unexpected errors: {dict(self.errors) or 0}")
        rows.append(
            f"applied although reported failed: {len(self.applied_after_failure)}; "
            f"balance total {self.balance_total} (expected {self.expected_total}); "
            f"accounts disagreeing with the journal: {len(self.journal_mismatch)}"
        )
        rows.append(f"faults: {self.faults}")
        return "\n".join(rows)


class Ledger:
    """The workload against one supervisor's default database."""

    def __init__(self, sup: Supervisor, dialect: Dialect, accounts: int = 20) -> None:
        self.sup = sup
        self.db = sup.db
        self.d = dialect
        self.accounts = accounts
        self.initial = 1_000
        self.transfers = Outcomes()
        self.singles = Outcomes()

    async def setup(self) -> None:
        db, d = self.db, self.d
        for table in ("journal", "singles", "accounts"):
            await db.execute(f"DROP TABLE IF EXISTS {table}", idempotent=True)
        await db.execute(
            "CREATE TABLE accounts (id integer PRIMARY KEY, balance bigint NOT NULL)",
            idempotent=True,
        )
        await db.execute(
            f"CREATE TABLE journal (seq {d.serial}, op_id varchar(64) NOT NULL, "
            "src integer NOT NULL, dst integer NOT NULL, amount integer NOT NULL)",
            idempotent=True,
        )
        await db.execute(
            f"CREATE TABLE singles (seq {d.serial}, op_id varchar(64) NOT NULL)",
            idempotent=True,
        )
        await db.executemany(
            f"INSERT INTO accounts (id, balance) VALUES ({d.p(1)}, {d.p(2)})",
            [(i, self.initial) for i in range(self.accounts)],
            idempotent=True,
        )

    async def _transfer(self, tx: Any, op_id: str, src: int, dst: int, amount: int) -> None:
        p = self.d.p
        await tx.execute(
            f"UPDATE accounts SET balance = balance - {p(1)} WHERE id = {p(2)}", amount, src
        )
        await tx.execute(
            f"UPDATE accounts SET balance = balance + {p(1)} WHERE id = {p(2)}", amount, dst
        )
        await tx.execute(
            f"INSERT INTO journal (op_id, src, dst, amount) VALUES ({p(1)}, {p(2)}, {p(3)}, "
            f"{p(4)})",
            op_id,
            src,
            dst,
            amount,
        )

    async def _one(self, rng: random.Random) -> None:
        op_id = uuid.uuid4().hex
        started = time.perf_counter()
        if rng.random() < 0.7:
            src, dst = rng.sample(range(self.accounts), 2)
            out = self.transfers
            call = self.db.run_in_transaction(
                self._transfer, op_id, src, dst, rng.randint(1, 10), retries=10, timeout=30
            )
        else:
            out = self.singles
            call = self.db.execute(
                f"INSERT INTO singles (op_id) VALUES ({self.d.p(1)})", op_id, timeout=30
            )
        try:
            await call
        except OutcomeUnknown:
            out.unknown.append(op_id)
        except (DatabaseUnavailable, TransactionLost):
            out.unavailable.append(op_id)
            await asyncio.sleep(0.01)  # as a real client would, rather than spin
        except Exception as exc:  # counted: the report shows every unexpected error
            out.errors[type(exc).__name__] += 1
            out.unknown.append(op_id)  # its outcome is not known either
        else:
            out.ok.append(op_id)
            out.latencies.append(time.perf_counter() - started)

    async def _worker(self, seed: int, stop_at: float, max_ops: int) -> None:
        rng = random.Random(seed)
        for _ in range(max_ops):
            if time.monotonic() >= stop_at:
                return
            await self._one(rng)

    async def run(
        self, duration: float, workers: int, faults: list[Fault], max_ops: int = 100_000
    ) -> dict[str, Any]:
        """Run the workers for ``duration`` seconds while ``faults`` fire at their offsets."""
        stop_at = time.monotonic() + duration
        fired: dict[str, Any] = {}

        async def schedule() -> None:
            start = time.monotonic()
            for offset, name, fault in sorted(faults, key=lambda f: f[0]):
                await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
                fired[name] = await fault()

        tasks = [asyncio.create_task(self._worker(i, stop_at, max_ops)) for i in range(workers)]
        await asyncio.gather(schedule(), *tasks)
        return fired

    async def reconcile(self, faults: dict[str, Any]) -> Report:
        db, d = self.db, self.d
        await self.sup.wait_until_connected(timeout=30)
        journal = Counter(
            r[0] for r in await db.fetch("SELECT op_id FROM journal", idempotent=True)
        )
        singles = Counter(
            r[0] for r in await db.fetch("SELECT op_id FROM singles", idempotent=True)
        )
        kind_counts: dict[str, dict[str, int]] = {}
        lost: list[str] = []
        duplicated: list[str] = []
        applied: list[str] = []
        errors: Counter[str] = Counter()
        for kind, out, seen in (
            ("transfer (run_in_transaction)", self.transfers, journal),
            ("insert (single statement)", self.singles, singles),
        ):
            k_lost = [o for o in out.ok if seen[o] == 0]
            k_dup = [o for o in out.ok + out.unknown if seen[o] > 1]
            applied += [o for o in out.unavailable if seen[o] > 0]
            lost += k_lost
            duplicated += k_dup
            errors.update(out.errors)
            kind_counts[kind] = {
                "ok": len(out.ok),
                "unknown": len(out.unknown),
                "unavailable": len(out.unavailable),
                "lost": len(k_lost),
                "duplicated": len(k_dup),
            }
        balances = {
            r[0]: r[1] for r in await db.fetch("SELECT id, balance FROM accounts", idempotent=True)
        }
        expected = dict.fromkeys(range(self.accounts), self.initial)
        for r in await db.fetch("SELECT src, dst, amount FROM journal", idempotent=True):
            expected[r[0]] -= r[2]
            expected[r[1]] += r[2]
        mismatch = [a for a in expected if balances.get(a) != expected[a]]
        _ = d
        return Report(
            kind_counts=kind_counts,
            lost=lost,
            duplicated=duplicated,
            applied_after_failure=applied,
            balance_total=sum(balances.values()),
            expected_total=self.initial * self.accounts,
            journal_mismatch=mismatch,
            replays=self.sup.db._monitor.replays,
            errors=dict(errors),
            faults=faults,
        )
