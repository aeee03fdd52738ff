"""The MySQL adapter's settings: DSN options and ``connect_kwargs`` checked once, at
construction, and turned into aiomysql's connect arguments.

Driver-free at import (the registry reads it while parsing a DSN, installed driver or not):
PyMySQL and aiomysql are imported only when a check needs them.
"""

from __future__ import annotations

import importlib
import inspect
import ssl
from typing import TYPE_CHECKING, Any

from ..._credentials import check_single_password
from ...errors import ConfigurationError
from .._kit.roles import ATTRS

if TYPE_CHECKING:
    from ..._dsn import DSN
    from ...config import Options

__all__ = ["DEFAULT_PORT", "OPTIONS", "check_dsn", "check_options", "driver_kwargs"]

DEFAULT_PORT = 3306
OPTIONS = frozenset(
    {"charset", "unix_socket", "ssl", "init_command", "program_name", "target_session_attrs"}
)
_SSL_ON = frozenset({"true", "1", "yes", "on", "require", "required"})
_SSL_OFF = frozenset({"false", "0", "no", "off", "disable", "disabled"})


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


def check_dsn(dsn: DSN, shown: str) -> None:
    """Refuse DSN option values aiomysql would refuse at connect; ``shown`` is redacted."""
    attrs = dsn.options.get("target_session_attrs")
    if attrs is not None and attrs not in ATTRS:
        raise ConfigurationError(
            f"DSN {shown!r}: target_session_attrs must be one of {', '.join(ATTRS)}"
        )
    if dsn.options.get("charset"):
        _check_charset(dsn.options["charset"], f"DSN {shown!r}: ")


def check_options(dsn: DSN, options: Options) -> None:
    """Refuse ``connect_kwargs`` aiomysql would refuse at every connect."""
    check_single_password(dsn, options)
    charset = options.connect_kwargs.get("charset")
    if isinstance(charset, str) and charset:
        _check_charset(charset, "connect_kwargs: ")


def driver_kwargs(dsn: DSN, options: Options) -> dict[str, Any]:
    """aiomysql's connect arguments from the DSN, then ``connect_kwargs``; validated now."""
    query = dict(dsn.options)
    kwargs: dict[str, Any] = {
        "host": dsn.host or "localhost",
        "port": dsn.port or DEFAULT_PORT,
        "user": dsn.user,
        "password": dsn.password or "",
        "db": dsn.database,
        "connect_timeout": options.connect_timeout,  # the TCP part; the whole is bounded too
    }
    for key in ("unix_socket", "charset", "init_command", "program_name"):
        if key in query:
            kwargs[key] = query[key]
    if "ssl" in query:
        value = query["ssl"].lower()
        if value not in _SSL_ON | _SSL_OFF:
            raise ConfigurationError(
                f"DSN {dsn}: ssl={query['ssl']!r} must be true or false "
                f"(pass an SSLContext as connect_kwargs={{'ssl': ...}} for more)"
            )
        kwargs["ssl"] = ssl.create_default_context() if value in _SSL_ON else None
    kwargs.update(options.connect_kwargs)
    if kwargs.get("autocommit", True) is not True:
        raise ConfigurationError(
            "the MySQL adapter runs single statements in autocommit mode; "
            "use db.transaction() for transactions, not autocommit=False"
        )
    kwargs["autocommit"] = True
    aiomysql = importlib.import_module("aiomysql")
    try:
        inspect.signature(aiomysql.Connection).bind(**kwargs)
    except TypeError as exc:
        raise ConfigurationError(f"connect_kwargs for aiomysql: {exc}") from None
    return kwargs
