"""The demo's workload: reads, single-statement writes and transfers, each write with a
client-generated unique id, so that afterwards the database can be reconciled with what the
application was told (the same method as ``harness/ledger.py``).

A :class:`Run` drives one :class:`Client` (resilientdb, or a raw driver) with paced workers
and records every operation: when it started and ended, and how it ended. Nothing here
decides what a number should be: the summary is computed from these records and from what
the database holds afterwards.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..._database import Database
from ...errors import DatabaseUnavailable, OutcomeUnknown, SupervisorClosed, TransactionLost

__all__ = ["KINDS", "Client", "Dialect", "Op", "Run", "Schema", "SupervisedClient", "Written"]

ACCOUNTS = 20
INITIAL_BALANCE = 1_000
OP_TIMEOUT = 10.0  # bounds every call, so the run ends soon after its duration
KINDS = ("read", "write", "transaction")


@dataclass(frozen=True)
class Dialect:
    """What differs between backends: placeholders and the auto-increment column (the dev
    harness, ``harness/backends.py``, builds its fuller descriptions on these)."""

    name: str
    style: str  # "$" (asyncpg), "%s" (aiomysql) or "?" (sqlite3)
    serial: str

    def p(self, n: int) -> str:
        return f"${n}" if self.style == "$" else self.style


POSTGRES = Dialect("postgres", "$", "bigserial PRIMARY KEY")
MYSQL = Dialect("mysql", "%s", "bigint AUTO_INCREMENT PRIMARY KEY")
SQLITE = Dialect("sqlite", "?", "integer PRIMARY KEY AUTOINCREMENT")
DIALECTS = {"postgres": POSTGRES, "mysql": MYSQL, "sqlite": SQLITE}


@dataclass(frozen=True)
class Schema:
    """The demo's tables (prefixed, so that a demo against a real database cannot collide
    with the user's own tables) and the statements the workload runs."""

    dialect: Dialect
    prefix: str

    @property
    def tables(self) -> tuple[str, str, str]:
        return (f"{self.prefix}journal", f"{self.prefix}singles", f"{self.prefix}accounts")

    def ddl(self) -> list[str]:
        journal, singles, accounts = self.tables
        serial = self.dialect.serial
        drops = [f"DROP TABLE IF EXISTS {t}" for t in self.tables]
        return [
            *drops,
            f"CREATE TABLE {accounts} (id integer PRIMARY KEY, balance bigint NOT NULL)",
            # op_id deliberately not unique: a write applied twice shows as a duplicate.
            f"CREATE TABLE {journal} (seq {serial}, op_id varchar(64) NOT NULL, "
            "src integer NOT NULL, dst integer NOT NULL, amount integer NOT NULL)",
            f"CREATE TABLE {singles} (seq {serial}, op_id varchar(64) NOT NULL)",
        ]

    def drops(self) -> list[str]:
        return [f"DROP TABLE IF EXISTS {t}" for t in self.tables]

    @property
    def seed(self) -> str:
        p = self.dialect.p
        return f"INSERT INTO {self.tables[2]} (id, balance) VALUES ({p(1)}, {p(2)})"

    @property
    def read(self) -> str:
        return f"SELECT balance FROM {self.tables[2]} WHERE id = {self.dialect.p(1)}"

    @property
    def insert(self) -> str:
        return f"INSERT INTO {self.tables[1]} (op_id) VALUES ({self.dialect.p(1)})"

    @property
    def move(self) -> str:
        p = self.dialect.p
        return f"UPDATE {self.tables[2]} SET balance = balance + {p(1)} WHERE id = {p(2)}"

    @property
    def journal(self) -> str:
        p = self.dialect.p
        return (
            f"INSERT INTO {self.tables[0]} (op_id, src, dst, amount) "
            f"VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)})"
        )

    def transfer_steps(
        self, op_id: str, src: int, dst: int, amount: int
    ) -> list[tuple[str, tuple[Any, ...]]]:
        """The statements of one transfer; accounts updated in id order (no deadlocks)."""
        moves = sorted([(src, -amount), (dst, amount)])
        return [
            *((self.move, (delta, account)) for account, delta in moves),
            (self.journal, (op_id, src, dst, amount)),
        ]


@dataclass
class Written:
    """What the database holds after a run."""

    singles: Counter[str]
    journal: Counter[str]
    balances: dict[int, int]
    transfers: list[tuple[int, int, int]]


class Client(Protocol):
    """One way of talking to the database: through resilientdb, or the raw driver."""

    label: str

    async def setup(self) -> None: ...

    async def read(self, worker: int, account: int) -> None: ...

    async def insert(self, worker: int, op_id: str) -> None: ...

    async def transfer(self, worker: int, op_id: str, src: int, dst: int, amount: int) -> None: ...

    async def written(self) -> Written: ...

    def state(self) -> str: ...

    async def aclose(self) -> None: ...


async def read_written(fetch: Callable[[str], Any], schema: Schema) -> Written:
    """The reconciliation queries, run through ``fetch(sql) -> awaitable rows``."""
    journal, singles, accounts = schema.tables
    singles_rows = await fetch(f"SELECT op_id FROM {singles}")
    journal_rows = await fetch(f"SELECT op_id, src, dst, amount FROM {journal}")
    balance_rows = await fetch(f"SELECT id, balance FROM {accounts}")
    return Written(
        singles=Counter(str(r[0]) for r in singles_rows),
        journal=Counter(str(r[0]) for r in journal_rows),
        balances={int(r[0]): int(r[1]) for r in balance_rows},
        transfers=[(int(r[1]), int(r[2]), int(r[3])) for r in journal_rows],
    )


class SupervisedClient:
    """The workload through resilientdb: plain calls, ``run_in_transaction`` for transfers."""

    def __init__(self, db: Database, schema: Schema, state: Callable[[], str]) -> None:
        self.label = "resilientdb"
        self.db = db
        self.schema = schema
        self._state = state

    async def setup(self) -> None:
        for statement in self.schema.ddl():
            await self.db.execute(statement, idempotent=True)
        rows = [(i, INITIAL_BALANCE) for i in range(ACCOUNTS)]
        await self.db.executemany(self.schema.seed, rows, idempotent=True)

    async def read(self, worker: int, account: int) -> None:
        await self.db.fetchval(self.schema.read, account, timeout=OP_TIMEOUT)

    async def insert(self, worker: int, op_id: str) -> None:
        # Not idempotent: a lost connection after sending raises OutcomeUnknown.
        await self.db.execute(self.schema.insert, op_id, timeout=OP_TIMEOUT)

    async def transfer(self, worker: int, op_id: str, src: int, dst: int, amount: int) -> None:
        steps = self.schema.transfer_steps(op_id, src, dst, amount)

        async def body(tx: Any) -> None:
            for sql, args in steps:
                await tx.execute(sql, *args)

        await self.db.run_in_transaction(body, retries=5, timeout=OP_TIMEOUT)

    async def written(self) -> Written:
        async def fetch(sql: str) -> Any:
            return await self.db.fetch(sql, timeout=OP_TIMEOUT)

        return await read_written(fetch, self.schema)

    async def drop(self) -> None:
        for statement in self.schema.drops():
            await self.db.execute(statement, idempotent=True, timeout=OP_TIMEOUT)

    def state(self) -> str:
        return self._state()

    async def aclose(self) -> None:
        return None


@dataclass(slots=True)
class Op:
    """One operation as the application saw it; times in seconds since the run began."""

    kind: str  # "read", "write", "transaction"
    op_id: str | None
    start: float
    end: float
    outcome: str  # "ok", "unknown" (OutcomeUnknown), "unavailable" (not applied), "error"
    error: str | None = None  # the exception's type name


def supervised_outcome(exc: BaseException) -> str:
    """How resilientdb's exceptions map to outcomes; anything else is an "error"."""
    if isinstance(exc, OutcomeUnknown):
        return "unknown"
    if isinstance(exc, DatabaseUnavailable | TransactionLost | SupervisorClosed):
        return "unavailable"  # documented: nothing of the call was applied
    return "error"


def raw_outcome(exc: BaseException) -> str:
    return "error"


@dataclass
class Run:
    """Paced workers driving one client; every operation recorded in ``ops``."""

    client: Client
    outcome_of: Callable[[BaseException], str]
    workers: int
    rate: float  # operations per second per worker (offered, not guaranteed)
    ops: list[Op] = field(default_factory=list)
    t0: float = 0.0

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def _one(self, worker: int, rng: random.Random) -> None:
        roll = rng.random()
        op_id: str | None = None
        start = self.now()
        try:
            if roll < 0.5:
                kind = "read"
                await self.client.read(worker, rng.randrange(ACCOUNTS))
            elif roll < 0.75:
                kind, op_id = "write", uuid.uuid4().hex
                await self.client.insert(worker, op_id)
            else:
                kind, op_id = "transaction", uuid.uuid4().hex
                src, dst = rng.sample(range(ACCOUNTS), 2)
                await self.client.transfer(worker, op_id, src, dst, rng.randint(1, 10))
        except Exception as exc:
            outcome = self.outcome_of(exc)
            self.ops.append(Op(kind, op_id, start, self.now(), outcome, type(exc).__name__))
        else:
            self.ops.append(Op(kind, op_id, start, self.now(), "ok"))

    async def _worker(self, worker: int, stop_at: float) -> None:
        rng = random.Random(worker)
        interval = 1.0 / self.rate
        due = self.now() + rng.uniform(0, interval)  # spread the workers' first calls
        # Bounded by count as well as by time.
        for _ in range(int((stop_at + 1) * self.rate) + 10):
            await asyncio.sleep(max(due - self.now(), 0))
            if self.now() >= stop_at:
                return
            await self._one(worker, rng)
            # Paced: a worker that fell behind (waiting out an outage) does not burst.
            due = max(due + interval, self.now())

    async def run(self, t0: float, duration: float) -> None:
        self.t0 = t0
        tasks = [asyncio.create_task(self._worker(w, duration)) for w in range(self.workers)]
        try:
            # Every call is bounded by OP_TIMEOUT; this is the backstop.
            _, pending = await asyncio.wait(tasks, timeout=duration + OP_TIMEOUT + 10)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if pending:
            raise RuntimeError(f"{self.client.label}: workers did not stop in time")
