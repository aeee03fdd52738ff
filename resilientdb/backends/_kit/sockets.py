"""Kernel-level detection of a vanished peer: TCP keepalive and TCP_USER_TIMEOUT.

A half-open connection (the peer's host died, a NAT or firewall dropped the flow) never says
goodbye: without these options a read on it waits forever. With them the kernel gives up
after about ``user_timeout`` seconds and the driver sees a connection error.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Any

__all__ = ["tune_transport"]


def tune_transport(transport: Any, user_timeout: float) -> bool:
    """Set keepalive options on the TCP socket behind an asyncio transport.

    Returns whether they were set (False for unix sockets, or where the platform refuses).
    """
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    # Probe after a third of the budget, then every ninth, three probes: the peer is declared
    # gone about user_timeout after it went silent.
    idle = max(1, int(user_timeout / 3))
    interval = max(1, int(user_timeout / 9))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
        # Linux: also bounds how long written data may stay unacknowledged.
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(user_timeout * 1000)),
    ]
    done = False
    for level, name, value in options:
        if name is None:
            continue
        with contextlib.suppress(OSError):
            sock.setsockopt(level, name, value)
            done = True
    return done
