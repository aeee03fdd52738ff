"""What each driver would refuse at its first connect, refused at construction instead.

A value asyncpg, aiomysql or sqlite3 rejects only when it connects (``sslmode=bogus``, an
unknown charset, a misspelt connect argument) would otherwise pass construction and then
fail every attempt, hours later, as a "failed" backend. Each check here needs no I/O.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import TYPE_CHECKING

from .errors import ConfigurationError

if TYPE_CHECKING:
    from ._dsn import DSN
    from .config import Options

__all__ = ["check_connect_kwargs", "check_dsn_options"]

# The values asyncpg (like libpq) accepts; anything else fails at connect.
_PG_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": (
        "any", "primary", "standby", "prefer-standby", "read-write", "read-only",
    ),
    "gsslib": ("gssapi", "sspi"),
    "ssl_min_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "ssl_max_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
}  # fmt: skip

# Set by the PostgreSQL adapter itself (create_pool / connect would get them twice).
_PG_RESERVED = frozenset({"dsn", "timeout", "command_timeout"})

# sqlite3.connect's keywords (a builtin without a signature to bind against) and
# aiosqlite.connect's own; database, uri and isolation_level are the adapter's (refused there).
_SQLITE_KWARGS = frozenset(
    {"timeout", "detect_types", "check_same_thread", "factory", "cached_statements"}
    | {"iter_chunk_size", "loop", "database", "uri", "isolation_level"}
    | ({"autocommit"} if sys.version_info >= (3, 12) else set())
)


def _bad(shown: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"DSN {shown!r}: {why}")


def check_dsn_options(dsn: DSN, shown: str) -> None:
    """Refuse DSN option values the driver would refuse at connect; ``shown`` is redacted."""
    options = dsn.options
    if dsn.backend == "postgres":
        for name, choices in _PG_CHOICES.items():
            if name in options and options[name] not in choices:
                raise _bad(shown, f"{name} must be one of {', '.join(choices)}")
        _check_pg_twice(dsn, shown)
        for port in options.get("port", "5432").split(","):
            if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
                raise _bad(shown, "the port must be in 1..65535 (?port= takes one, or a list)")
    elif dsn.backend == "mysql" and options.get("charset"):
        _check_charset(options["charset"], f"DSN {shown!r}: ")


def _check_pg_twice(dsn: DSN, shown: str) -> None:
    # asyncpg takes the URL's value and silently ignores the query's: say so instead.
    options = dsn.options
    in_url = {
        "host": dsn.host is not None,
        "port": dsn.port is not None,
        "user": dsn.user is not None,
        "password": dsn.password is not None,
    }
    for name, present in in_url.items():
        if present and name in options:
            raise _bad(shown, f"{name} is given twice, in the URL and as ?{name}=; keep one")
    named = [n for n in ("dbname", "database") if n in options]
    if dsn.database is not None and named:
        raise _bad(shown, f"the database is given twice, in the path and as ?{named[0]}=")
    if len(named) == 2:
        raise _bad(shown, "the database is given twice, as ?dbname= and ?database=")


def _check_charset(charset: str, where: str) -> None:
    """aiomysql looks the charset up in PyMySQL's table at connect; unknown names crash it."""
    try:
        table = importlib.import_module("pymysql.charset")
    except ImportError:
        return  # no PyMySQL, no aiomysql either: the missing driver is reported instead
    if table.charset_by_name(charset) is None:
        raise ConfigurationError(
            f"{where}unknown MySQL charset {charset!r} (utf8mb4 is the usual choice)"
        )


def check_connect_kwargs(dsn: DSN, options: Options) -> None:
    """Refuse ``connect_kwargs`` the driver would refuse at every connect."""
    kwargs = dict(options.connect_kwargs)
    if dsn.backend == "postgres":
        reserved = sorted(_PG_RESERVED & kwargs.keys())
        if reserved:
            raise ConfigurationError(
                f"connect_kwargs may not set {reserved}: the PostgreSQL adapter sets them "
                "(use the connect_timeout= and command_timeout= options)"
            )
        asyncpg = importlib.import_module("asyncpg")
        try:
            inspect.signature(asyncpg.connect).bind(**kwargs)
        except TypeError as exc:
            raise ConfigurationError(f"connect_kwargs for asyncpg.connect: {exc}") from None
    elif dsn.backend == "mysql" and isinstance(kwargs.get("charset"), str) and kwargs["charset"]:
        _check_charset(kwargs["charset"], "connect_kwargs: ")
    elif dsn.backend == "sqlite":
        unknown = sorted(kwargs.keys() - _SQLITE_KWARGS)
        if unknown:
            raise ConfigurationError(
                f"connect_kwargs for sqlite3.connect: unknown {unknown}; "
                f"known: {sorted(_SQLITE_KWARGS - {'database', 'uri', 'isolation_level'})}"
            )
