"""The MySQL/MariaDB classification table: one test per row, PyMySQL's and aiomysql's own
client-side errors, the 2003 wrapper, and the DSN. What every driver shares (query errors by
class of failure, generic errors, the cause chain, the closed flag, connect errors,
``unsent``) is in ``tests/backends/test_classify.py``."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from pymysql import err as myerr

from resilientdb._redact import scrub
from resilientdb.backends.base import ErrorKind
from resilientdb.backends.mysql import CODE_KINDS, MySQLBackend, classify_error
from resilientdb.config import Options, parse_dsn
from resilientdb.errors import ConfigurationError

C, R, P, Q = ErrorKind.CONNECTION, ErrorKind.RETRYABLE, ErrorKind.PERMANENT, ErrorKind.QUERY

# What the error table must say, row by row (docs/design.md).
EXPECTED = {
    2003: C,
    2006: C,
    2013: C,
    2014: C,
    2055: C,
    1040: C,
    1203: C,
    1226: C,
    1053: C,
    1077: C,
    1078: C,
    1080: C,
    1152: C,
    1927: C,
    4031: C,
    1213: R,
    1020: R,  # "record has changed since last read": a lost race, like a deadlock
    1205: R,
    1045: P,
    1044: P,
    1049: P,
    1129: P,
    1130: P,
    1251: P,
    2059: P,
}


def server_error(code: int, message: str = "boom") -> myerr.MySQLError:
    """The exception PyMySQL builds from an error packet with this number."""
    cls = myerr.error_map.get(code) or (
        myerr.InternalError if code < 1000 else myerr.OperationalError
    )
    return cls(code, message)


def backend(dsn: str = "mysql://app:pw-secret-1@127.0.0.1/app", **options: object) -> MySQLBackend:
    return MySQLBackend(parse_dsn(dsn), Options.build(**options))


def test_table_is_complete() -> None:
    assert dict(CODE_KINDS) == EXPECTED


@pytest.mark.parametrize(("code", "kind"), sorted(EXPECTED.items()))
def test_code_table_row(code: int, kind: ErrorKind) -> None:
    assert classify_error(server_error(code)) is kind
    # The kind follows the number, whatever class PyMySQL picked for it.
    assert classify_error(myerr.OperationalError(code, "x")) is kind


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        # aiomysql's _ensure_alive: the connection is known closed, nothing written.
        (myerr.InterfaceError("(0, 'Not connected')"), C),
        (myerr.InterfaceError(0, "Not connected"), C),  # PyMySQL's spelling of the same
        (myerr.InterfaceError("Cancelled during execution"), C),
        (myerr.Error("Already closed"), C),  # ping(reconnect=False) on a closed connection
        (myerr.InternalError("Packet sequence number wrong - got 0 expected 1"), C),
        (myerr.InterfaceError("some other interface problem"), Q),
        (myerr.ProgrammingError("execute() first"), Q),
        (BrokenPipeError(32, "broken pipe"), C),
        (asyncio.IncompleteReadError(b"", 4), C),
        (EOFError(), C),
        (ssl.SSLCertVerificationError("certificate verify failed"), P),
        (TypeError("not all arguments converted during string formatting"), Q),
    ],
)
def test_client_side_rows(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_error(exc) is kind


def test_lost_connection_chains_its_cause() -> None:
    # aiomysql raises 2013 from IncompleteReadError, and 2003 from the connect's OSError.
    lost = myerr.OperationalError(2013, "Lost connection to MySQL server during query")
    lost.__cause__ = asyncio.IncompleteReadError(b"", 4)
    assert classify_error(lost) is C


def test_permanent_cause_beats_the_connect_wrapper() -> None:
    # A failed certificate check arrives as 2003 "Can't connect": retrying cannot fix it.
    exc = myerr.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1'")
    exc.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    assert classify_error(exc) is P
    refused = myerr.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1'")
    refused.__cause__ = ConnectionRefusedError(111, "Connect call failed")
    assert classify_error(refused) is C


# -- DSN and connect arguments ---------------------------------------------------------------


def test_dsn_to_connect_arguments() -> None:
    b = backend("mysql://app:pw-secret-1@db.internal/shop?charset=latin1&program_name=svc")
    kw = b._kwargs
    assert (kw["host"], kw["port"], kw["user"], kw["db"]) == ("db.internal", 3306, "app", "shop")
    assert kw["password"] == "pw-secret-1"
    assert (kw["charset"], kw["program_name"]) == ("latin1", "svc")
    assert kw["autocommit"] is True
    assert kw["connect_timeout"] == 5.0
    sock = backend("mariadb://app@localhost:3307/app?unix_socket=/run/mysqld/mysqld.sock")
    assert sock._kwargs["unix_socket"] == "/run/mysqld/mysqld.sock"
    assert sock._kwargs["port"] == 3307 and sock._kwargs["password"] == ""


def test_ssl_option() -> None:
    on = backend("mysql://app@127.0.0.1/app?ssl=true")._kwargs["ssl"]
    assert isinstance(on, ssl.SSLContext) and on.verify_mode is ssl.CERT_REQUIRED
    assert backend("mysql://app@127.0.0.1/app?ssl=false")._kwargs["ssl"] is None
    with pytest.raises(ConfigurationError, match="ssl"):
        backend("mysql://app@127.0.0.1/app?ssl=maybe")


def test_connect_kwargs_override_and_are_checked() -> None:
    b = backend(connect_kwargs={"port": 3310, "local_infile": True})
    assert b._kwargs["port"] == 3310 and b._kwargs["local_infile"] is True
    with pytest.raises(ConfigurationError, match="autocommit"):
        backend(connect_kwargs={"autocommit": False})
    with pytest.raises(ConfigurationError, match="no_such_argument"):
        backend(connect_kwargs={"no_such_argument": 1})


def test_passwords_are_registered_as_secrets() -> None:
    backend("mysql://app:dsn-pw-8841@127.0.0.1/app", connect_kwargs={"password": "kw-pw-3312"})
    assert "dsn-pw-8841" not in scrub("Access denied (using dsn-pw-8841)")
    assert "kw-pw-3312" not in scrub("echo kw-pw-3312")


def test_stats_before_open() -> None:
    stats = backend(min_size=2, max_size=7).stats()
    assert (stats.size, stats.idle, stats.in_use, stats.min_size, stats.max_size) == (0, 0, 0, 2, 7)


def test_begin_statements() -> None:
    b = backend()
    assert b.begin_statements(None, False) == ("START TRANSACTION",)
    assert b.begin_statements(None, True) == ("START TRANSACTION READ ONLY",)
    # The isolation level must be set before the transaction starts, for that one only.
    assert b.begin_statements("SERIALIZABLE", True) == (
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "START TRANSACTION READ ONLY",
    )
