"""What asyncpg would refuse at its first connect, refused at construction instead.

Driver-free at import (the registry reads it while parsing a DSN, installed driver or not);
asyncpg is imported only to check ``connect_kwargs`` once its presence is checked.
"""

from __future__ import annotations

import importlib
import inspect
from typing import TYPE_CHECKING

from ..._credentials import check_single_password
from ...errors import ConfigurationError

if TYPE_CHECKING:
    from ..._dsn import DSN
    from ...config import Options

__all__ = ["OPTIONS", "check_dsn", "check_options"]

# The DSN query options asyncpg understands (libpq's names).
OPTIONS = frozenset(
    {
        "host", "port", "user", "password", "passfile", "database", "dbname", "sslmode",
        "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "ssl_min_protocol_version",
        "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib", "service",
        "application_name",
    }
)  # fmt: skip

# The values asyncpg (like libpq) accepts; anything else fails at connect.
_CHOICES = {
    "sslmode": ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"),
    "target_session_attrs": (
        "any", "primary", "standby", "prefer-standby", "read-write", "read-only",
    ),
    "gsslib": ("gssapi", "sspi"),
    "ssl_min_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "ssl_max_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
}  # fmt: skip

# Set by the PostgreSQL adapter itself (create_pool / connect would get them twice).
_RESERVED = frozenset({"dsn", "timeout", "command_timeout"})


def _bad(shown: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"DSN {shown!r}: {why}")


def check_dsn(dsn: DSN, shown: str) -> None:
    """Refuse DSN option values asyncpg would refuse at connect; ``shown`` is redacted."""
    options = dsn.options
    for name, choices in _CHOICES.items():
        if name in options and options[name] not in choices:
            raise _bad(shown, f"{name} must be one of {', '.join(choices)}")
    _check_twice(dsn, shown)
    for port in options.get("port", "5432").split(","):
        if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
            raise _bad(shown, "the port must be in 1..65535 (?port= takes one, or a list)")


def _check_twice(dsn: DSN, shown: str) -> None:
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


def check_options(dsn: DSN, options: Options) -> None:
    """Refuse ``connect_kwargs`` asyncpg would refuse at every connect."""
    check_single_password(dsn, options)
    kwargs = dict(options.connect_kwargs)
    reserved = sorted(_RESERVED & kwargs.keys())
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
