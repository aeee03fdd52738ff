"""Tests for resilientdb._replay: which statements may be replayed after a lost connection."""

from __future__ import annotations

import random
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilientdb._replay import is_read_only, may_replay

PROPERTY = settings(max_examples=200, deadline=None)

# Read-only in every dialect that could be reading the text.
READ_ONLY = [
    "SELECT 1",
    "select * from users where team = $1",
    "SELECT * FROM t WHERE a = %s AND b = ?",
    "sElEcT 1",
    "  \n\t\r\f\vSELECT 1",
    "-- leading comment\nSELECT 1",
    "/* block */ SELECT 1",
    "/* a */ -- b\n /* c */\nSELECT 1",
    "# MySQL comment\nSELECT 1",
    "(SELECT 1) UNION (SELECT 2)",
    "((SELECT 1))",
    "SHOW search_path",
    "SHOW TABLES",
    "VALUES (1, 'a'), (2, 'b')",
    "TABLE users",
    "EXPLAIN SELECT * FROM t",
    "EXPLAIN VERBOSE SELECT 1",
    "EXPLAIN (COSTS OFF, FORMAT JSON) SELECT 1",
    "EXPLAIN (ANALYZE false) SELECT 1",
    "explain (analyze off, costs false) select 1",
    "EXPLAIN (ANALYZE 0, VERBOSE) SELECT 1",
    "EXPLAIN FORMAT=JSON SELECT 1",
    "EXPLAIN QUERY PLAN SELECT 1",
    "DESCRIBE users",
    "DESC users",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 5) SELECT * FROM t",
    "WITH a AS (SELECT 1), b AS MATERIALIZED (SELECT * FROM a) SELECT * FROM b",
    "WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x",
    "(WITH x AS (SELECT 1) SELECT * FROM x)",
    "SELECT 'DELETE FROM t'",
    "SELECT 'it''s; DROP TABLE t'",
    'SELECT "delete", "a""b" FROM "insert"',
    "SELECT `update`, `a``b` FROM `into`",
    "SELECT [select] FROM t",
    "SELECT $$DELETE$$",
    "SELECT $$ DELETE FROM t $$",
    "SELECT $body$ UPDATE t SET x = 1 $body$ AS src",
    "SELECT $1::int, $2",
    "SELECT * FROM t WHERE note = 'x' -- don't; DELETE FROM t",
    "SELECT 1 /* ; DELETE FROM t */",
    "SELECT 1 /* it's; DELETE FROM t */",
    "SELECT 1 -- trailing comment",
    "SELECT * FROM t FOR UPDATE",
    "SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED",
    "SELECT * FROM t FOR SHARE",
    "SELECT * FROM t LOCK IN SHARE MODE",
    "SELECT 1; SELECT 2;",
    "SELECT 1;;  ; SELECT 2",
    "SELECT replace(name, 'a', 'b') FROM t",
    "SELECT update_count, deleted_at, inserted FROM t",
    "SELECT data->>'k', data @> '{}'::jsonb FROM t WHERE x - -1 > 0",
    "SELECT 5 # 3",
    r"SELECT 'C:\\dir\\'",
    "SELECT E'\\n'",
    "SELECT x FROM t WHERE a LIKE '%delete%' ORDER BY x DESC",
    "SELECT 1 /*+ MAX_EXECUTION_TIME(1000) */",
    "SELECT /* outer /* nested */ */ 1",
]

# Every server stops at a statement that starts with punctuation: nothing after it runs.
STOPS_AT_REJECTED = [
    "/* outer /* nested */ */ SELECT 1",  # MySQL and SQLite read `*/ SELECT 1`
    "SELECT 1; *; DELETE FROM t",
]

NOT_READ_ONLY = [
    # Nothing to run.
    "",
    "   \n",
    "-- only a comment",
    "/* only */",
    "# only",
    ";",
    ";;",
    "(((",
    # Writes and everything else that is not known to be read-only.
    "INSERT INTO t VALUES (1)",
    "insert into t values (1)",
    "UPDATE t SET x = 1",
    "DELETE FROM t",
    "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
    "REPLACE INTO t VALUES (1)",
    "REPLACE t VALUES (1)",
    "CALL proc()",
    "DO $$ BEGIN PERFORM 1; END $$",
    "COPY t TO STDOUT",
    "SET search_path = app",
    "PRAGMA journal_mode = WAL",
    "BEGIN",
    "COMMIT",
    "CREATE TABLE t (id int)",
    "CREATE TABLE t AS SELECT 1",
    "DROP TABLE t",
    "TRUNCATE t",
    "LOCK TABLE t",
    "ANALYZE t",
    "VACUUM",
    "FETCH 10 FROM cur",
    "DELETE FROM t WHERE note = 'SELECT'",
    "/* SELECT */ DELETE FROM t",
    "-- SELECT\nDELETE FROM t",
    "(INSERT INTO t VALUES (1))",
    # Data-modifying WITH.
    "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
    "WITH a AS (SELECT 1), b AS (UPDATE t SET n = n + 1 RETURNING n) SELECT * FROM a, b",
    "with x as ((delete from t returning *)) select 1",
    "WITH a AS (SELECT 1) SELECT * FROM (WITH b AS (INSERT INTO t (SELECT * FROM a) RETURNING id)"
    " SELECT * FROM b) z",
    "WITH m AS (MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE RETURNING *)"
    " SELECT * FROM m",
    "WITH x AS (SELECT 1) UPDATE t SET a = 1",
    "WITH x AS (SELECT 1) DELETE FROM t",
    "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
    "WITH x AS (SELECT 1) REPLACE INTO t SELECT * FROM x",
    "WITH x AS (SELECT * FROM t FOR UPDATE) UPDATE t SET a = 1",
    # EXPLAIN that executes.
    "EXPLAIN ANALYZE SELECT 1",
    "explain analyse select 1",
    "EXPLAIN (ANALYZE) SELECT 1",
    "EXPLAIN (ANALYZE true, BUFFERS) SELECT 1",
    "EXPLAIN (FORMAT JSON, ANALYZE) SELECT 1",
    "EXPLAIN (ANALYZE 1) SELECT 1",
    "EXPLAIN (ANALYZE on) SELECT 1",
    "EXPLAIN (ANALYZE false, ANALYZE) SELECT 1",
    'EXPLAIN ("analyze") SELECT 1',
    "EXPLAIN (ANALYZE false SELECT 1",
    "EXPLAIN FORMAT=TREE ANALYZE SELECT 1",
    "DESCRIBE ANALYZE SELECT 1",
    # SELECT ... INTO.
    "SELECT * INTO new_t FROM t",
    "SELECT * INTO TEMP new_t FROM t",
    "SELECT * FROM t INTO OUTFILE '/tmp/t.csv'",
    "SELECT 1 INTO DUMPFILE '/tmp/x'",
    "SELECT id INTO @v FROM t",
    "(SELECT 1 INTO t)",
    # Several statements.
    "SELECT 1; DELETE FROM t",
    "SELECT 1;\n-- comment\nUPDATE t SET a = 1",
    "SELECT 1 -- c\n; DELETE FROM t",
    "select 1 for update; update t set a = 1",
    "SHOW TABLES; SET x = 1",
    "VALUES (1); INSERT INTO t VALUES (2)",
    "SELECT 1; COMMIT",
    # Unterminated.
    "SELECT 'unterminated",
    'SELECT "unterminated',
    "SELECT `unterminated",
    "SELECT 1 /* unterminated",
    "SELECT 1 /* /* nested, closed once */",
    "SELECT $$unterminated",
    "SELECT $tag$ body $other$",
    "'SELECT'",  # a quoted first token: MariaDB might read a label
    # The dialects disagree on where a literal or comment ends; one of them runs a write.
    r"SELECT 'a\'; DELETE FROM t; -- '",  # PostgreSQL: no backslash escapes
    r"SELECT E'\''; DELETE FROM t; --'",  # PostgreSQL: E'' has them
    "SELECT 1 --x ; DELETE FROM t",  # MySQL: `--x` is minus minus x
    "SELECT 1 /* /* */ ; DELETE FROM t */",  # MySQL, SQLite: comments do not nest
    "SELECT 1 -- x\r; DELETE FROM t",  # PostgreSQL: a line comment ends at CR
    "SELECT 1 AS $$; DELETE FROM t; SELECT $$",  # MySQL: `$$` is an identifier
    "SELECT j[']'] FROM t; DELETE FROM t; --'",  # PostgreSQL: brackets subscript
    "SELECT [a'] FROM t; DELETE FROM t; --'",  # SQLite: [a'] is an identifier
    "SELECT $a(x') FROM t; DELETE FROM t; --'",  # SQLite: $a(x') is a variable
    "SELECT 1 /*!50000 INTO OUTFILE '/tmp/x' */",  # MySQL runs /*! */
    "SELECT /*M! 1; DELETE FROM t; */ 1",  # MariaDB runs /*M! */
    "SELECT 1\x00; DELETE FROM t",
    # Conservative: read-only, but not provably so in every dialect.
    "SELECT 1 # it's MySQL\n",  # PostgreSQL: `#` is an operator and `'` opens a literal
    r"SELECT 'it\'s'",
    "SELECT $$it's$$",
    "SELECT $$ x; y $$",
    "SELECT t.update FROM t",
    "SELECT [delete] FROM t",  # PostgreSQL reads the word DELETE
    "/* outer /* nested */ text */ SELECT 1",  # MySQL runs `text */ SELECT 1`
    "EXPLAIN DELETE FROM t",
    "EXPLAIN (ANALYZE 'false') SELECT 1",
    "\u017felect 1",  # Python upper-cases the long s to S, no server does
]

WRITE_KEYWORDS = [
    "INSERT", "UPDATE", "DELETE", "MERGE", "CREATE", "DROP", "ALTER", "TRUNCATE", "CALL",
    "COPY", "DO", "SET", "GRANT", "REVOKE", "REPLACE", "LOCK", "BEGIN", "START", "COMMIT",
    "ROLLBACK", "SAVEPOINT", "PRAGMA", "VACUUM", "ANALYZE", "REINDEX", "CLUSTER", "REFRESH",
    "LOAD", "HANDLER", "RENAME", "UPSERT", "EXECUTE", "PREPARE", "NOTIFY", "LISTEN", "ATTACH",
    "DETACH", "IMPORT", "COMMENT", "DISCARD", "RESET", "FLUSH", "OPTIMIZE", "REPAIR", "KILL",
]  # fmt: skip
WRITES = [
    "DELETE FROM t",
    "UPDATE t SET a = 1",
    "INSERT INTO t VALUES (1)",
    "DROP TABLE t",
    "CALL p()",
    "MERGE INTO t USING s ON true WHEN MATCHED THEN DELETE",
    "TRUNCATE t",
    "SELECT * INTO t2 FROM t",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
    "EXPLAIN ANALYZE DELETE FROM t",
]


@pytest.mark.parametrize("sql", READ_ONLY + STOPS_AT_REJECTED)
def test_read_only(sql: str) -> None:
    assert is_read_only(sql) is True


@pytest.mark.parametrize("sql", NOT_READ_ONLY)
def test_not_read_only(sql: str) -> None:
    assert is_read_only(sql) is False


def test_table_is_large_enough() -> None:
    assert len(READ_ONLY) + len(STOPS_AT_REJECTED) >= 50
    assert len(NOT_READ_ONLY) >= 50


@pytest.mark.parametrize(
    ("unsent", "idempotent", "sql", "expected"),
    [
        (True, True, "SELECT 1", True),
        (True, True, "DELETE FROM t", True),
        (True, True, None, True),
        (True, False, "SELECT 1", True),
        (True, False, "DELETE FROM t", True),
        (True, False, None, True),
        (True, None, "SELECT 1", True),
        (True, None, "DELETE FROM t", True),
        (True, None, None, True),
        (False, True, "SELECT 1", True),
        (False, True, "DELETE FROM t", True),
        (False, True, None, True),
        (False, False, "SELECT 1", False),
        (False, False, "DELETE FROM t", False),
        (False, False, None, False),
        (False, None, "SELECT 1", True),
        (False, None, "DELETE FROM t", False),
        (False, None, None, False),
    ],
)
def test_may_replay(unsent: bool, idempotent: bool | None, sql: str | None, expected: bool) -> None:
    assert may_replay(unsent=unsent, sql=sql, idempotent=idempotent) is expected


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT " + "a, " * 20_000 + "1",
        "(" * 50_000,
        "'" * 50_000,
        "/*" * 25_000,
        "SELECT " + "$a" * 25_000,
        "SELECT " + "$a(" * 20_000,
        "SELECT '" + "\\'" * 25_000 + "'",
        "SELECT 1;" * 6_000,
        "EXPLAIN (" + "a," * 25_000 + ") SELECT 1",
        "-- " * 20_000,
    ],
)
def test_large_input_is_fast(sql: str) -> None:
    started = time.perf_counter()
    is_read_only(sql)
    assert time.perf_counter() - started < 2.0


# -- properties --------------------------------------------------------------------------------

sql_chars = st.sampled_from(list("'\"`$[]();:,#@?-/*\\ \n\r\tEeSELCTINTOWHAVUDPRabc01é\u00a0"))
comment_text = st.text(st.characters(blacklist_characters="\n\r\x00*/"), max_size=20)
comments = st.lists(
    st.one_of(
        st.text(" \t\n\r\f\v", min_size=1, max_size=4),
        comment_text.map(lambda text: f"-- {text}\n"),
        comment_text.map(lambda text: f"/* {text} */"),
    ),
    max_size=4,
).map("".join)


def recase(sql: str, rnd: random.Random) -> str:
    return "".join(
        (c.swapcase() if rnd.random() < 0.5 else c) if c.isascii() and c.isalpha() else c
        for c in sql
    )


@PROPERTY
@given(st.one_of(st.text(), st.text(sql_chars)))
def test_never_raises(sql: str) -> None:
    assert isinstance(is_read_only(sql), bool)
    assert may_replay(unsent=False, sql=sql, idempotent=None) is is_read_only(sql)


@PROPERTY
@given(comments, st.sampled_from(READ_ONLY + STOPS_AT_REJECTED + NOT_READ_ONLY))
def test_leading_comments_and_whitespace_change_nothing(prefix: str, sql: str) -> None:
    assert is_read_only(prefix + sql) is is_read_only(sql)


@PROPERTY
@given(
    st.sampled_from(READ_ONLY),
    st.text(" \t\n", max_size=3),
    comments,
    st.sampled_from(WRITES),
    st.randoms(use_true_random=False),
)
def test_appended_write_is_not_read_only(
    sql: str, space: str, comment: str, write: str, rnd: random.Random
) -> None:
    assert is_read_only(f"{sql}\n;{space}{comment}{recase(write, rnd)}") is False


@PROPERTY
@given(
    st.sampled_from([*WRITE_KEYWORDS, "INTO", "DELETE FROM t", "UPDATE t SET a = 1"]),
    st.sampled_from(["'", '"', "`"]),
    st.text(st.sampled_from(list("ab ;()-#/*'\"`[]$@:")), max_size=10),
    st.text(st.sampled_from(list("ab ;()-#/*'\"`[]$@:")), max_size=10),
)
def test_write_keyword_in_quotes_is_read_only(
    keyword: str, quote: str, before: str, after: str
) -> None:
    body = (before + keyword + after).replace(quote, quote * 2)
    assert is_read_only(f"SELECT {quote}{body}{quote} AS x FROM t WHERE a = 1") is True


@PROPERTY
@given(st.sampled_from([*WRITE_KEYWORDS, "INTO"]), st.sampled_from(["", "q", "body_1"]))
def test_write_keyword_in_dollar_quotes_is_read_only(keyword: str, tag: str) -> None:
    assert is_read_only(f"SELECT ${tag}${keyword}${tag}$ AS x FROM t") is True


def has_dollar_tag(sql: str) -> bool:
    return re.search(r"\$[A-Za-z_]\w*\$", sql) is not None  # tags are case-sensitive


@PROPERTY
@given(
    st.sampled_from(
        [s for s in READ_ONLY + STOPS_AT_REJECTED + NOT_READ_ONLY if not has_dollar_tag(s)]
    ),
    st.randoms(use_true_random=False),
)
def test_case_changes_nothing(sql: str, rnd: random.Random) -> None:
    assert is_read_only(recase(sql, rnd)) is is_read_only(sql)


@PROPERTY
@given(
    comments,
    st.sampled_from(WRITE_KEYWORDS),
    st.sampled_from([" ", "\n", "\t", "(", ";", "/**/", "-- x\n", "'", "`x`"]),
    st.one_of(st.text(), st.text(sql_chars)),
    st.randoms(use_true_random=False),
)
def test_write_keyword_first_is_not_read_only(
    prefix: str, keyword: str, separator: str, tail: str, rnd: random.Random
) -> None:
    assert is_read_only(prefix + recase(keyword, rnd) + separator + tail) is False
