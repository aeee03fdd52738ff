"""The ledger workload: money moves under fire, then the database is reconciled against what
every client saw. Shared by ``tests/test_ledger.py`` (small) and ``benchmarks/ledger.py``.

Each operation writes rows with client-generated unique ids. The kinds of operation:

- transfer: ``run_in_transaction`` moving money between two accounts, with a journal row;
- insert: one single-statement INSERT;
- journal batch: ``executemany`` of journal INSERTs, one id per row (half of them with a
  literal in VALUES, which PyMySQL runs row by row instead of as one multi-row INSERT);
- marks batch: ``executemany`` of UPDATEs, each bumping a mark of its own (created first),
  mixed with updates of the hot marks that the faults lock;
- multi-statement text: ``db.execute`` of "INSERT ...; UPDATE ...; INSERT ..." with no
  arguments (PostgreSQL, MariaDB: SQLite's driver refuses several statements);
- DDL inside a transaction (MariaDB): an INSERT, ``CREATE TABLE IF NOT EXISTS`` (which
  commits implicitly), then more writes, all in ``run_in_transaction``;
- error caught inside a transaction: a duplicate key caught by the callable, which carries
  on (PostgreSQL has aborted the transaction by then and answers COMMIT with ROLLBACK).

Afterwards ``harness/_ledger_report.py`` reconciles: every row of a success exactly once, of
an ``OutcomeUnknown`` at most once, of a failure meaning "nothing applied" never; the hot
marks in aggregate; the balances sum to the starting total and agree with the journal. The
ids are deliberately not unique in the database, so a write applied twice shows as a
duplicate instead of being hidden by a constraint.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from harness._ledger_report import Op, Outcomes, Report, reconcile
from harness.backends import MYSQL, POSTGRES, SQLITE, Dialect
from resilientdb import (
    DatabaseUnavailable,
    OutcomeUnknown,
    Supervisor,
    TransactionLost,
    TransactionRolledBack,
)

__all__ = [
    "MYSQL",
    "POSTGRES",
    "SQLITE",
    "Dialect",
    "Fault",
    "Ledger",
    "Report",
]

Fault = tuple[float, str, Callable[[], Awaitable[Any]]]

HOT_ACCOUNTS = (0, 1)  # the accounts the lock faults hold
HOT_MARKS = ("hot-0", "hot-1")  # the marks they hold
TAKEN = "taken"  # a mark that always exists: inserting it again is a duplicate key

TRANSFER = "transfer (run_in_transaction)"
SINGLE = "insert (single statement)"
JOURNAL_BATCH = "journal batch (executemany INSERT)"
MARKS_BATCH = "marks batch (executemany UPDATE)"
MULTI = "multi-statement text (execute, no args)"
DDL = "DDL inside a transaction (implicit commit)"
CAUGHT = "error caught inside a transaction"


class _Skip(Exception):
    """An operation's preparation failed: nothing of the operation itself was attempted."""


def _id() -> str:
    return uuid.uuid4().hex


class Ledger:
    """The workload against one supervisor's default database."""

    def __init__(
        self,
        sup: Supervisor,
        dialect: Dialect,
        accounts: int = 20,
        *,
        resolve: bool | None = None,
        exactly_once: bool = False,
    ) -> None:
        self.sup = sup
        # How lost COMMITs are treated: ``resolve`` for run_in_transaction (None: the
        # library's default), ``exactly_once`` for the writes outside a transaction (single
        # inserts, batches, multi-statement texts).
        self.resolve = resolve
        self.exactly_once = exactly_once
        self.db = sup.db
        self.d = dialect
        self.accounts = accounts
        self.initial = 1_000
        weights = {TRANSFER: 35, SINGLE: 10, JOURNAL_BATCH: 10, MARKS_BATCH: 10, CAUGHT: 10}
        if dialect.multi_statement:
            weights[MULTI] = 15
        if dialect.ddl_commits:
            weights[DDL] = 10
        self.weights = weights
        self.kinds: dict[str, Outcomes] = {kind: Outcomes() for kind in weights}
        self.skipped = 0
        p = dialect.p
        self.sql_debit = f"UPDATE accounts SET balance = balance - {p(1)} WHERE id = {p(2)}"
        self.sql_credit = f"UPDATE accounts SET balance = balance + {p(1)} WHERE id = {p(2)}"
        self.sql_journal = (
            f"INSERT INTO journal (op_id, src, dst, amount) VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)})"
        )
        self.sql_single = f"INSERT INTO singles (op_id) VALUES ({p(1)})"
        self.sql_hit = f"UPDATE marks SET hits = hits + 1 WHERE mark_id = {p(1)}"

    async def setup(self) -> None:
        db, d = self.db, self.d
        for table in ("journal", "singles", "marks", "ledger_scratch", "accounts"):
            await db.execute(f"DROP TABLE IF EXISTS {table}", idempotent=True)
        await db.execute(
            "CREATE TABLE accounts (id integer PRIMARY KEY, balance bigint NOT NULL)",
            idempotent=True,
        )
        # The foreign keys make journal inserts wait for a locked account, as writes do.
        await db.execute(
            f"CREATE TABLE journal (seq {d.serial}, op_id varchar(64) NOT NULL, "
            "src integer NOT NULL REFERENCES accounts (id), "
            "dst integer NOT NULL REFERENCES accounts (id), amount integer NOT NULL)",
            idempotent=True,
        )
        await db.execute(
            f"CREATE TABLE singles (seq {d.serial}, op_id varchar(64) NOT NULL)",
            idempotent=True,
        )
        await db.execute(
            "CREATE TABLE marks (mark_id varchar(64) PRIMARY KEY, hits integer NOT NULL)",
            idempotent=True,
        )
        await db.executemany(
            f"INSERT INTO accounts (id, balance) VALUES ({d.p(1)}, {d.p(2)})",
            [(i, self.initial) for i in range(self.accounts)],
            idempotent=True,
        )
        await db.executemany(d.insert_ignore, [(m,) for m in (*HOT_MARKS, TAKEN)], idempotent=True)

    # -- the operations -------------------------------------------------------------------------

    def _account(self, rng: random.Random) -> int:
        """An account, a hot one half of the time (so that the lock faults are met)."""
        return rng.choice(HOT_ACCOUNTS) if rng.random() < 0.5 else rng.randrange(self.accounts)

    def _cold_account(self, rng: random.Random) -> int:
        """An account no fault locks: a first statement on it goes through, the next waits."""
        return rng.randrange(len(HOT_ACCOUNTS), self.accounts)

    async def _transfer(self, tx: Any, op_id: str, src: int, dst: int, amount: int) -> None:
        await tx.execute(self.sql_debit, amount, src)
        await tx.execute(self.sql_credit, amount, dst)
        await tx.execute(self.sql_journal, op_id, src, dst, amount)

    async def _caught(self, tx: Any, op_id: str, src: int, dst: int, amount: int) -> None:
        """A transfer whose callable catches a duplicate key and carries on."""
        await tx.execute(self.sql_debit, amount, src)
        try:
            await tx.execute(f"INSERT INTO marks (mark_id, hits) VALUES ({self.d.p(1)}, 0)", TAKEN)
        except Exception as exc:
            if not self.d.duplicate_key(exc):
                raise
        # Carry on. On PostgreSQL the transaction is aborted now (25P02 from here on); a
        # careless callable swallows that too, and COMMIT is answered with ROLLBACK.
        for sql, args in (
            (self.sql_credit, (amount, dst)),
            (self.sql_journal, (op_id, src, dst, amount)),
        ):
            try:
                await tx.execute(sql, *args)
            except Exception as exc:
                if not self.d.aborted(exc):
                    raise

    async def _ddl(self, tx: Any, a: str, b: str, account: int, mark: str) -> None:
        """An INSERT, DDL (MariaDB commits here, implicitly), then more writes."""
        await tx.execute(self.sql_journal, a, account, account, 0)
        await tx.execute("CREATE TABLE IF NOT EXISTS ledger_scratch (id integer PRIMARY KEY)")
        await tx.execute(self.sql_hit, mark)
        await tx.execute(self.sql_single, b)

    async def _run_op(self, kind: str, op: Op, rng: random.Random) -> None:
        db = self.db
        if kind in (TRANSFER, CAUGHT):
            op.rows.append(_id())
            src, dst = rng.sample(range(self.accounts), 2)
            fn = self._transfer if kind == TRANSFER else self._caught
            await db.run_in_transaction(
                fn,
                op.rows[0],
                src,
                dst,
                rng.randint(1, 10),
                retries=10,
                timeout=30,
                resolve=self.resolve,
            )
        elif kind == SINGLE:
            op.rows.append(_id())
            await db.execute(
                self.sql_single, op.rows[0], timeout=30, exactly_once=self.exactly_once
            )
        elif kind == JOURNAL_BATCH:
            op.rows += [_id() for _ in range(rng.randint(2, 6))]
            accounts = [self._account(rng) for _ in op.rows]
            if rng.random() < 0.5:
                rows = [(r, k, k, 0) for r, k in zip(op.rows, accounts, strict=True)]
                await db.executemany(
                    self.sql_journal, rows, timeout=30, exactly_once=self.exactly_once
                )
            else:  # a literal in VALUES: PyMySQL sends one INSERT per row, not one multi-row
                p = self.d.p
                sql = (
                    f"INSERT INTO journal (op_id, src, dst, amount) "
                    f"VALUES ({p(1)}, {p(2)}, {p(3)}, 0)"
                )
                three = [(r, k, k) for r, k in zip(op.rows, accounts, strict=True)]
                await db.executemany(sql, three, timeout=30, exactly_once=self.exactly_once)
        elif kind == MARKS_BATCH:
            own = [_id() for _ in range(rng.randint(2, 4))]
            try:
                await db.executemany(
                    self.d.insert_ignore, [(m,) for m in own], idempotent=True, timeout=30
                )
            except Exception as exc:
                raise _Skip from exc
            op.rows += own
            op.hot += rng.sample(HOT_MARKS, rng.randint(1, 2))
            targets = own + op.hot
            rng.shuffle(targets)
            await db.executemany(
                self.sql_hit, [(t,) for t in targets], timeout=30, exactly_once=self.exactly_once
            )
        elif kind == MULTI:
            op.rows += [_id(), _id()]
            op.hot += rng.sample(HOT_MARKS, 2)
            k = self._cold_account(rng)
            hits = "".join(
                f"UPDATE marks SET hits = hits + 1 WHERE mark_id = '{m}'; " for m in op.hot
            )
            await db.execute(
                f"INSERT INTO journal (op_id, src, dst, amount) VALUES ('{op.rows[0]}', {k}, "
                f"{k}, 0); {hits}INSERT INTO singles (op_id) VALUES ('{op.rows[1]}')",
                timeout=30,
                exactly_once=self.exactly_once,
            )
        elif kind == DDL:
            op.rows += [_id(), _id()]
            op.hot.append(rng.choice(HOT_MARKS))
            await db.run_in_transaction(
                self._ddl,
                *op.rows,
                self._cold_account(rng),
                op.hot[0],
                retries=10,
                timeout=30,
                resolve=self.resolve,
            )
        else:
            raise AssertionError(kind)

    async def _one(self, rng: random.Random) -> None:
        kind = rng.choices(list(self.weights), list(self.weights.values()))[0]
        out = self.kinds[kind]
        op = Op()
        started = time.perf_counter()
        try:
            await self._run_op(kind, op, rng)
        except _Skip:
            self.skipped += 1
            await asyncio.sleep(0.01)
        except OutcomeUnknown:
            out.unknown.append(op)
        except (DatabaseUnavailable, TransactionLost, TransactionRolledBack):
            out.failed.append(op)
            await asyncio.sleep(0.01)  # as a real client would, rather than spin
        except Exception as exc:
            if self.d.driver_error(exc):
                # The driver's own error: by resilientdb's contract nothing was applied.
                out.failed.append(op)
                out.driver_errors[f"{kind}: {type(exc).__name__}"] += 1
                await asyncio.sleep(0.01)
            else:  # counted: the report shows every unexpected error
                out.errors[f"{kind}: {type(exc).__name__}"] += 1
                out.unknown.append(op)  # its outcome is not known either
        else:
            out.ok.append(op)
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
        db = self.db
        await self.sup.wait_until_connected(timeout=30)
        seen: Counter[str] = Counter()
        for table in ("journal", "singles"):
            seen.update(r[0] for r in await db.fetch(f"SELECT op_id FROM {table}", idempotent=True))
        hot_hits: dict[str, int] = {}
        for row in await db.fetch("SELECT mark_id, hits FROM marks", idempotent=True):
            mark, hits = row[0], row[1]
            if mark in HOT_MARKS:
                hot_hits[mark] = hits
            elif mark != TAKEN:
                seen[mark] += hits
        balances = {
            r[0]: r[1] for r in await db.fetch("SELECT id, balance FROM accounts", idempotent=True)
        }
        expected = dict.fromkeys(range(self.accounts), self.initial)
        for r in await db.fetch("SELECT src, dst, amount FROM journal", idempotent=True):
            expected[r[0]] -= r[2]
            expected[r[1]] += r[2]
        return reconcile(
            self.kinds,
            seen,
            hot_hits,
            balances,
            expected,
            expected_total=self.initial * self.accounts,
            replays=self.sup.db.statistics().replays,
            faults=faults,
        )
