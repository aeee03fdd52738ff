"""The statement verdict in each backend's own dialect: function calls, statements, commits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilientdb._replay import is_commit, is_read_only, opens_first, verdict

PG, MY, LITE = "postgresql", "mysql", "sqlite"


@pytest.mark.parametrize(
    ("family", "sql"),
    [
        (PG, "SELECT count(*), now(), coalesce(a, b), lower(x) FROM t"),
        (PG, "SELECT pg_catalog.lower(x) FROM t"),
        (PG, "SELECT * FROM generate_series(1, 3) AS g(n)"),
        (PG, "SELECT x::varchar(10), CAST(y AS numeric(5, 2)) FROM t"),
        (PG, "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT * FROM r"),
        (PG, "WITH x(a) AS NOT MATERIALIZED (SELECT 1) SELECT a FROM x"),
        (PG, "SELECT $$it's; DELETE FROM t$$"),  # PostgreSQL's reading only: no MySQL doubt
        (PG, "SELECT random(), gen_random_uuid(), clock_timestamp()"),
        (PG, "SELECT EXISTS (SELECT 1) AND 1 IN (1, 2)"),
        (MY, "SELECT NOW(), COUNT(*), IFNULL(a, 0), JSON_EXTRACT(j, '$.a') FROM t"),
        (MY, "SELECT id FROM t WHERE MATCH (body) AGAINST ('x')"),
        (MY, "SELECT INSERT('abc', 1, 1, 'x')"),  # the string function, not the statement
        (LITE, "SELECT json_extract(x, '$.a'), ifnull(a, 1), typeof(b) FROM t"),
        (LITE, "SELECT * FROM json_each('[1]')"),
    ],
)
def test_read_only_without_a_lookup(family: str, sql: str) -> None:
    v = verdict(sql, family)
    assert v.read_only and not v.lookup
    assert is_read_only(sql, family)


@pytest.mark.parametrize(
    ("sql", "lookup"),
    [
        ("SELECT ins_fn()", {"ins_fn"}),
        ("SELECT * FROM ins_fn()", {"ins_fn"}),  # a set-returning function in FROM
        ("SELECT public.lower(x) FROM t", {"lower"}),  # a user may shadow a built-in
        ("SELECT a, My_Fn(b) FROM t WHERE c = stable_fn()", {"my_fn", "stable_fn"}),
    ],
)
def test_postgres_user_functions_are_looked_up(sql: str, lookup: set[str]) -> None:
    v = verdict(sql, PG)
    assert v.read_only and v.lookup == lookup
    assert not is_read_only(sql, PG)  # without the catalog's answer: not read-only


@pytest.mark.parametrize(
    ("family", "sql"),
    [
        (PG, "SELECT nextval('s')"),
        (PG, "SELECT setval('s', 1)"),
        (PG, "SELECT pg_advisory_lock(1)"),
        (PG, "SELECT pg_terminate_backend(42)"),
        (PG, "SELECT pg_notify('c', 'x')"),
        (PG, 'SELECT "MyFunc"(1)'),  # a call by a quoted name
        (MY, "SELECT my_fn()"),  # a MySQL user function may do anything
        (MY, "SELECT db.f()"),
        (MY, "SELECT GET_LOCK('a', 1)"),
        (MY, "SELECT NEXT VALUE FOR s"),
        (MY, "SELECT `f`(1)"),
        (LITE, "SELECT my_udf(1)"),
        (LITE, "SELECT load_extension('x')"),
    ],
)
def test_calls_that_may_write(family: str, sql: str) -> None:
    assert not verdict(sql, family).read_only


def test_postgres_operators_are_listed() -> None:
    assert verdict("SELECT a +++ b, c->>'k' FROM t WHERE d = 1", PG).operators == {
        "+++",
        "->>",
        "=",
    }


@pytest.mark.parametrize(
    ("family", "sql", "single", "atomic"),
    [
        (PG, "UPDATE t SET v = v + 1 WHERE id = $1", True, True),
        (PG, "INSERT INTO a VALUES (1); UPDATE t SET v = 1", False, True),  # one implicit tx
        (PG, "INSERT INTO a VALUES (1); COMMIT; UPDATE t SET v = 1", False, False),
        (PG, "CALL p()", False, False),  # a procedure may commit as it goes
        (PG, "DO $$ BEGIN PERFORM 1; END $$", False, False),
        (PG, "UPDATE t SET v = 1;", True, True),
        (MY, "INSERT INTO a VALUES (1); UPDATE t SET v = 1", False, False),  # each commits
        (MY, "UPDATE t SET v = v + 1 WHERE id = %s", True, True),
        (MY, "CALL p()", False, False),
        (LITE, "UPDATE t SET v = 1", True, True),
        (LITE, "INSERT INTO a VALUES (1); SELECT 1", False, False),
        (MY, "'unterminated", False, False),
    ],
)
def test_single_and_atomic(family: str, sql: str, single: bool, atomic: bool) -> None:
    v = verdict(sql, family)
    assert (v.single, v.atomic) == (single, atomic)


@pytest.mark.parametrize(
    ("family", "sql", "ends"),
    [
        (MY, "CREATE TABLE IF NOT EXISTS x (a int)", True),
        (MY, "TRUNCATE t", True),
        (MY, "ALTER TABLE t ADD c int", True),
        (MY, "DROP TABLE x", True),
        (MY, "LOCK TABLES t WRITE", True),
        (MY, "SET autocommit = 1", True),
        (MY, "START TRANSACTION", True),
        (MY, "CALL p()", True),
        (MY, "GRANT SELECT ON t TO u", True),
        (MY, "ROLLBACK", True),
        (MY, "ROLLBACK WORK", True),
        (MY, "INSERT INTO t VALUES (1)", False),
        (MY, "SELECT 1", False),
        (MY, "SAVEPOINT s", False),
        (MY, "ROLLBACK TO SAVEPOINT s", False),
        (MY, "ROLLBACK WORK TO s", False),
        (MY, "SET @x = 1", False),
        (MY, "INSERT INTO t VALUES (1); CREATE TABLE x (a int)", True),
        (PG, "COMMIT", True),
        (PG, "END", True),
        (PG, "ABORT", True),
        (PG, "ROLLBACK", True),
        (PG, "PREPARE TRANSACTION 'x'", True),
        (PG, "INSERT INTO t VALUES (1); COMMIT", True),
        (PG, "CREATE TABLE x (a int)", False),  # transactional DDL
        (PG, "ROLLBACK TO SAVEPOINT s", False),
        (PG, "PREPARE q AS SELECT 1", False),
        (LITE, "COMMIT", True),
        (LITE, "CREATE TABLE x (a)", False),
    ],
)
def test_ends_transaction(family: str, sql: str, ends: bool) -> None:
    assert verdict(sql, family).ends_transaction is ends


@pytest.mark.parametrize(
    "sql",
    ["SELECT * FROM t FOR UPDATE", "SELECT * FROM t FOR NO KEY UPDATE", "SELECT 1 FOR SHARE"],
)
def test_locking_clauses(sql: str) -> None:
    assert verdict(sql, PG).locks and verdict(sql, PG).read_only


@settings(max_examples=300, deadline=None)
@given(
    sql=st.text(
        st.sampled_from(list("SELECTINSRUPDAWHfnx()'\";$:,.*=-/ \nCOMITRLBK")), max_size=60
    ),
    family=st.sampled_from([PG, MY, LITE]),
)
def test_never_raises_and_doubts_answer_may_write(sql: str, family: str) -> None:
    v = verdict(sql, family)
    if v.read_only:
        # A read-only verdict never hides a write keyword outside quotes in a simple text.
        assert not sql.strip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
    if not v.runs:
        assert not v.read_only


@pytest.mark.parametrize(
    ("family", "sql", "single", "ends"),
    [
        # MariaDB's SET STATEMENT ... FOR runs the statement after FOR: judged as that one.
        (MY, "SET STATEMENT max_statement_time=30 FOR CALL bump()", False, True),
        (MY, "SET STATEMENT max_statement_time=30 FOR CREATE TABLE t (a int)", True, True),
        (MY, "SET STATEMENT a=(1), b=2 FOR UPDATE t SET v = v + 1", True, False),
        (MY, "SET STATEMENT max_statement_time=1", False, True),  # no FOR: unreadable
        (MY, "SET PASSWORD FOR u@localhost = PASSWORD('x')", True, True),  # commits implicitly
        (MY, "SET @a = 1", True, False),
        # Applied in parts: each table of a MySQL DROP, PostgreSQL's CONCURRENTLY.
        (MY, "DROP TABLE a, b", False, True),
        (MY, "RENAME TABLE a TO b, c TO d", False, True),
        (MY, "DROP TABLE a", True, True),
        (PG, "DROP TABLE a, b", True, False),  # transactional DDL: all or nothing
        (PG, "CREATE INDEX CONCURRENTLY i ON t (a)", False, False),
    ],
)
def test_what_really_runs_and_whether_it_is_one_piece(
    family: str, sql: str, single: bool, ends: bool
) -> None:
    v = verdict(sql, family)
    assert (v.single, v.ends_transaction) == (single, ends)
    assert not v.read_only


def test_set_statement_for_a_read_is_a_read() -> None:
    assert verdict("SET STATEMENT max_statement_time=5 FOR SELECT 1", MY).read_only


@pytest.mark.parametrize(
    ("family", "sql", "expected"),
    [
        (PG, "BEGIN; INSERT INTO t VALUES (1)", True),
        (PG, "START TRANSACTION; INSERT INTO t VALUES (1)", True),
        (PG, "INSERT INTO t VALUES (1); BEGIN", False),  # the INSERT ran before it opened
        (PG, "BEGIN; INSERT INTO t VALUES (1); COMMIT; BEGIN", False),
        (MY, "START TRANSACTION; INSERT INTO t VALUES (1)", True),
        (MY, "SET autocommit = 0; INSERT INTO t VALUES (1)", True),
        (MY, "SET @x = 0; INSERT INTO t VALUES (1)", False),
        (
            MY,
            "BEGIN; INSERT INTO t VALUES (1); CREATE TABLE u (a int); INSERT INTO t VALUES (2)",
            False,
        ),
        (LITE, "BEGIN; INSERT INTO t VALUES (1)", True),
    ],
)
def test_opens_first(family: str, sql: str, expected: bool) -> None:
    assert opens_first(sql, family) is expected


def test_is_commit() -> None:
    assert is_commit("COMMIT", PG) and is_commit("end;", PG) and is_commit("commit", MY)
    assert not is_commit("ROLLBACK", PG) and not is_commit("COMMIT; SELECT 1", PG)
