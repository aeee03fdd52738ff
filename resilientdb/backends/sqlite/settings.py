"""The SQLite adapter's settings: DSN options and ``connect_kwargs`` checked once, at
construction, into what the pool opens connections with.

Driver-free at import (the registry reads it while parsing a DSN).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...errors import ConfigurationError

if TYPE_CHECKING:
    from ..._dsn import DSN
    from ...config import Options

__all__ = ["DEFAULT_BUSY_TIMEOUT", "OPTIONS", "SQLiteSettings", "check_options", "settings"]

OPTIONS = frozenset({"mode", "cache", "timeout", "journal_mode"})
DEFAULT_BUSY_TIMEOUT = 5.0
_MODES = frozenset({"rwc", "rw", "ro"})
_JOURNAL_MODES = frozenset({"wal", "delete", "truncate", "persist"})
# The adapter's own: aiosqlite.connect gets them from the pool.
_RESERVED = frozenset({"database", "uri", "isolation_level"})
# sqlite3.connect's keywords (a builtin without a signature to bind against) and
# aiosqlite.connect's own.
_KWARGS = frozenset(
    {"timeout", "detect_types", "check_same_thread", "factory", "cached_statements"}
    | {"iter_chunk_size", "loop"}
    | _RESERVED
    | ({"autocommit"} if sys.version_info >= (3, 12) else set())
)


@dataclass(frozen=True, slots=True)
class SQLiteSettings:
    """How the pool opens a connection: ``mode`` (``rwc``, ``rw``, ``ro``), ``cache``
    (``shared``, ``private`` or None), ``journal`` mode, ``busy`` timeout in seconds, and the
    remaining ``connect_kwargs`` for ``aiosqlite.connect``."""

    mode: str
    cache: str | None
    journal: str
    busy: float
    kwargs: Mapping[str, Any]


def check_options(dsn: DSN, options: Options) -> None:
    """Refuse ``connect_kwargs`` sqlite3 would refuse at every connect."""
    if options.password is not None:
        raise ConfigurationError("SQLite takes no password; remove password=")
    unknown = sorted(options.connect_kwargs.keys() - _KWARGS)
    if unknown:
        raise ConfigurationError(
            f"connect_kwargs for sqlite3.connect: unknown {unknown}; "
            f"known: {sorted(_KWARGS - _RESERVED)}"
        )


def settings(dsn: DSN, options: Options) -> SQLiteSettings:
    """The DSN options and ``connect_kwargs`` validated into the pool's settings."""
    opts = dsn.options
    mode, cache = opts.get("mode", "rwc"), opts.get("cache")
    journal = opts.get("journal_mode", "wal").lower()
    kwargs = dict(options.connect_kwargs)
    busy = opts.get("timeout", kwargs.pop("timeout", DEFAULT_BUSY_TIMEOUT))

    def bad(message: str) -> ConfigurationError:
        return ConfigurationError(f"DSN {str(dsn)!r}: {message}")

    if mode not in _MODES:
        raise bad(f"mode must be one of {sorted(_MODES)}, not {mode!r}")
    if cache not in (None, "shared", "private"):
        raise bad(f"cache must be 'shared' or 'private', not {cache!r}")
    if journal not in _JOURNAL_MODES:
        raise bad(f"journal_mode must be one of {sorted(_JOURNAL_MODES)}, not {journal!r}")
    try:
        seconds = float(busy)
    except (TypeError, ValueError):
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise bad(f"timeout (the busy timeout) must be a number of seconds >= 0, not {busy!r}")
    reserved = sorted(_RESERVED & kwargs.keys())
    if reserved:
        raise ConfigurationError(
            f"connect_kwargs may not set {reserved}: the SQLite adapter sets them itself"
        )
    return SQLiteSettings(mode, cache, journal, seconds, kwargs)
