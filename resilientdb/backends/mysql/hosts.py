"""A MySQL / MariaDB host list (``mysql://u@h1:3306,h2:3306/db``), tried in order.

Each host is tried in turn, as libpq does: one that cannot be reached, or (when the DSN asks
for one with ``target_session_attrs``) whose ``@@global.read_only`` does not fit, is skipped.
An authentication failure is not skipped: the same credentials go to every host, and moving
on would hide the error behind a "no host" one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._kit.roles import fits
from ..base import ErrorKind
from .connection import MySQLConnection, connect, quit_raw
from .errors import ERRORS

if TYPE_CHECKING:
    from ...config import Options

__all__ = ["NoHostFits", "connect_first", "read_only"]

READ_ONLY = "SELECT @@global.read_only"


class NoHostFits(ConnectionError):
    """No host of the list answered as the node the DSN asks for (maybe mid-failover)."""


async def read_only(conn: MySQLConnection, timeout: float) -> bool:
    """Whether the node refuses writes (``read_only``; ``super_read_only`` implies it)."""
    return bool(await conn.fetchval(READ_ONLY, timeout=timeout))


async def connect_first(
    kwargs: dict[str, Any],
    opts: Options,
    generation: int,
    hosts: tuple[tuple[str, int | None], ...],
    attrs: str,
    *,
    hook: bool = True,
) -> MySQLConnection:
    """A connection to the first host that answers and fits ``attrs``."""
    if len(hosts) <= 1 and attrs == "any":
        return await connect(kwargs, opts, generation, hook=hook)
    if len(hosts) <= 1:
        hosts = ((kwargs["host"], kwargs["port"]),)
    fallback: MySQLConnection | None = None
    last: BaseException | None = None
    try:
        for host, port in hosts:
            spec = {**kwargs, "host": host, "port": port or kwargs["port"]}
            try:
                conn = await connect(spec, opts, generation, hook=hook)
            except Exception as exc:
                if ERRORS.classify_connect(exc) is ErrorKind.PERMANENT:
                    raise
                last = exc
                continue
            if attrs == "any":
                return conn
            try:
                ro = await read_only(conn, opts.connect_timeout)
            except BaseException as exc:
                quit_raw(conn.raw)
                if not isinstance(exc, Exception):
                    raise
                last = exc
                continue
            if fits(attrs, ro, ro):
                return conn
            if attrs == "prefer-standby" and fallback is None:
                fallback = conn  # a primary, kept in case no standby answers
            else:
                quit_raw(conn.raw)
    except BaseException:
        if fallback is not None:
            quit_raw(fallback.raw)
        raise
    if fallback is not None:
        return fallback
    listed = ", ".join(f"{h}:{p or kwargs['port']}" for h, p in hosts)
    if last is not None:
        raise NoHostFits(f"no host of {listed} could be used: {last}") from last
    raise NoHostFits(f"none of the hosts {listed} is a {attrs} node (read_only decides)")
