"""Connection URLs: parsing and validation, once, at construction; ``with_host`` to point one
at a proxy. What each scheme accepts is the backend registry's (``backends/registry.py``).

A DSN is parsed once, at construction, and refused when it cannot be read one way only: a
password holding an unencoded ``#``, ``/`` or ``?`` ends the authority early, so urlsplit would
see a different host, port and password than the user wrote (``postgresql://u:12#ab@host/db``
parses as host ``u``, port 12), and the drivers may split it differently again (asyncpg cuts
the user information at the first ``@``, urlsplit at the last). ``redact`` (in ``_redact.py``)
is written for the same inputs: it never returns the secret, whatever the text.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

from ._redact import redact
from .backends import registry
from .errors import ConfigurationError

__all__ = ["DSN", "parse_dsn", "with_host"]


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
    hosts: tuple[tuple[str, int | None], ...] = ()
    """Every host of the URL, in order (``h1:5432,h2:5433`` or ``?host=h1,h2``); ``host`` and
    ``port`` are the first one's. Empty for SQLite and for a unix socket alone."""

    def __str__(self) -> str:
        return redact(self.raw)

    def __repr__(self) -> str:
        return f"DSN({redact(self.raw)!r})"


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


def _split_hosts(parts: SplitResult, shown: str) -> list[tuple[str, int | None]] | None:
    """The host list of ``h1:p1,h2:p2`` (None when the URL names one host or none)."""
    hostspec = parts.netloc.rpartition("@")[2]
    if "," not in hostspec:
        return None
    hosts: list[tuple[str, int | None]] = []
    for item in hostspec.split(","):
        if item.startswith("["):  # [v6] or [v6]:port
            host, _, rest = item[1:].partition("]")
            if rest and not rest.startswith(":"):
                raise _bad(shown, f"host {item!r}: write an IPv6 host as [::1]:5432")
            port_text = rest[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise _bad(shown, "an empty host in the host list (h1:5432,h2:5433)")
        port: int | None = None
        if port_text:
            if not (port_text.isascii() and port_text.isdigit() and 1 <= int(port_text) <= 65535):
                raise ConfigurationError(
                    f"malformed DSN {shown!r}: the port of {host!r} must be in 1..65535"
                )
            port = int(port_text)
        hosts.append((unquote(host).lower(), port))
    return hosts


def _query_hosts(options: Mapping[str, str], shown: str) -> list[tuple[str, int | None]]:
    """The host list of ``?host=h1,h2&port=p1,p2`` (one port for all, or one per host)."""
    names = [h.strip() for h in options["host"].split(",")]
    if not all(names):
        raise _bad(shown, "an empty name in ?host= (write host=h1,h2)")
    ports_text = options.get("port", "")
    ports = [int(p) for p in ports_text.split(",") if p.isascii() and p.isdigit()]
    if ports_text and len(ports) != len(ports_text.split(",")):
        raise ConfigurationError(f"malformed DSN {shown!r}: the port must be in 1..65535")
    if len(ports) > 1 and len(ports) != len(names):
        raise _bad(
            shown, f"{len(names)} hosts but {len(ports)} ports: give one port, or one per host"
        )
    if not ports:
        return [(n, None) for n in names]
    return [(n, ports[i] if len(ports) > 1 else ports[0]) for i, n in enumerate(names)]


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
    driver = registry.spec_for(scheme)
    if driver is None:
        known = ", ".join(f"{s}://" for s in registry.schemes())
        what = f"unknown scheme {scheme + '://'!r}" if scheme else "no scheme"
        raise ConfigurationError(f"DSN {shown!r} has {what}; use one of {known}")
    _check_text(dsn, shown)
    try:
        parts = urlsplit(dsn)
    except ValueError:  # an unbalanced '[' or ']'
        raise ConfigurationError(
            f"malformed DSN {shown!r}: an IPv6 host is written in brackets, [::1]"
        ) from None
    if not driver.path:
        _check_authority(parts, shown)
    hosts = None if driver.path else _split_hosts(parts, shown)
    if hosts is not None:
        # urlsplit reads "h1:5432,h2" as one host with port "5432,h2": parse the list here.
        userinfo, at, _ = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{userinfo}{at}x")
    port = None if hosts is not None else _port(parts, shown)
    options = _options(parts.query, driver.options, driver.name, shown)
    if driver.path:
        # sqlite:///relative.db, sqlite:////abs/path.db, sqlite:///:memory:
        if parts.netloc:
            raise _bad(
                shown,
                "SQLite takes no host; write sqlite:///relative.db or sqlite:////absolute/path.db",
            )
        path = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
        if not path:
            raise _bad(shown, "SQLite needs a file path or :memory:")
        parsed = DSN(dsn, scheme, driver.name, None, None, None, None, None, path, options)
        if driver.check_dsn is not None:
            driver.check_dsn(parsed, shown)
        return parsed
    if hosts is None and parts.hostname:
        hosts = [(parts.hostname, port)]
    elif hosts is None and "host" in options and not options["host"].startswith("/"):
        hosts = _query_hosts(options, shown)
    if not hosts and "host" not in options and "unix_socket" not in options:
        raise ConfigurationError(f"DSN {shown!r} has no host")
    database = unquote(parts.path[1:]) if parts.path.startswith("/") else None
    if database is not None and "/" in database:
        raise _bad(shown, "the database name may not contain '/'")
    in_url = bool(parts.hostname)
    parsed = DSN(
        dsn,
        scheme,
        driver.name,
        hosts[0][0] if hosts and in_url else None,
        hosts[0][1] if hosts and in_url else None,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
        database or None,
        None,
        options,
        tuple(hosts or ()),
    )
    if driver.check_dsn is not None:
        driver.check_dsn(parsed, shown)
    return parsed


def with_host(dsn: DSN, host: str, port: int) -> str:
    """The DSN's URL pointed at another host and port (tests put a proxy in between); a host
    list in the URL is replaced by that one host."""
    parts = urlsplit(dsn.raw)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
