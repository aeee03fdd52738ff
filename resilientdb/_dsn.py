"""Connection URLs: parsing, validation and redaction.

A DSN is parsed once, at construction, and refused when it cannot be read one way only: a
password holding an unencoded ``#``, ``/`` or ``?`` ends the authority early, so urlsplit would
see a different host, port and password than the user wrote (``postgresql://u:12#ab@host/db``
parses as host ``u``, port 12), and the drivers may split it differently again (asyncpg cuts
the user information at the first ``@``, urlsplit at the last). ``redact`` is written for the
same inputs: it never returns the secret, whatever the text.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

from ._driver_checks import check_dsn_options
from .errors import ConfigurationError

__all__ = ["DSN", "REDACTED", "SCHEMES", "parse_dsn", "redact", "secret_spans", "with_host"]

REDACTED = "***"


@dataclass(frozen=True, slots=True)
class _Driver:
    backend: str  # adapter name: "postgres", "mysql", "sqlite"
    module: str  # the driver package that must be importable
    extra: str  # the pip extra that installs it
    adapter: str  # "package.module:Class", imported lazily
    options: frozenset[str]  # query-string options the driver understands


_PG_OPTIONS = frozenset(
    {
        "host", "port", "user", "password", "passfile", "database", "dbname", "sslmode",
        "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslpassword", "ssl_min_protocol_version",
        "ssl_max_protocol_version", "target_session_attrs", "krbsrvname", "gsslib", "service",
        "application_name",
    }
)  # fmt: skip
_MYSQL_OPTIONS = frozenset({"charset", "unix_socket", "ssl", "init_command", "program_name"})
_SQLITE_OPTIONS = frozenset({"mode", "cache", "timeout", "journal_mode"})

_ADAPTERS = "resilientdb.backends."
_PG = _Driver(
    "postgres", "asyncpg", "postgres", _ADAPTERS + "postgres:PostgresBackend", _PG_OPTIONS
)
_MY = _Driver("mysql", "aiomysql", "mysql", _ADAPTERS + "mysql:MySQLBackend", _MYSQL_OPTIONS)
_LITE = _Driver(
    "sqlite", "aiosqlite", "sqlite", _ADAPTERS + "sqlite:SQLiteBackend", _SQLITE_OPTIONS
)
SCHEMES: dict[str, _Driver] = {
    "postgresql": _PG,
    "postgres": _PG,
    "mysql": _MY,
    "mariadb": _MY,
    "sqlite": _LITE,
}


@dataclass(frozen=True, slots=True)
class DSN:
    """A parsed connection URL. ``str(dsn)`` and ``repr(dsn)`` are redacted."""

    raw: str = field(repr=False)
    scheme: str
    backend: str
    host: str | None
    port: int | None
    user: str | None
    password: str | None = field(repr=False)
    database: str | None
    path: str | None  # SQLite: the file path, or ":memory:"
    options: Mapping[str, str]

    def __str__(self) -> str:
        return redact(self.raw)

    def __repr__(self) -> str:
        return f"DSN({redact(self.raw)!r})"

    @property
    def driver(self) -> _Driver:
        return SCHEMES[self.scheme]


# --- redaction ------------------------------------------------------------------------------

_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9+.-]*://")
# Up to the next '&' only: a '#' inside the value is part of the secret, not a fragment.
_PASSWORD_QUERY = re.compile(r"(?i)[?&](?:password|sslpassword)=([^&]*)")


def secret_spans(dsn: str) -> list[tuple[int, int]]:
    """Where the passwords of ``dsn`` are, as sorted, disjoint ``(start, end)`` indexes.

    A well-formed URL's password runs from the user name's ``:`` to the last ``@`` of the
    authority. Where an ``@`` follows a ``/``, ``?`` or ``#`` (a password that should have been
    percent-encoded) the span runs to the last ``@`` of all, which is at or past the end of any
    password the text may hold. Query values of ``password=`` and ``sslpassword=`` follow.
    """
    spans: list[tuple[int, int]] = []
    scheme = _SCHEME.match(dsn)
    start = scheme.end() if scheme else 0
    authority_end = next((i for i in range(start, len(dsn)) if dsn[i] in "/?#"), len(dsn))
    at = dsn.rfind("@", start)
    # "scheme:///path" has no authority: an '@' there belongs to a path (sqlite:///a:b@c.db)
    # or to an option, never to a password.
    if at >= 0 and not (scheme and authority_end == start):
        colon = dsn.find(":", start, at)
        if colon >= 0:
            spans.append((colon + 1, at))
    after = spans[-1][1] if spans else 0
    spans += [m.span(1) for m in _PASSWORD_QUERY.finditer(dsn, after)]
    return spans


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ``***`` (also in the query string).

    Safe on any input: it never raises and never returns the secret (see ``secret_spans``).
    A well-formed URL keeps everything but the password.
    """
    if not isinstance(dsn, str):
        return "<not a DSN>"
    # Edited as text, never rebuilt: urlunsplit would drop the empty host of sqlite:///x.db.
    out, last = [], 0
    for begin, end in secret_spans(dsn):
        out += [dsn[last:begin], REDACTED]
        last = end
    return "".join(out) + dsn[last:]


# --- parsing --------------------------------------------------------------------------------

_ENCODE = (
    "percent-encode such characters in a user name, password, database name or option: "
    "'#' as %23, '/' as %2F, '?' as %3F, '@' as %40, and ':' in a user name as %3A"
)


def _bad(shown: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"DSN {shown!r}: {why}")


def _check_text(dsn: str, shown: str) -> None:
    """Characters no part of a DSN may hold as written."""
    if "\x00" in dsn or "\x00" in unquote(dsn):
        raise _bad(shown, "contains a NUL character (raw or as %00), which no database accepts")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in dsn):
        # urlsplit silently drops tabs and newlines: the name used would not be the one written.
        raise _bad(shown, "contains a control character; percent-encode it (a tab as %09)")
    if "#" in dsn:
        raise _bad(shown, f"a '#' starts a URL fragment, which cuts the DSN short; {_ENCODE}")


def _check_authority(parts: SplitResult, shown: str) -> None:
    """Refuse an authority that urlsplit and the drivers may split differently."""
    if parts.netloc.count("@") > 1:
        raise _bad(shown, f"more than one '@' before the host; {_ENCODE}")
    if "@" in parts.path or "@" in parts.query:
        raise _bad(
            shown,
            "an '@' after the host is ambiguous (it may end a password holding '/' or '?'); "
            + _ENCODE,
        )


def _port(parts: SplitResult, shown: str) -> int | None:
    try:
        port = parts.port
    except ValueError:
        port = 0  # not a number, or past 65535: the same message
    if port is not None and not 1 <= port <= 65535:
        raise ConfigurationError(f"malformed DSN {shown!r}: the port must be in 1..65535")
    return port


def _options(query: str, allowed: frozenset[str], backend: str, shown: str) -> dict[str, str]:
    try:
        # strict: asyncpg parses the query strictly at connect; a field without '=' would
        # fail there, at the first connect, instead of here.
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise _bad(
            shown, "the query string must be name=value pairs joined by '&' (an '&' in a "
            "value is %26)"
        ) from None  # fmt: skip
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in allowed:
            hint = difflib.get_close_matches(key, allowed, n=1)
            tip = f"; did you mean {hint[0]!r}?" if hint else ""
            raise _bad(
                shown,
                f"unknown option {key!r} for {backend}{tip} "
                f"(pass driver arguments through connect_kwargs=)",
            )
        if key in options:
            raise _bad(shown, f"option {key!r} is given twice; keep one")
        options[key] = value
    return options


def parse_dsn(dsn: str) -> DSN:
    """Parse and validate a connection URL; ``ConfigurationError`` names what is wrong."""
    if not isinstance(dsn, str) or not dsn.strip():
        raise ConfigurationError(f"a DSN must be a non-empty string, not {type(dsn).__name__}")
    shown = redact(dsn)
    scheme = dsn.split(":", 1)[0].lower() if "://" in dsn else ""
    if scheme not in SCHEMES:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        what = f"unknown scheme {scheme + '://'!r}" if scheme else "no scheme"
        raise ConfigurationError(f"DSN {shown!r} has {what}; use one of {known}")
    driver = SCHEMES[scheme]
    _check_text(dsn, shown)
    try:
        parts = urlsplit(dsn)
    except ValueError:  # an unbalanced '[' or ']'
        raise ConfigurationError(
            f"malformed DSN {shown!r}: an IPv6 host is written in brackets, [::1]"
        ) from None
    if driver.backend != "sqlite":
        _check_authority(parts, shown)
    port = _port(parts, shown)
    options = _options(parts.query, driver.options, driver.backend, shown)
    if driver.backend == "sqlite":
        # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:
        if parts.netloc:
            raise _bad(
                shown,
                "SQLite takes no host; write sqlite:///relative.db or sqlite:////absolute/path.db",
            )
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not path:
            raise _bad(shown, "SQLite needs a file path or :memory:")
        return DSN(dsn, scheme, driver.backend, None, None, None, None, None, path, options)
    if not parts.hostname and "host" not in options and "unix_socket" not in options:
        raise ConfigurationError(f"DSN {shown!r} has no host")
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else None
    if database is not None and "/" in database:
        raise _bad(shown, "the database name may not contain '/'")
    parsed = DSN(
        dsn,
        scheme,
        driver.backend,
        parts.hostname,
        port,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        database or None,
        None,
        options,
    )
    check_dsn_options(parsed, shown)
    return parsed


def with_host(dsn: DSN, host: str, port: int) -> str:
    """The DSN's URL pointed at another host and port (tests put a proxy in between)."""
    parts = urlsplit(dsn.raw)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
