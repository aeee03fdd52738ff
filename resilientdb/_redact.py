"""Keeping secrets out of everything resilientdb prints, logs or raises.

``redact`` hides the passwords of a DSN text (safe on any input: it never returns the secret).
Passwords seen in DSNs and connect arguments are registered here; ``scrub`` replaces them in
any text. Driver messages are scrubbed too, since some drivers echo their connect arguments.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING
from urllib.parse import unquote

if TYPE_CHECKING:
    from ._dsn import DSN
    from .config import Options

__all__ = [
    "REDACTED",
    "describe",
    "redact",
    "register_dsn",
    "register_dsn_secrets",
    "register_secret",
    "scrub",
    "secret_spans",
]

REDACTED = "***"

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


_secrets: set[str] = set()
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"]+", re.IGNORECASE)


def register_secret(secret: str | None) -> None:
    """Remember a secret so that ``scrub`` removes it from any text."""
    # Very short secrets would scrub ordinary words; they are also not worth hiding.
    if secret and len(secret) >= 3:
        _secrets.add(secret)


def register_dsn(dsn: str) -> None:
    """Register every password ``redact`` would hide in ``dsn``, as written and decoded.

    For text that may show a DSN cut up or quoted (an argparse error), where the URL pattern of
    ``scrub`` would not find it whole; it works on DSNs that ``parse_dsn`` refuses, too.
    """
    for begin, end in secret_spans(dsn):
        register_secret(dsn[begin:end])
        register_secret(unquote(dsn[begin:end]))


def register_dsn_secrets(dsn: DSN, options: Options) -> None:
    """Register the passwords a backend connects with: the DSN's (in the URL or as
    ``?password=``) and ``connect_kwargs["password"]``. Called by the adapters that connect
    with one, as they are built."""
    register_secret(dsn.password)
    register_secret(dsn.options.get("password"))
    pw = options.connect_kwargs.get("password")
    register_secret(pw if isinstance(pw, str) else None)


def scrub(text: str) -> str:
    """``text`` with URLs redacted and every registered secret replaced by ``***``."""
    text = _URL.sub(lambda m: redact(m.group(0)), text)
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


def describe(exc: BaseException) -> str:
    """``Type: message`` on one line, scrubbed."""
    msg = str(exc).strip().replace("\n", " ")
    name = type(exc).__name__
    return scrub(f"{name}: {msg}" if msg else name)
