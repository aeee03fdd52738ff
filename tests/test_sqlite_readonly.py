"""``transaction(readonly=True)`` on SQLite: the server refuses writes inside it (PRAGMA
query_only), as PostgreSQL's and MySQL's read-only transactions do, and nothing of it stays
on the connection afterwards."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from resilientdb import Supervisor


async def test_a_write_in_a_read_only_transaction_is_refused(tmp_path: Path) -> None:
    async with Supervisor(f"sqlite:///{tmp_path / 'ro.db'}", max_size=1) as sup:
        db = sup.db
        await db.execute("CREATE TABLE t (x int)")
        await db.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            async with db.transaction(readonly=True) as tx:
                assert await tx.fetchval("SELECT count(*) FROM t") == 1  # reads work
                await tx.execute("UPDATE t SET x = 2")
        assert await db.fetchval("SELECT x FROM t") == 1  # nothing written
        # The same (only) connection writes again afterwards: query_only was lifted...
        await db.execute("UPDATE t SET x = 3")
        async with db.transaction() as tx:
            await tx.execute("UPDATE t SET x = 4")
        # ... also after a read-only transaction that committed normally.
        async with db.transaction(readonly=True) as tx:
            await tx.fetchval("SELECT x FROM t")
        await db.execute("UPDATE t SET x = 5")
        assert await db.fetchval("SELECT x FROM t") == 5
        assert await db.fetchval("PRAGMA query_only") == 0
