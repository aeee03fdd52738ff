"""An in-memory database server and its adapter, for the model test of the replay rules.

The server keeps what was committed: a journal of ids in which a duplicate stays visible. It
runs a tiny SQL dialect with the semantics replay depends on, in three flavours:

* ``postgresql``: a multi-statement text runs in one implicit transaction (a COMMIT inside
  ends it early); a batch is atomic; an error inside a transaction aborts it, later
  statements fail and COMMIT answers ``ROLLBACK``; a deadlock aborts the transaction; DDL is
  transactional; a read-only transaction refuses writes; ``write_fn`` is a VOLATILE function
  that writes, ``side_fn`` a VOLATILE one whose effect is outside the tables (a read-only
  transaction does not stop it) and ``stable_fn`` a STABLE one (the catalog says so);
* ``mysql``: every statement of a text or a batch commits on its own; DDL commits the open
  transaction implicitly; a deadlock rolls the whole transaction back; the "in transaction"
  status is updated by successful statements only (an error packet carries none);
* ``sqlite``: one statement per call; a batch is atomic; no read-only guard.

Faults are scripted per call: a context variable carries a :class:`Script` into the adapter,
and the call's n-th statement on the server (BEGIN and COMMIT included, each batch row one)
meets its fault: refused before sending, lost before or after it was applied, a lost race,
a query error, a client-side encoding error, a hang before or after applying, and an outage
(the server refuses connections for a while).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from resilientdb.backends.base import (
    BackendFacts,
)

KINDS = (
    "unsent",
    "lost_before",
    "lost_after",
    "retryable",
    "query",
    "client",
    "hang_before",
    "hang_after",
)
FACTS = {
    "postgresql": BackendFacts("postgresql", True, ("BEGIN READ ONLY", "ROLLBACK")),
    "mysql": BackendFacts("mysql", False, ("START TRANSACTION READ ONLY", "ROLLBACK"), "DO 0"),
    "sqlite": BackendFacts("sqlite", True, None),
}
SERVERS: dict[str, Server] = {}


class Fault(NamedTuple):
    at: int  # the call's statement on the server, counted from 0
    kind: str
    down: float  # then the server refuses connections for this many seconds


class Script:
    """The faults of one call, by statement number."""

    def __init__(self, faults: Sequence[Fault]) -> None:
        self.faults = {f.at: f for f in faults}
        self.count = 0

    def next(self) -> Fault | None:
        fault = self.faults.get(self.count)
        self.count += 1
        return fault


SCRIPT: contextvars.ContextVar[Script | None] = contextvars.ContextVar("script", default=None)


class Lost(ConnectionError):
    """The connection died after the request was sent."""


class NotSent(ConnectionError):
    """The connection was closed before anything was written."""


class Race(Exception):
    """A deadlock: rolled back by the server."""


class QueryError(Exception):
    """The statement's own error."""


class WriteRefused(QueryError):
    """A write in a read-only transaction."""


class Server:
    def __init__(self, flavor: str) -> None:
        self.flavor = flavor
        self.committed: list[str] = []
        self.down_until = 0.0
        # Transaction ids (PostgreSQL): assigned at a transaction's first write, and what
        # became of each (a lost COMMIT is resolved by asking).
        self.next_xid = 100
        self.xacts: dict[int, str] = {}

    @property
    def up(self) -> bool:
        return asyncio.get_running_loop().time() >= self.down_until


class ModelConnection:
    def __init__(self, server: Server, default_timeout: float | None, generation: int) -> None:
        self.server = server
        self.flavor = server.flavor
        self.default_timeout = default_timeout
        self.generation = generation
        self.closed = False
        self.tx: list[str] | None = None
        self.aborted = False
        self.readonly = False
        self.in_tx_status = False
        self.savepoints: dict[str, int] = {}
        self.xid: int | None = None

    def is_closed(self) -> bool:
        return self.closed

    # -- the calls ---------------------------------------------------------------------------

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        result = await self._text(query, args, timeout)
        return result if isinstance(result, str) else "SELECT"

    async def fetch(self, query: str, *args: Any, timeout: float | None = None) -> list[Any]:
        result = await self._text(query, args, timeout)
        return result if isinstance(result, list) else []

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None) -> Any:
        rows = await self.fetch(query, *args, timeout=timeout)
        return rows[0] if rows else None

    async def fetchval(
        self, query: str, *args: Any, column: int = 0, timeout: float | None = None
    ) -> Any:
        row = await self.fetchrow(query, *args, timeout=timeout)
        return None if row is None else row[column]

    async def executemany(
        self, command: str, args: Sequence[Sequence[Any]], *, timeout: float | None = None
    ) -> None:
        if self.closed:
            raise NotSent("connection is closed")
        atomic = self.flavor != "mysql" and self.tx is None
        if atomic:
            self._begin(readonly=False)
        try:
            for n, row in enumerate(args):
                # Drivers check the connection before the first row only (the MySQL adapter
                # reports a later failure as a lost connection, never as unsent).
                await self._statement(command, tuple(row), timeout, first=n == 0)
        except BaseException:
            if atomic and self.tx is not None and not self.closed:
                self._rollback()
            raise
        if atomic and self.tx is not None:
            self._commit()

    # -- the server's side -------------------------------------------------------------------

    async def _text(self, query: str, args: tuple[Any, ...], timeout: float | None) -> Any:
        if self.closed:
            raise NotSent("connection is closed")
        statements = [s.strip() for s in query.split(";") if s.strip()]
        if self.flavor == "sqlite" and len(statements) > 1:
            raise QueryError("You can only execute one statement at a time")
        implicit = self.flavor == "postgresql" and len(statements) > 1 and self.tx is None
        result: Any = None
        try:
            for n, st in enumerate(statements):
                if implicit and self.tx is None:
                    self._begin(readonly=False)
                result = await self._statement(st, args, timeout, first=n == 0)
        except BaseException:
            if implicit and self.tx is not None and not self.closed:
                self._rollback()
            raise
        if implicit and self.tx is not None:
            self._commit()
        return result

    async def _statement(
        self, st: str, args: tuple[Any, ...], timeout: float | None, *, first: bool
    ) -> Any:
        script = SCRIPT.get()
        fault = script.next() if script is not None else None
        kind = None if fault is None else fault.kind
        if kind in ("unsent", "client") and not first:
            kind = "lost_before"  # a driver finds those before it writes the request, only
        if fault is not None and fault.down:
            loop = asyncio.get_running_loop()
            self.server.down_until = max(self.server.down_until, loop.time() + fault.down)
        if kind == "unsent":
            self.die()
            raise NotSent("connection is closed")
        if kind == "client":
            self.die()  # as asyncpg does after an encoding error in the query text
            raise UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed")
        if kind == "lost_before":
            self.die()
            raise Lost("connection was closed in the middle of operation")
        if kind == "hang_before":
            await self._hang(timeout)
        if kind == "retryable":
            self._failed(race=True)
            raise Race("deadlock detected")
        if kind == "query":
            self._failed(race=False)
            raise QueryError("injected query error")
        try:
            result = self._apply(st, args)
        except QueryError:
            self._failed(race=False)
            raise
        self.in_tx_status = self.tx is not None
        if kind == "lost_after":
            self.die()
            raise Lost("connection was closed in the middle of operation")
        if kind == "hang_after":
            await self._hang(timeout)
        await asyncio.sleep(0)
        return result

    async def _hang(self, timeout: float | None) -> None:
        bound = self.default_timeout if timeout is None else timeout
        await asyncio.sleep(3600 if bound is None else bound)
        raise TimeoutError

    def _failed(self, *, race: bool) -> None:
        if self.tx is None:
            return
        if self.flavor == "postgresql":
            self.aborted = True
        elif self.flavor == "mysql" and race:
            self.tx, self.aborted = None, False  # rolled back whole; the status stays stale
        if self.flavor != "mysql":
            self.in_tx_status = self.tx is not None

    def _apply(self, st: str, args: tuple[Any, ...]) -> Any:
        u = " ".join(st.upper().split())
        if u.startswith(("BEGIN", "START TRANSACTION")):
            if self.tx is not None and self.flavor == "mysql":
                self._commit()
            if self.tx is None:
                self._begin(readonly="READ ONLY" in u)
            return "BEGIN"
        if u == "COMMIT":
            if self.tx is None:
                if self.flavor == "sqlite":
                    raise QueryError("cannot commit - no transaction is active")
                return "COMMIT"
            if self.aborted:
                self._rollback()
                return "ROLLBACK"
            self._commit()
            return "COMMIT"
        if u == "ROLLBACK":
            self._rollback()
            return "ROLLBACK"
        if u.startswith(("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")):
            return self._savepoint(u)
        if self.aborted:
            raise QueryError("current transaction is aborted")
        if u.startswith("SELECT SIDE_FN("):
            # A VOLATILE function with an effect outside the tables (a message sent): a
            # read-only transaction does not stop it, nor does a rollback undo it.
            self.server.committed.append(str(args[0]) if args else st.split("'")[1])
            return [(1,)]
        if u.startswith(("INSERT INTO LOG VALUES", "SELECT WRITE_FN(")):
            ident = str(args[0]) if args else st.split("'")[1]
            self._write(ident)
            return [(1,)] if u.startswith("SELECT") else "INSERT 0 1"
        if u.startswith("CREATE TABLE"):
            if self.flavor == "mysql" and self.tx is not None:
                self._commit()  # the implicit commit: the transaction is over
            return "CREATE TABLE"
        if u == "SELECT V FROM LOG":
            return [(v,) for v in [*self.server.committed, *(self.tx or [])]]
        if u == "DO 0":
            return "DO"
        if u == "SELECT XACT_MARK()":
            return [(None if self.xid is None else str(self.xid), "run 1")]
        if u == "SELECT XACT_STATUS($1)":
            return [(self.server.xacts.get(int(args[0]), "future"), "run 1")]
        if u in ("SELECT 1", "SELECT STABLE_FN()"):
            return [(1,)]
        raise QueryError(f"syntax error: {st}")

    def _write(self, ident: str) -> None:
        if ident.startswith("!"):
            raise QueryError("duplicate key value violates unique constraint")
        if self.readonly:
            raise WriteRefused("cannot execute INSERT in a read-only transaction")
        if self.tx is not None:
            self.tx.append(ident)
            if self.xid is None:
                self.xid, self.server.next_xid = self.server.next_xid, self.server.next_xid + 1
                self.server.xacts[self.xid] = "in progress"
        else:
            self.server.committed.append(ident)

    def _savepoint(self, u: str) -> str:
        if self.tx is None:
            raise QueryError("savepoint outside a transaction")
        name = u.split()[-1]
        if u.startswith("SAVEPOINT"):
            if self.aborted:
                raise QueryError("current transaction is aborted")
            self.savepoints[name] = len(self.tx)
        elif u.startswith("ROLLBACK"):
            del self.tx[self.savepoints[name] :]
            self.aborted = False
        else:
            self.savepoints.pop(name, None)
        return "SAVEPOINT"

    def _begin(self, *, readonly: bool) -> None:
        self.tx, self.readonly, self.aborted = [], readonly, False
        self.savepoints.clear()

    def _end(self, outcome: str) -> None:
        if self.xid is not None:
            self.server.xacts[self.xid] = outcome
        self.xid = None
        self.tx, self.readonly, self.aborted = None, False, False

    def _commit(self) -> None:
        if self.tx:
            self.server.committed.extend(self.tx)
        self._end("committed")

    def _rollback(self) -> None:
        self._end("aborted")

    def die(self) -> None:
        """The connection goes: the server rolls back what it had open."""
        self.closed = True
        self._rollback()


@asynccontextmanager
async def scripted(faults: Sequence[Fault]) -> AsyncIterator[Script]:
    """Run the enclosed call with ``faults``."""
    script = Script(faults)
    token = SCRIPT.set(script)
    try:
        yield script
    finally:
        SCRIPT.reset(token)
