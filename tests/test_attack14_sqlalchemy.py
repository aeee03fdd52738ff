"""Attack on issue 14's SQLAlchemy Core support: a table's Python-side column defaults
(``Column(default=...)``) and ``onupdate=`` values are computed by SQLAlchemy's execution, not
by its compiler. A statement compiled and run without them wrote NULL in their place: an
``insert()`` lost the default, every ``update()`` overwrote the ``onupdate`` column with NULL.
On each real server, outside and inside a transaction, and with ``executemany``."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select, update
from sqlalchemy.schema import CreateTable, DropTable

from harness.servers import MariaDBServer, PostgresServer
from resilientdb import Supervisor
from resilientdb._params import prepare

_tokens = itertools.count(1)
metadata = MetaData()
items = Table(
    "attack14_defaults",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(40)),
    Column("kind", String(40), default="plain"),  # a scalar default
    Column("token", String(40), default=lambda: f"t{next(_tokens)}"),  # a callable
    Column("label", String(80), default=lambda ctx: f"{ctx.get_current_parameters()['name']}!"),
    Column("stamp", String(40), onupdate=lambda: "changed"),
)


async def exercise(dsn: str) -> None:
    async with Supervisor(dsn, max_size=2) as sup:
        db = sup.db
        await db.execute(DropTable(items, if_exists=True))
        await db.execute(CreateTable(items))
        await db.execute(insert(items).values(id=1, name="ann"))
        await db.execute(insert(items), {"id": 2, "name": "bob", "kind": "given"})
        await db.executemany(insert(items), [{"id": 3, "name": "cy"}, {"id": 4, "name": "di"}])
        async with db.transaction() as tx:
            await tx.execute(insert(items).values(id=5, name="ed"))
            await tx.execute(update(items).where(items.c.id == 5).values(name="eve"))
        await db.execute(update(items).where(items.c.id == 1).values(name="anne"))
        rows = await db.fetch(select(items).order_by(items.c.id))
        got = [(r["id"], r["kind"], r["token"], r["label"], r["stamp"]) for r in rows]
        assert [g[1] for g in got] == ["plain", "given", "plain", "plain", "plain"]
        tokens = [g[2] for g in got]
        assert all(t and t.startswith("t") for t in tokens) and len(set(tokens)) == 5, tokens
        assert [g[3] for g in got] == ["ann!", "bob!", "cy!", "di!", "ed!"]
        assert [g[4] for g in got] == ["changed", None, None, None, "changed"]
        await db.execute(DropTable(items))


async def test_defaults_on_sqlite(tmp_path: Path) -> None:
    await exercise(f"sqlite:///{tmp_path / 'defaults.db'}")


async def test_defaults_on_postgres(pg: PostgresServer) -> None:
    await exercise(pg.dsn())


async def test_defaults_on_mariadb(mariadb: MariaDBServer) -> None:
    await exercise(mariadb.dsn())


@pytest.mark.parametrize("family", ["postgresql", "mysql", "sqlite"])
def test_a_value_given_wins_over_the_default(family: str) -> None:
    _, values = prepare(insert(items).values(id=1, name="x", token="mine"), (), family)
    assert "mine" in values and "plain" in values
    sql, values = prepare(update(items).values(name="y", stamp="set"), (), family)
    assert values == ("y", "set") and "stamp" in sql


def test_a_default_that_needs_the_database_is_refused() -> None:
    """A default SQLAlchemy would fetch with a query of its own before the statement (a SQL
    expression for a primary key on MySQL, which has no RETURNING) cannot be computed here:
    refused before anything is sent, never NULL in its place."""
    table = Table(
        "attack14_pk",
        MetaData(),
        Column("id", Integer, primary_key=True, default=func.abs(1)),
        Column("n", Integer),
    )
    with pytest.raises(TypeError, match=r"'id'.*give the value explicitly"):
        prepare(insert(table).values(n=1), (), "mysql")
    sql, values = prepare(insert(table).values(n=1), (), "postgresql")  # inline there
    assert "abs(" in sql and values == (1, 1)


@pytest.mark.parametrize("family", ["postgresql", "mysql", "sqlite"])
def test_multi_row_values_get_a_default_per_row(family: str) -> None:
    rows = [{"id": 6, "name": "f"}, {"id": 7, "name": "g"}]
    _, values = prepare(insert(items).values(rows), (), family)
    assert values[2:5] == ("plain", values[3], "f!") and values[7:10] == ("plain", values[8], "g!")
    assert values[3] != values[8] and None not in values
