"""Cheap reachability checks between the backoff's reconnect attempts.

A reconnect attempt is a full handshake (TLS, authentication, a server process); the backoff
spaces them out (50 ms doubling to 1 s), so a server that comes back just after an attempt
waits up to a whole step for the next one. A plain TCP connect costs the server almost
nothing, so while the supervisor waits out a step it knocks on the server's port every
``KNOCK_INTERVAL``, and when a knock gets through after one that did not (the port came
back), the next attempt starts at once instead of at the end of the step.

Handshakes stay on the backoff schedule otherwise: a server that accepts TCP but fails the
handshake (wrong password, too many clients) never shortens a step. Only the transition
"not reachable -> reachable" does, and it is followed by a few quick attempts
(``FOLLOW_UPS``: after 25, 50, 100, 200 ms) because a server's port opens a little before it
accepts sessions (PostgreSQL's "the database system is starting up").

A knock counts as "reachable" when the connect is accepted and the connection is neither
closed nor reset within ``SETTLE`` (a proxy or load balancer whose target is down accepts,
then resets); data from the server (MySQL's greeting) counts as reachable at once. The
connection is closed with a reset, so that it leaves no TIME_WAIT behind and no session.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Mapping
from typing import Any

__all__ = ["KNOCK_INTERVAL", "Reach", "knock", "tcp_addresses"]

KNOCK_INTERVAL = 0.025  # seconds between two knocks while a backoff step is waited out
CONNECT_BOUND = 0.25  # a TCP connect not accepted within this counts as unreachable
SETTLE = 0.015  # an accepted connection reset within this counts as unreachable
FOLLOW_UPS = 4  # quick attempts after the port came back: KNOCK_INTERVAL * 2**k
DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
# Settings that route a connection elsewhere than the URL's host and port: no knocking then.
_ROUTING = frozenset({"host", "port", "hostaddr", "unix_socket", "socket", "service"})


def tcp_addresses(backend: Any) -> tuple[tuple[str, int], ...]:
    """The (host, port) a backend's connections go to, when that is one plain TCP address
    known from its URL; empty otherwise (SQLite, unix sockets, hosts from the environment
    or from driver options): such a backend reconnects on the backoff alone."""
    dsn = getattr(backend, "dsn", None)
    options = getattr(backend, "options", None)
    if dsn is None or getattr(dsn, "backend", None) not in DEFAULT_PORTS:
        return ()
    host = getattr(dsn, "host", None)
    if not isinstance(host, str) or not host or host.startswith("/") or "," in host:
        return ()
    settings: Mapping[str, Any] = getattr(dsn, "options", None) or {}
    extra: Mapping[str, Any] = getattr(options, "connect_kwargs", None) or {}
    if _ROUTING & (set(settings) | set(extra)):
        return ()
    port = dsn.port or DEFAULT_PORTS[dsn.backend]
    return ((host.strip("[]"), int(port)),)


async def _resolve(host: str, port: int) -> list[tuple[int, Any]]:
    """(family, sockaddr) of ``host``: an IP literal without a trip to the resolver."""
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            socket.inet_pton(family, host)
            return [(family, (host, port))]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    seen: list[tuple[int, Any]] = []
    for family, _, _, _, address in infos:
        if (family, address) not in seen:
            seen.append((family, address))
    return seen


async def knock(host: str, port: int) -> bool | None:
    """Whether something at ``host:port`` accepts a TCP connection and keeps it (see the
    module docstring), trying each address the name resolves to; None when it does not
    resolve (cannot tell)."""
    addresses = await _resolve(host, port)
    if not addresses:
        return None
    for family, address in addresses:
        if await _knock_one(family, address):
            return True
    return False


async def _knock_one(family: int, address: Any) -> bool:
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(CONNECT_BOUND):
                await loop.sock_connect(sock, address)
        except (OSError, TimeoutError):
            return False  # refused, unreachable, or no answer (a partition)
        try:
            async with asyncio.timeout(SETTLE):
                data = await loop.sock_recv(sock, 1)
        except TimeoutError:
            return True  # open and silent: a server waiting for the client to speak
        except OSError:
            return False  # reset at once: a proxy whose target is down
        return bool(data)  # closed at once (b""): nothing behind it
    finally:
        with contextlib.suppress(OSError):
            # A reset, not a FIN: no TIME_WAIT for every knock, and the server drops it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


class Reach:
    """The knocking between attempts of one backend (its Monitor's)."""

    __slots__ = ("_down", "_follow", "addresses", "knocks")

    def __init__(self, addresses: tuple[tuple[str, int], ...]) -> None:
        self.addresses = addresses
        self.knocks = 0  # knocks made, for tests and figures
        self._down = False  # the last knock found nobody there
        self._follow: int | None = None  # quick attempts made since the port came back

    def reset(self) -> None:
        """Connected again: the next outage starts from scratch."""
        self._down = False
        self._follow = None

    async def wait(self, delay: float) -> None:
        """Wait ``delay`` seconds (a backoff step), or less: until the port comes back, or
        until the next quick attempt after it came back. Without addresses, a plain sleep."""
        if not self.addresses or delay <= 0:
            await asyncio.sleep(delay)  # always yields, even at zero delay
            return
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + delay
        if self._follow is not None:
            if self._follow < FOLLOW_UPS:
                deadline = start + min(delay, KNOCK_INTERVAL * 2**self._follow)
                self._follow += 1
            else:
                self._follow = None  # the backoff alone from here
        while True:
            now = loop.time()
            if now >= deadline:
                return
            try:
                async with asyncio.timeout_at(deadline):
                    up = await self._knock_any()
            except TimeoutError:
                return  # the step is over: the attempt is due
            if up is False:
                if self._follow is not None:
                    # Gone again: no more quick attempts, the step as the backoff set it.
                    self._follow = None
                    deadline = start + delay
                self._down = True
            elif up and self._down:
                self._down = False
                self._follow = 0
                return  # the port came back: attempt now
            await asyncio.sleep(max(0.0, min(deadline, now + KNOCK_INTERVAL) - loop.time()))

    async def _knock_any(self) -> bool | None:
        """True if any address is reachable; False if none is; None if none could tell."""
        seen: bool | None = None
        for host, port in self.addresses:
            self.knocks += 1
            up = await knock(host, port)
            if up:
                return True
            if up is False:
                seen = False
        return seen
