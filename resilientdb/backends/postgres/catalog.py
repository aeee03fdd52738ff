"""What the PostgreSQL adapter asks the server's catalog: which functions may write (for the
replay rules), and a transaction's id and fate (for resolving a lost COMMIT, ``_outcomes.py``).
"""

from __future__ import annotations

from typing import Any, cast

import asyncpg
from asyncpg import exceptions as pgexc

__all__ = ["ROLE", "harmless_functions", "transaction_mark", "transaction_status"]

# The node's role: a standby replays WAL; a fenced primary has default_transaction_read_only.
ROLE = (
    "SELECT pg_catalog.pg_is_in_recovery(), "
    "pg_catalog.current_setting('default_transaction_read_only')::bool"
)

_FUNCTIONS = (
    "SELECT p.proname::text, bool_or(p.provolatile = 'v') FROM pg_catalog.pg_proc p "
    "WHERE p.proname::text = ANY($1::text[]) GROUP BY p.proname"
)
# The transaction's id, if it has one (it has one once it wrote), and which run of the server
# answered: an id is only meaningful to the server run that assigned it (see _outcomes.py).
# A run is the postmaster's start and the last reset of the shared statistics: a crashed
# backend makes the postmaster reinitialise and replay WAL without restarting (the start
# time stays) and reuse the ids whose records were not flushed; that recovery discards the
# statistics, which sets their reset time.
_RUN = (
    "pg_catalog.pg_postmaster_start_time()::text || ' ' || "
    "coalesce((SELECT stats_reset FROM pg_catalog.pg_stat_bgwriter)::text, '')"
)
_MARK = {
    True: f"SELECT pg_catalog.pg_current_xact_id_if_assigned()::text, {_RUN}",
    False: f"SELECT pg_catalog.txid_current_if_assigned()::text, {_RUN}",
}
_STATUS = {
    True: f"SELECT pg_catalog.pg_xact_status($1::text::xid8), {_RUN}",
    False: f"SELECT pg_catalog.txid_status($1::text::bigint), {_RUN}",
}
_VOLATILE_OPERATORS = (
    "SELECT DISTINCT o.oprname::text FROM pg_catalog.pg_operator o "
    "JOIN pg_catalog.pg_proc p ON p.oid = o.oprcode WHERE p.provolatile = 'v'"
)


async def harmless_functions(
    conn: Any, names: frozenset[str], bound: float
) -> tuple[frozenset[str], frozenset[str]]:
    """Of ``names``, those with no VOLATILE overload; the VOLATILE operators' names."""
    raw = cast("asyncpg.Connection[asyncpg.Record]", conn)
    rows = await raw.fetch(_FUNCTIONS, sorted(names), timeout=bound)
    operators = await raw.fetch(_VOLATILE_OPERATORS, timeout=bound)
    return (
        frozenset(name for name, volatile in rows if not volatile),
        frozenset(op for (op,) in operators),
    )


async def transaction_mark(conn: Any) -> tuple[str | None, str]:
    """Inside a transaction: its id (``None`` when it has none: it wrote nothing) and which
    run of the server assigned it."""
    raw = cast("asyncpg.Connection[asyncpg.Record]", conn)
    row = await raw.fetchrow(_MARK[raw.get_server_version().major >= 13])
    assert row is not None
    return row[0], row[1]


async def transaction_status(conn: Any, xid: str, bound: float) -> tuple[str | None, str]:
    """What the server says of transaction ``xid``: ``"committed"``, ``"aborted"``,
    ``"in progress"``, ``"future"`` (the server never assigned it) or ``None`` (too old to
    tell); and which run of the server answered."""
    raw = cast("asyncpg.Connection[asyncpg.Record]", conn)
    query = _STATUS[raw.get_server_version().major >= 13]
    try:
        row = await raw.fetchrow(query, xid, timeout=bound)
    except pgexc.PostgresError as exc:
        if exc.sqlstate == "22023" and "in the future" in str(exc):
            run = await raw.fetchval(f"SELECT {_RUN}", timeout=bound)
            return "future", str(run)
        raise
    assert row is not None
    return row[0], row[1]
