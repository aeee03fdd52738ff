"""The MySQL/MariaDB classification table: one test per row, the fallbacks, and the DSN."""

from __future__ import annotations

import asyncio
import ssl

import pytest
from pymysql import err as myerr

from resilientdb._redact import scrub
from resilientdb.backends.base import ConnectPaused, ErrorKind, PoolClosed
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


@pytest.mark.parametrize("code", [1064, 1062, 1146, 1054, 1317, 1969, 3024, 1365, 1452, 1142])
def test_query_errors_surface(code: int) -> None:
    # syntax, duplicate key, unknown table, unknown column, KILL QUERY, statement timeouts,
    # division by zero (strict mode), foreign key, table access denied: the statement's fault.
    assert classify_error(server_error(code)) is Q


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        # aiomysql's _ensure_alive: the connection is known closed, nothing written.
        (myerr.InterfaceError("(0, 'Not connected')"), C),
        (myerr.InterfaceError(0, "Not connected"), C),  # PyMySQL's spelling of the same
        (myerr.InterfaceError("Cancelled during execution"), C),
        (myerr.Error("Already closed"), C),  # ping(reconnect=False) on a closed connection
        (PoolClosed("the MySQL connection pool is closed"), C),  # the adapter's own
        (myerr.InternalError("Packet sequence number wrong - got 0 expected 1"), C),
        (myerr.InterfaceError("some other interface problem"), Q),
        (myerr.ProgrammingError("execute() first"), Q),
        (ConnectionRefusedError(111, "refused"), C),
        (ConnectionResetError(104, "reset"), C),
        (BrokenPipeError(32, "broken pipe"), C),
        (OSError(113, "no route to host"), C),
        (TimeoutError(), C),
        (asyncio.IncompleteReadError(b"", 4), C),
        (EOFError(), C),
        (ConnectPaused("paused"), C),
        (ssl.SSLCertVerificationError("certificate verify failed"), P),
        (ValueError("not a driver error"), Q),
        (TypeError("not all arguments converted during string formatting"), Q),
    ],
)
def test_client_side_rows(exc: BaseException, kind: ErrorKind) -> None:
    assert classify_error(exc) is kind


def test_cause_chain_is_followed() -> None:
    # aiomysql raises 2013 from IncompleteReadError, and 2003 from the connect's OSError.
    lost = myerr.OperationalError(2013, "Lost connection to MySQL server during query")
    lost.__cause__ = asyncio.IncompleteReadError(b"", 4)
    assert classify_error(lost) is C
    wrapped = RuntimeError("wrapped")
    wrapped.__cause__ = server_error(1927, "Connection was killed")
    assert classify_error(wrapped) is C
    loop = RuntimeError("a")
    loop.__cause__ = loop  # a cycle must not hang
    assert classify_error(loop) is Q


def test_permanent_cause_beats_the_connect_wrapper() -> None:
    # A failed certificate check arrives as 2003 "Can't connect": retrying cannot fix it.
    exc = myerr.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1'")
    exc.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    assert classify_error(exc) is P
    refused = myerr.OperationalError(2003, "Can't connect to MySQL server on '127.0.0.1'")
    refused.__cause__ = ConnectionRefusedError(111, "Connect call failed")
    assert classify_error(refused) is C


class _Conn:
    def __init__(self, closed: bool) -> None:
        self.closed = closed

    def is_closed(self) -> bool:
        return self.closed


def test_closed_flag_turns_an_unknown_error_into_connection() -> None:
    b = backend()
    odd = AssertionError("Protocol error, expecting EOF")
    assert b.classify(odd, _Conn(True)) is C  # type: ignore[arg-type]
    assert b.classify(odd, _Conn(False)) is Q  # type: ignore[arg-type]
    assert b.classify(odd) is Q
    # A known kind is never overridden by the flag.
    assert b.classify(server_error(1213), _Conn(True)) is R  # type: ignore[arg-type]
    assert b.classify(server_error(1045), _Conn(True)) is P  # type: ignore[arg-type]


def test_connect_errors_are_connection_or_permanent() -> None:
    b = backend()
    assert b.classify_connect(myerr.OperationalError(2003, "Can't connect")) is C
    assert b.classify_connect(TimeoutError()) is C  # the whole handshake timed out
    assert b.classify_connect(ConnectPaused("paused")) is C
    assert b.classify_connect(server_error(1040, "Too many connections")) is C
    assert b.classify_connect(server_error(1053)) is C
    assert b.classify_connect(server_error(1045)) is P
    assert b.classify_connect(server_error(1044)) is P
    assert b.classify_connect(server_error(1049)) is P
    assert b.classify_connect(server_error(1213)) is C  # a race in init_command: try again
    assert b.classify_connect(server_error(1064)) is P  # a broken init_command or hook
    assert b.classify_connect(myerr.OperationalError("Couldn't receive server's public key")) is P


def test_unsent_only_for_pre_write_checks() -> None:
    b = backend()
    assert b.unsent(myerr.InterfaceError("(0, 'Not connected')"))
    assert b.unsent(myerr.InterfaceError(0, "Not connected (the server closed the connection)"))
    assert b.unsent(myerr.InterfaceError("Cancelled during execution"))
    assert b.unsent(myerr.Error("Already closed"))
    assert b.unsent(PoolClosed("the MySQL connection pool is closed"))
    # 2013 mid-query: the statement may have run. Its message must not fool the check.
    assert not b.unsent(myerr.OperationalError(2013, "Lost connection to MySQL server"))
    assert not b.unsent(
        myerr.OperationalError(2013, "Lost connection (Not connected: [Errno 107])")
    )
    assert not b.unsent(server_error(1927, "Connection was killed"))
    assert not b.unsent(myerr.InternalError("Packet sequence number wrong - got 0 expected 1"))
    assert not b.unsent(ConnectionResetError())
    assert not b.unsent(TimeoutError())


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
