"""The SQLite classification table: one test per row, real errors where SQLite can be made to
raise them, plus the fallbacks (name only, message only). What every driver shares (query
errors by class of failure, generic errors, the cause chain, the closed flag, connect errors,
``unsent``) is in ``tests/backends/test_classify.py``."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from resilientdb.backends.base import ErrorKind
from resilientdb.backends.sqlite import (
    EXTENDED_KINDS,
    PRIMARY_KINDS,
    DatabaseFileMoved,
    classify_error,
)

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY


def coded(code: int, message: str = "boom") -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError(message)
    exc.sqlite_errorcode = code
    exc.sqlite_errorname = next(
        (n for n in dir(sqlite3) if n.startswith("SQLITE_") and getattr(sqlite3, n) == code),
        f"SQLITE_UNKNOWN_{code}",
    )
    return exc


def raised(fn: Callable[..., object], *args: object, **kwargs: object) -> sqlite3.Error:
    with pytest.raises(sqlite3.Error) as info:
        fn(*args, **kwargs)
    return info.value


@pytest.fixture
def db_path(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "t.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    yield path


# -- every row of the tables, by code ------------------------------------------------------------


@pytest.mark.parametrize(("code", "kind"), sorted(PRIMARY_KINDS.items()))
def test_primary_table_row(code: int, kind: ErrorKind) -> None:
    assert classify_error(coded(code)) is kind


@pytest.mark.parametrize(("code", "kind"), sorted(EXTENDED_KINDS.items()))
def test_extended_table_row(code: int, kind: ErrorKind) -> None:
    assert code & 0xFF in PRIMARY_KINDS  # an override of a family...
    assert PRIMARY_KINDS[code & 0xFF] is not kind or code == sqlite3.SQLITE_BUSY_SNAPSHOT
    assert classify_error(coded(code)) is kind


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (sqlite3.SQLITE_BUSY_RECOVERY, R),
        (773, R),  # SQLITE_BUSY_TIMEOUT
        (sqlite3.SQLITE_LOCKED_SHAREDCACHE, R),
        (sqlite3.SQLITE_IOERR_READ, C),
        (sqlite3.SQLITE_IOERR_SHORT_READ, C),
        (sqlite3.SQLITE_IOERR_FSYNC, C),
        (sqlite3.SQLITE_IOERR_LOCK, C),
        (sqlite3.SQLITE_CORRUPT_VTAB, P),
        (sqlite3.SQLITE_CANTOPEN_ISDIR, P),
        (sqlite3.SQLITE_READONLY_RECOVERY, Q),
        (sqlite3.SQLITE_READONLY_DIRECTORY, Q),
    ],
)
def test_extended_codes_follow_their_family(code: int, kind: ErrorKind) -> None:
    assert classify_error(coded(code)) is kind


# -- the same rows, provoked for real -------------------------------------------------------------


def test_real_busy(db_path: str) -> None:
    holder = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    other = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    holder.execute("BEGIN IMMEDIATE")
    try:
        exc = raised(other.execute, "INSERT INTO t VALUES (2)")
        assert exc.sqlite_errorcode == sqlite3.SQLITE_BUSY
        assert classify_error(exc) is R
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        other.close()


def test_real_busy_snapshot(db_path: str) -> None:
    reader = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    writer = sqlite3.connect(db_path, isolation_level=None, timeout=0)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM t").fetchall()  # pins a WAL snapshot
        writer.execute("INSERT INTO t VALUES (2)")  # makes it stale
        exc = raised(reader.execute, "INSERT INTO t VALUES (3)")
        assert exc.sqlite_errorcode == sqlite3.SQLITE_BUSY_SNAPSHOT
        assert classify_error(exc) is R
    finally:
        reader.close()
        writer.close()


def test_real_locked(db_path: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        cur = conn.execute("SELECT * FROM t")  # a statement still reading t
        exc = raised(conn.execute, "DROP TABLE t")
        assert exc.sqlite_errorcode == sqlite3.SQLITE_LOCKED
        assert classify_error(exc) is R
        cur.close()
    finally:
        conn.close()


def test_real_locked_sharedcache() -> None:
    uri = "file:rdb_shared_cache_test?mode=memory&cache=shared"
    a = sqlite3.connect(uri, uri=True, isolation_level=None)
    b = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        a.execute("CREATE TABLE s (x)")
        a.execute("BEGIN")
        a.execute("INSERT INTO s VALUES (1)")
        exc = raised(lambda: b.execute("SELECT * FROM s").fetchall())
        assert exc.sqlite_errorcode == sqlite3.SQLITE_LOCKED_SHAREDCACHE
        assert classify_error(exc) is R
    finally:
        a.close()
        b.close()


def test_real_cantopen(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    exc = raised(sqlite3.connect, f"file:{missing}?mode=rw", uri=True)
    assert exc.sqlite_errorcode == sqlite3.SQLITE_CANTOPEN
    assert classify_error(exc) is P
    assert not missing.exists()  # mode=rw never creates


def test_real_notadb(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 200)
    conn = sqlite3.connect(junk)
    try:
        exc = raised(conn.execute, "SELECT count(*) FROM sqlite_master")
        assert exc.sqlite_errorcode == sqlite3.SQLITE_NOTADB
        assert classify_error(exc) is P
    finally:
        conn.close()


def test_real_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t SELECT randomblob(500) FROM (SELECT 1 UNION SELECT 2)")
    conn.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[page : 2 * page] = b"\xab" * page  # the table's root page
    path.write_bytes(bytes(data))
    conn = sqlite3.connect(path)
    try:
        exc = raised(lambda: conn.execute("SELECT count(*) FROM t").fetchall())
        assert exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_CORRUPT
        assert classify_error(exc) is P
    finally:
        conn.close()


def test_real_full(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "f.db", isolation_level=None)
    try:
        conn.execute("PRAGMA max_page_count = 3")
        conn.execute("CREATE TABLE big (x)")
        exc = raised(conn.execute, "INSERT INTO big SELECT randomblob(100000)")
        assert exc.sqlite_errorcode == sqlite3.SQLITE_FULL
        assert classify_error(exc) is Q
    finally:
        conn.close()


def test_real_readonly(db_path: str) -> None:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        exc = raised(conn.execute, "INSERT INTO t VALUES (9)")
        assert exc.sqlite_errorcode == sqlite3.SQLITE_READONLY
        assert classify_error(exc) is Q
    finally:
        conn.close()


def test_real_readonly_dbmoved(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    conn = sqlite3.connect(path, isolation_level=None)  # rollback journal: SQLite notices
    try:
        conn.execute("CREATE TABLE q (x)")
        os.rename(path, tmp_path / "m2.db")
        exc = raised(conn.execute, "INSERT INTO q VALUES (1)")
        assert exc.sqlite_errorcode == sqlite3.SQLITE_READONLY_DBMOVED
        assert classify_error(exc) is C
    finally:
        conn.close()


def test_real_interrupt() -> None:
    conn = sqlite3.connect(":memory:")
    conn.set_progress_handler(lambda: 1, 10)  # aborts like interrupt() does
    try:
        exc = raised(
            lambda: conn.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1e6) "
                "SELECT count(*) FROM c"
            ).fetchall()
        )
        assert exc.sqlite_errorcode == sqlite3.SQLITE_INTERRUPT
        assert classify_error(exc) is Q
    finally:
        conn.close()


def test_real_query_errors(db_path: str) -> None:
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("CREATE TABLE u (id INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO u VALUES (1)")
        for sql, params in [
            ("SELEC 1", ()),
            ("SELECT * FROM no_such_table", ()),
            ("INSERT INTO u VALUES (1)", ()),
            ("SELECT ?", (1, 2)),  # ProgrammingError, no code
            ("SELECT 1; SELECT 2", ()),  # ProgrammingError, no code
        ]:
            assert classify_error(raised(conn.execute, sql, params)) is Q, sql
    finally:
        conn.close()


# -- fallbacks and client-side rows ---------------------------------------------------------------


def test_name_without_code() -> None:
    exc = sqlite3.OperationalError("whatever")
    exc.sqlite_errorname = "SQLITE_BUSY_SNAPSHOT"
    assert classify_error(exc) is R
    exc.sqlite_errorname = "SQLITE_IOERR_WRITE"
    assert classify_error(exc) is C
    exc.sqlite_errorname = "SQLITE_connect"  # not a code: ignored, then the message decides
    assert classify_error(exc) is Q


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("database is locked", R),
        ("database table is locked: t", R),
        ("disk I/O error", C),
        ("unable to open database file", P),
        ("file is not a database", P),
        ("database disk image is malformed", P),
        ('near "SELEC": syntax error', Q),
    ],
)
def test_message_only_fallback(message: str, kind: ErrorKind) -> None:
    assert classify_error(sqlite3.OperationalError(message)) is kind


def test_database_file_moved_carries_its_code() -> None:
    exc = DatabaseFileMoved("/data/app.db")
    assert exc.sqlite_errorcode == sqlite3.SQLITE_READONLY_DBMOVED
    assert isinstance(exc, sqlite3.OperationalError)
    assert "/data/app.db" in str(exc)


def test_binding_error_is_a_query_error() -> None:
    assert classify_error(sqlite3.InterfaceError("Error binding parameter 1")) is Q
