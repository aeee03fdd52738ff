"""Named parameters on the real servers: hypothesis writes queries full of string literals,
comments, quoted identifiers, casts and dollar quotes that hold things looking like
parameters (``:name``, ``%``, ``?``, ``$1``, quotes), and each converted query, run on the
server, must select back exactly the named values and the literals as written."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from resilientdb import OutcomeUnknown, Query, Supervisor
from tests.backends.conftest import Target
from tests.handles import supervised

EXAMPLES = int(os.environ.get("PARAMS_EXAMPLES", "60"))
FAMILY = {"postgres": "postgresql", "mysql": "mysql", "sqlite": "sqlite"}
NAMES = ("a", "b", "Ab", "x_1", "été")
# Characters that mean something to a tokenizer somewhere.
TRICKY = " :%'\"`\\$-/*#;?\n[]a_1"
text = st.text(alphabet=TRICKY, max_size=12)


@dataclass
class Item:
    sql: str
    value: str | None  # what the server returns for it; None: a parameter (see name)
    name: str = ""


def literal(family: str, content: str, dollar: bool, cast: bool) -> str:
    if family == "postgresql":
        if dollar and "$" not in content:
            sql = f"$q${content}$q$"
        elif "\\" in content:
            sql = "E'" + content.replace("\\", "\\\\").replace("'", "\\'") + "'"
        else:
            sql = "'" + content.replace("'", "''") + "'"
        return sql + ("::text" if cast else "")
    if family == "mysql":
        return "'" + content.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + content.replace("'", "''") + "'"


def comment(family: str, content: str, kind: int) -> str:
    if kind == 0 or (kind == 2 and family != "mysql"):
        inner = content.replace("*/", "").replace("/*", "")
        return f"/* {inner} */" if family != "postgresql" else f"/* {inner} /* :a */ */"
    line = content.replace("\n", " ").replace("\r", " ")
    return f"-- {line}\n" if kind == 1 else f"# {line}\n"


def alias(family: str, content: str) -> str:
    name = "".join(c for c in content if not c.isspace()) or "c"
    if family == "mysql":
        return " AS `" + name.replace("`", "``") + "`"
    return ' AS "' + name.replace('"', '""') + '"'


@st.composite
def queries(draw: st.DrawFn, family: str) -> tuple[str, dict[str, str], list[str]]:
    items: list[Item] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            name = draw(st.sampled_from(NAMES))
            cast = family == "postgresql" and draw(st.booleans())
            items.append(Item(f":{name}" + ("::text" if cast else ""), None, name))
        else:
            content = draw(text)
            sql = literal(family, content, draw(st.booleans()), draw(st.booleans()))
            items.append(Item(sql, content))
    parts = []
    for item in items:
        before = ""
        if draw(st.booleans()):
            before = comment(family, draw(text), draw(st.integers(0, 2))) + " "
        after = alias(family, draw(text)) if draw(st.booleans()) else ""
        parts.append(before + item.sql + after)
    sql = "SELECT " + ", ".join(parts)
    if draw(st.booleans()):
        sql += " " + comment(family, draw(text), draw(st.integers(0, 2)))
    used = sorted({i.name for i in items if i.value is None})
    values = {name: draw(text) for name in used}
    expected = [values[i.name] if i.value is None else i.value for i in items]
    return sql, values, expected


def test_converted_queries_bind_exactly_the_named_values(target: Target) -> None:
    family = FAMILY[target.dialect.name]

    with asyncio.Runner() as runner:
        sup = Supervisor(target.dsn, max_size=1)
        runner.run(sup.start())
        try:

            @seed(20261203)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
                database=None,
            )
            @given(case=queries(family))
            def run(case: tuple[str, dict[str, str], list[str]]) -> None:
                sql, values, expected = case
                row = runner.run(sup.db.fetchrow(Query(sql, values)))
                assert row is not None
                assert list(row) == expected, sql

            run()
        finally:
            runner.run(sup.aclose())


async def test_a_bad_query_raises_before_anything_is_sent(target: Target) -> None:
    """Errors in a Query are the caller's: raised at once, nothing sent, no connection taken,
    and a transaction stays usable."""
    async with Supervisor(target.dsn, max_size=1) as sup:
        db = sup.db
        before = db.statistics()
        with pytest.raises(ValueError, match="no value for :b"):
            await db.fetch(Query("SELECT :a, :b", a=1))
        with pytest.raises(TypeError, match="carries its own values"):
            await db.fetchval(Query("SELECT :a", a=1), 2)
        async with db.transaction() as tx:
            with pytest.raises(ValueError, match=":c given but not used"):
                await tx.fetchval(Query("SELECT :a", a=1, c=2))
            with pytest.raises(ValueError, match="unterminated quote"):
                await db.fetchval(Query("SELECT ':a", a=1))  # joined to tx
            assert await tx.fetchval(Query("SELECT :a", a="ok")) == "ok"
            rows = [tuple(r) async for r in tx.iterate(Query("SELECT :a, :b", a="x", b="y"))]
            assert rows == [("x", "y")]
        after = db.statistics()
        assert (after.replays, after.outcome_unknown) == (before.replays, before.outcome_unknown)
        assert await db.fetchval(Query("SELECT :a", a="still")) == "still"
        with pytest.raises(ValueError, match="no value for :b"):
            db.iterate(Query("SELECT :a, :b", a=1))  # raised at once: nothing to close
        assert [r[0] async for r in db.iterate(Query("SELECT :a", a="s"), batch=1)] == ["s"]


async def test_replay_rules_judge_the_converted_text(server_target: Target) -> None:
    """A Query INSERT cut off mid-flight is OutcomeUnknown and not replayed; a Query SELECT
    cut off the same way is replayed."""
    await server_target.admin(server_target.faults.ledger, "app")
    pg = server_target.dialect.name == "postgres"
    sleep = "pg_sleep(0.5)" if pg else "(SELECT SLEEP(0.5)) x"
    async with supervised(server_target.dsn, max_size=2) as sup:
        insert = asyncio.create_task(
            sup.db.execute(Query(f"INSERT INTO ledger SELECT :id FROM {sleep}", id="op-q"))
        )
        await asyncio.sleep(0.2)
        assert await server_target.kill_running("INSERT INTO ledger") == 1
        with pytest.raises(OutcomeUnknown):
            await insert
        assert sup.db.statistics().replays == 0
        count = Query("SELECT COUNT(*) FROM ledger WHERE id = :id", id="op-q")
        assert await sup.db.fetchval(count) == 0
        value = "CONCAT(CAST(:v AS text), '%')" if pg else "CONCAT(:v, '%')"
        read = asyncio.create_task(sup.db.fetchval(Query(f"SELECT {value} FROM {sleep}", v="r")))
        await asyncio.sleep(0.2)
        assert await server_target.kill_running("SELECT CONCAT(") == 1
        assert await read == "r%"
        st = sup.db.statistics()
        assert st.outcome_unknown == 1 and st.replays >= 1
