"""Attack round 2, SQLite: statements that open a transaction through fetch and friends."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from resilientdb import OutcomeUnknown, Supervisor, TransactionRolledBack
from tests.audit_support import outcome_of


@pytest.mark.parametrize(
    ("op", "text"),
    [
        ("fetch", "BEGIN"),
        ("fetchval", "BEGIN IMMEDIATE"),
        ("execute", "SAVEPOINT s"),
        ("fetchrow", "BEGIN EXCLUSIVE"),
    ],
)
async def test_sqlite2_opening_statement_then_pool_stays_clean(
    tmp_path: Path, op: str, text: str
) -> None:
    """A call that opens a transaction and leaves it open is rolled back (it wrote nothing:
    success, or an error that says nothing was applied); the next write on the pool commits
    normally and the file is not left locked."""
    path = tmp_path / "a.db"
    c = sqlite3.connect(path)
    c.execute("CREATE TABLE log (id TEXT)")
    c.commit()
    c.close()
    async with Supervisor(f"sqlite:///{path}?timeout=1", max_size=2) as sup:
        outcome = await outcome_of(getattr(sup.db, op)(text))
        failed = isinstance(outcome, Exception)
        assert not failed or isinstance(outcome, TransactionRolledBack | OutcomeUnknown), outcome
        res = await outcome_of(sup.db.execute("INSERT INTO log VALUES ('a')", timeout=3))
        assert not isinstance(res, Exception), res
    c = sqlite3.connect(path)
    try:
        assert c.execute("SELECT id FROM log").fetchall() == [("a",)]
    finally:
        c.close()
