"""Named parameters (``Query``): the conversion to each driver's paramstyle, its edge cases
and its errors, without a server (tests/backends/test_params.py runs them on the servers)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from resilientdb import Query
from resilientdb._params import prepare
from resilientdb._replay import verdict

PG, MY, LITE = "postgresql", "mysql", "sqlite"


def conv(sql: str, family: str, **params: object) -> tuple[str, tuple[object, ...]]:
    return prepare(Query(sql, **params), (), family)


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        (PG, ("SELECT $1, $2, $1", (1, 2))),
        (MY, ("SELECT %s, %s, %s", (1, 2, 1))),
        (LITE, ("SELECT ?, ?, ?", (1, 2, 1))),
    ],
)
def test_each_family_gets_its_paramstyle_and_a_repeated_name_the_same_value(
    family: str, expected: tuple[str, tuple[object, ...]]
) -> None:
    assert conv("SELECT :a, :b, :a", family, a=1, b=2) == expected


def test_plain_strings_pass_untouched_with_their_args() -> None:
    args = ({"a": 1}, ":b")
    for family in (PG, MY, LITE):
        sql = "SELECT :a, $1, ?, %s"
        got = prepare(sql, args, family)
        assert got[0] is sql and got[1] is args


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT ':x'",
        "SELECT 'it''s :x'",
        'SELECT 1 AS ":x"',
        "SELECT 1 -- :x\n",
        "SELECT 1 /* :x */",
        "SELECT x::int FROM t",
        "SELECT arr[lo:hi] FROM t",
        "SELECT a := 1",
    ],
)
def test_nothing_outside_code_becomes_a_parameter(sql: str) -> None:
    for family in (PG, MY, LITE):
        if family == LITE and "::" in sql:
            continue
        assert conv(sql, family) == (sql, ())


def test_postgresql_quotes_comments_and_casts() -> None:
    sql = (
        "SELECT $$ :a ' $$, $tag$ :a $$ $tag$, E'\\' :a', /* /* :a */ :a */ :b::text, "
        'U&"d:a", x$y, :c'
    )
    out, args = conv(sql, PG, b="B", c="C")
    assert out == (
        "SELECT $$ :a ' $$, $tag$ :a $$ $tag$, E'\\' :a', /* /* :a */ :a */ $1::text, "
        'U&"d:a", x$y, $2'
    )
    assert args == ("B", "C")
    # A \r ends a PostgreSQL line comment, not a MySQL one.
    assert conv("SELECT 1 -- x\r, :a", PG, a=1) == ("SELECT 1 -- x\r, $1", (1,))


def test_mysql_quotes_comments_and_percent() -> None:
    sql = "SELECT 'a\\\\:x', \"b:x\", `c:x`, 100 % 7, '5%' # :x\n, :y --:z"
    out, args = conv(sql, MY, y=1, z=2)
    # `--` is a comment only before a space: here `--:z` is minus minus :z. Every % doubled:
    # PyMySQL formats the whole text.
    assert out == "SELECT 'a\\\\:x', \"b:x\", `c:x`, 100 %% 7, '5%%' # :x\n, %s --%s"
    assert args == (1, 2)
    # No value to format: the driver leaves the text alone, so neither does the conversion.
    assert conv("SELECT '5%'", MY) == ("SELECT '5%'", ())
    # An executable comment runs: what it holds is SQL.
    assert conv("SELECT 1 /*!50000 + :a */", MY, a=1) == ("SELECT 1 /*!50000 + %s */", (1,))


def test_sqlite_identifiers_and_open_comment() -> None:
    assert conv("SELECT [a:b], `c:d`, :x /* :y", LITE, x=1) == (
        "SELECT [a:b], `c:d`, ? /* :y",
        (1,),
    )


def test_escaped_colon() -> None:
    assert conv("SELECT arr[\\:n] , :n", PG, n=1) == ("SELECT arr[:n] , $1", (1,))


def test_backslash_readings_must_agree() -> None:
    # Under standard_conforming_strings=off, 'a\' does not end at the second quote.
    with pytest.raises(ValueError, match="different places"):
        conv("SELECT 'a\\', :x, 'b'", PG, x=1)
    with pytest.raises(ValueError, match="different places"):
        conv('SELECT "a\\", :x, "b"', MY, x=1)
    with pytest.raises(ValueError, match="different places"):
        conv("SELECT 'a\\':x'", MY, x=1)
    # E'' always escapes; a backslash that changes nothing is fine.
    assert conv("SELECT E'a\\'', :x, 'c\\d'", PG, x=1)[0] == "SELECT E'a\\'', $1, 'c\\d'"


@pytest.mark.parametrize(
    ("family", "sql", "match"),
    [
        (PG, "SELECT 'abc", "unterminated quote"),
        (PG, "SELECT /* /* */", "unterminated comment"),
        (PG, "SELECT $a$ x", "unterminated dollar quote"),
        (MY, "SELECT /* x", "unterminated comment"),
        (LITE, "SELECT [x", "unterminated"),
        (PG, "SELECT $1, :a", "driver's own placeholder"),
        (LITE, "SELECT ?, :a", "driver's own placeholder"),
        (LITE, "SELECT $v, :a", "driver's own placeholder"),
        (LITE, "SELECT @v, :a", "driver's own placeholder"),
    ],
)
def test_unreadable_texts_are_refused(family: str, sql: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        conv(sql, family, a=1)


def test_missing_and_unused_names_are_named() -> None:
    with pytest.raises(ValueError, match=r"no value for :b; :c given but not used"):
        conv("SELECT :a, :b", PG, a=1, c=3)
    with pytest.raises(ValueError, match=r"no value for :a"):
        conv("SELECT :a -- :b", PG)
    with pytest.raises(ValueError, match=r":b given but not used"):
        conv("SELECT :a -- :b", PG, a=1, b=2)


def test_names_are_case_sensitive_and_unicode() -> None:
    assert conv("SELECT :Nom, :nom, :été", LITE, Nom=1, nom=2, été=3) == (
        "SELECT ?, ?, ?",
        (1, 2, 3),
    )


def test_call_shape_misuse() -> None:
    with pytest.raises(TypeError, match="carries its own values"):
        prepare(Query("SELECT :a", a=1), (2,), PG)
    with pytest.raises(TypeError, match="mapping"):
        Query("SELECT :a", [1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="both"):
        Query("SELECT :a", {"a": 1}, a=2)
    with pytest.raises(TypeError, match="sql must be a str"):
        Query(b"SELECT 1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="letters, digits"):
        Query("SELECT 1", {"a b": 1})
    with pytest.raises(TypeError, match="not a mapping"):
        prepare(Query("INSERT INTO t VALUES (:a)"), ([(1,)],), PG, many=True)
    with pytest.raises(TypeError, match="in the rows"):
        prepare(Query("INSERT INTO t VALUES (:a)", a=1), ([{"a": 1}],), PG, many=True)
    with pytest.raises(TypeError, match="rows is a list"):
        prepare(Query("INSERT INTO t VALUES (:a)"), ({"a": 1},), PG, many=True)
    with pytest.raises(ValueError, match=r"\(row 1\): no value for :a"):
        prepare(Query("INSERT INTO t VALUES (:a)"), ([{"a": 1}, {}],), PG, many=True)
    with pytest.raises(TypeError, match="not int"):
        prepare(5, (), PG)
    with pytest.raises(ValueError, match="not supported"):
        conv("SELECT :a", "oracle", a=1)
    # A mapping given to Query is copied: changing it afterwards changes nothing.
    values = {"a": 1}
    q = Query("SELECT :a", values)
    values["a"] = 2
    assert prepare(q, (), PG)[1] == (1,)
    assert "1" not in repr(Query("SELECT :secret", secret=1))
    # The positional-only names of Query are free for parameters.
    assert prepare(Query("SELECT :sql, :params", sql=1, params=2), (), PG) == (
        "SELECT $1, $2",
        (1, 2),
    )


def test_executemany_rows_become_tuples_and_mysql_always_doubles_percent() -> None:
    rows = [{"a": 1, "b": "x"}, {"b": "y", "a": 2}]
    assert prepare(Query("INSERT INTO t VALUES (:a, :b, '%')"), (rows,), MY, many=True) == (
        "INSERT INTO t VALUES (%s, %s, '%%')",
        ([(1, "x"), (2, "y")],),
    )
    # A batch is formatted by PyMySQL per row even when a row has no values.
    assert prepare(Query("INSERT INTO t VALUES ('%')"), ([{}],), MY, many=True) == (
        "INSERT INTO t VALUES ('%%')",
        ([()],),
    )


def test_the_replay_verdict_reads_the_converted_text() -> None:
    sql, _ = conv("INSERT INTO t SELECT :a RETURNING id", PG, a=1)
    assert not verdict(sql, PG).read_only
    sql, _ = conv("SELECT :a", PG, a=1)
    assert verdict(sql, PG).read_only


def test_the_core_does_not_import_sqlalchemy() -> None:
    code = (
        "import sys, resilientdb\n"
        "from resilientdb._params import prepare\n"
        "prepare(resilientdb.Query('SELECT :a', a=1), (), 'postgresql')\n"
        "assert 'sqlalchemy' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
