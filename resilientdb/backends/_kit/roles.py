"""Which node a DSN asks for (``target_session_attrs``) and whether a node fits it.

PostgreSQL nodes are told apart by recovery (a standby replays WAL) and by
``default_transaction_read_only`` (a fenced primary); MySQL and MariaDB nodes by
``@@global.read_only`` alone (``primary`` reads as ``read-write`` there, ``standby`` as
``read-only``). The adapters use this after a write was refused and in the keepalive: a node
that no longer fits is "the wrong node", not an error of the caller's statement.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..._dsn import DSN

__all__ = ["ATTRS", "WRITER", "fits", "role_name", "wanted", "wants_writer"]

ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
WRITER = frozenset({"read-write", "primary"})
"""The values that ask for a node taking writes."""


def wanted(dsn: DSN) -> str:
    """The DSN's ``target_session_attrs`` (``any`` when not given)."""
    return dsn.options.get("target_session_attrs", "any")


def wants_writer(dsn: DSN) -> bool:
    """The DSN asks for a node that takes writes (``read-write`` or ``primary``)."""
    return wanted(dsn) in WRITER


def fits(attrs: str, in_recovery: bool, read_only: bool) -> bool:
    """Whether a node in this state is one ``attrs`` asks for (``prefer-standby``: any)."""
    if attrs == "primary":
        return not in_recovery
    if attrs == "standby":
        return in_recovery
    if attrs == "read-write":
        return not (in_recovery or read_only)
    if attrs == "read-only":
        return in_recovery or read_only
    return True


def role_name(in_recovery: bool, read_only: bool) -> str:
    """``primary``, ``standby`` or ``read-only`` (a primary that refuses writes)."""
    if in_recovery:
        return "standby"
    return "read-only" if read_only else "primary"
