"""Keeping secrets out of everything resilientdb prints, logs or raises.

Passwords seen in DSNs and connect arguments are registered here; ``scrub`` replaces them in
any text. Driver messages are scrubbed too, since some drivers echo their connect arguments.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from ._dsn import REDACTED, redact, secret_spans

__all__ = ["describe", "register_dsn", "register_secret", "scrub"]

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
