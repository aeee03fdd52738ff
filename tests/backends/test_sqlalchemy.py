"""SQLAlchemy Core statements on every backend, inside and outside transactions, and the
replay rules judging the compiled SQL: an insert() cut off mid-flight is OutcomeUnknown and
never replayed, a select() cut off the same way is replayed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.schema import CreateTable, DropTable

from resilientdb import OutcomeUnknown, Supervisor
from tests.backends.conftest import Target
from tests.handles import supervised

metadata = MetaData()
users = Table(
    "sa_users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(40), nullable=False),
    Column("team", String(40)),
)


async def fresh_table(sup: Supervisor) -> None:
    await sup.db.execute(DropTable(users, if_exists=True))
    await sup.db.execute(CreateTable(users))


async def test_core_statements_outside_transactions(target: Target) -> None:
    async with Supervisor(target.dsn, max_size=2) as sup:
        db = sup.db
        await fresh_table(sup)
        await db.execute(insert(users).values(id=1, name="ann", team="a"))
        await db.execute(insert(users), {"id": 2, "name": "bob", "team": "b%"})
        await db.executemany(
            insert(users),
            [{"id": 3, "name": "cy", "team": "a"}, {"id": 4, "name": "di", "team": None}],
        )
        rows = await db.fetch(select(users).where(users.c.team == "a").order_by(users.c.id))
        assert [(r["id"], r["name"]) for r in rows] == [(1, "ann"), (3, "cy")]
        row = await db.fetchrow(select(users.c.name).where(users.c.id.in_([2, 4, 99])))
        assert row is not None and row["name"] in ("bob", "di")
        assert await db.fetchval(select(func.count()).select_from(users)) == 4
        streamed = [r["id"] async for r in db.iterate(select(users).order_by(users.c.id), batch=3)]
        assert streamed == [1, 2, 3, 4]
        # A literal % and a LIKE pattern survive the MySQL format paramstyle, with and
        # without values to format.
        assert await db.fetchval(select(users.c.name).where(users.c.team.like("b%"))) == "bob"
        assert await db.fetchval(text("SELECT '100%'")) == "100%"
        mysql = target.dialect.name == "mysql"
        percent = text("SELECT CONCAT(:x, '%')" if mysql else "SELECT CAST(:x AS text) || '%'")
        assert await db.fetchval(percent, {"x": "5"}) == "5%"
        await db.execute(update(users).where(users.c.id == 4).values(team="d"))
        await db.execute(delete(users).where(users.c.id == bindparam("gone")), {"gone": 3})
        names = await db.fetch(select(users.c.name, users.c.team).order_by(users.c.id))
        assert [tuple(r) for r in names] == [("ann", "a"), ("bob", "b%"), ("di", "d")]
        # RETURNING: read back, and never judged read-only (see the replay test below).
        returned = await db.fetchval(insert(users).values(id=5, name="ed").returning(users.c.id))
        assert returned == 5
        assert sup.db.statistics().replays == 0


async def test_core_statements_in_transactions(target: Target) -> None:
    async with Supervisor(target.dsn, max_size=2) as sup:
        db = sup.db
        await fresh_table(sup)
        async with db.transaction() as tx:
            await tx.execute(insert(users).values(id=1, name="ann"))
            await tx.executemany(insert(users), [{"id": 2, "name": "b"}, {"id": 3, "name": "c"}])
            # The same task's calls on db join the transaction.
            assert await db.fetchval(select(func.count()).select_from(users)) == 3
            assert (await tx.fetchrow(select(users.c.name).where(users.c.id == 2)))["name"] == "b"
            in_tx = tx.iterate(select(users.c.id).where(users.c.id > 1).order_by(users.c.id))
            assert [r[0] async for r in in_tx] == [2, 3]
        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                await tx.execute(delete(users))
                assert await tx.fetch(select(users)) == []
                raise RuntimeError("roll back")
        assert await db.fetchval(select(func.count()).select_from(users)) == 3

        async def rename(tx: Any, uid: int) -> None:
            await tx.execute(update(users).where(users.c.id == uid).values(name="renamed"))

        await db.run_in_transaction(rename, 1)
        assert await db.fetchval(select(users.c.name).where(users.c.id == 1)) == "renamed"


def test_misuse_is_refused_before_anything_is_sent() -> None:
    from resilientdb._params import prepare

    with pytest.raises(TypeError, match="one mapping"):
        prepare(select(users), (1, 2), "postgresql")
    with pytest.raises(TypeError, match="not a SQLAlchemy statement that can be executed"):
        prepare(users.c.id == 1, (), "postgresql")
    with pytest.raises(TypeError, match="row 1 is not a mapping"):
        prepare(insert(users), ([{"id": 1, "name": "a"}, (2, "b")],), "sqlite", many=True)
    with pytest.raises(ValueError, match="row 1 has other keys"):
        prepare(insert(users), ([{"id": 1, "name": "a"}, {"id": 2}],), "sqlite", many=True)
    with pytest.raises(ValueError, match="different SQL"):
        stmt = select(users).where(users.c.id.in_(bindparam("ids", expanding=True)))
        prepare(stmt, ([{"ids": [1]}, {"ids": [1, 2]}],), "sqlite", many=True)


@pytest.mark.parametrize("family", ["postgresql", "mysql", "sqlite"])
def test_dml_constructs_are_never_read_only(family: str) -> None:
    from resilientdb._params import prepare
    from resilientdb._replay import verdict

    inserted = insert(users).values(id=2, name="c").returning(users.c.id).cte()
    statements = [
        insert(users).values(id=1, name="a").returning(users.c.id),
        insert(users).from_select(["id", "name"], select(users.c.id, users.c.name)),
        update(users).values(name="b").returning(users.c.name),
        delete(users).where(users.c.id == 1).returning(users.c.id),
        select(users).where(users.c.id.in_(select(inserted.c.id))),  # WITH ... INSERT
    ]
    for statement in statements:
        sql, _ = prepare(statement, (), family)
        assert not verdict(sql, family).read_only, sql
    sql, _ = prepare(select(users).where(users.c.id == 1), (), family)
    assert verdict(sql, family).read_only  # (the other half: a select is replayed)


class Upsert(type(insert(users))):  # type: ignore[misc]
    """An application's own construct, subclassing SQLAlchemy's."""

    inherit_cache = True


def test_a_subclassed_construct_is_compiled_too() -> None:
    from resilientdb._params import prepare

    sql, args = prepare(Upsert(users).values(id=1, name="a"), (), "sqlite")
    assert sql.startswith("INSERT INTO sa_users") and args == (1, "a")


def slow(target: Target, value: str) -> Any:
    """A select of ``value`` that takes half a second, as a SQLAlchemy statement."""
    if target.dialect.name == "postgres":
        return select(func.concat(literal(value), "")).select_from(func.pg_sleep(0.5))
    sleeper = select(func.sleep(0.5)).subquery()
    return select(func.concat(literal(value), "")).select_from(sleeper)


async def test_insert_construct_not_replayed_select_construct_replayed(
    server_target: Target,
) -> None:
    ledger = Table("ledger", MetaData(), Column("id", String(20), primary_key=True))
    await server_target.admin(server_target.faults.ledger, "app")
    async with supervised(server_target.dsn, max_size=2) as sup:
        insert_task = asyncio.create_task(
            sup.db.execute(insert(ledger).from_select(["id"], slow(server_target, "op-1")))
        )
        await asyncio.sleep(0.2)
        assert await server_target.kill_running("INSERT INTO ledger") == 1
        with pytest.raises(OutcomeUnknown):
            await insert_task
        st = sup.db.statistics()
        assert (st.outcome_unknown, st.replays) == (1, 0)
        # Killed mid-sleep and not replayed: the row is not there.
        assert await sup.db.fetchval(select(func.count()).select_from(ledger)) == 0

        select_task = asyncio.create_task(sup.db.fetchval(slow(server_target, "read-1")))
        await asyncio.sleep(0.2)
        assert await server_target.kill_running("SELECT concat(") == 1
        assert await select_task == "read-1"
        st = sup.db.statistics()
        assert st.outcome_unknown == 1 and st.replays >= 1  # (a retry that sent nothing counts)
