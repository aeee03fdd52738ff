"""Cheap reachability checks between the backoff's reconnect attempts.

A reconnect attempt is a full handshake (TLS, authentication, a server process); the backoff
spaces them out (50 ms doubling to 1 s), so a server that comes back just after an attempt
waits up to a whole step for the next one. A knock (a TCP connect and the protocol's first
exchange, below) costs a server that is down nothing, so while the supervisor waits out a
step it knocks on the server's port every ``KNOCK_INTERVAL``, and when a knock gets an
answer after one that did not (the server came back), the next attempt starts at once
instead of at the end of the step.

Handshakes stay on the backoff schedule otherwise: a server that answers the knock but fails
the handshake (wrong password, too many clients) never shortens a step, and is knocked on
once per step at most (a PostgreSQL postmaster forks a process for every connection it
accepts, and MySQL counts a handshake left unfinished against ``max_connect_errors`` until a
connection from the same host succeeds). Only the transition "no answer -> answer" shortens
a step. A few quick attempts follow it (``FOLLOW_UPS``: 100, 200, 400, 800 ms apart, with
the backoff's jitter, no knocking), because a server's port opens a little before it accepts
sessions (PostgreSQL's "the database system is starting up"). A quick attempt refused or
reset at the TCP level ends them: the knock misjudged.

A knock is a TCP connect plus the protocol's first exchange, the cheapest answer that only
the server itself can give: PostgreSQL's 8-byte SSLRequest, answered with one byte before
any authentication; MySQL's greeting, which the server sends unprompted. An answer counts as
reachable; a refusal, a reset or a close (a proxy or load balancer whose target is down
accepts, then resets), or silence past ``ANSWER_BOUND`` (a partition, a hung server) count as
not. The connection is then closed with a reset: no TIME_WAIT left behind, no session.
Supervisors of one process knocking on the same server share their knocks (``shared_knock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Mapping
from typing import Any

__all__ = ["KNOCK_INTERVAL", "Reach", "hello_for", "knock", "tcp_addresses"]

KNOCK_INTERVAL = 0.025  # seconds between two knocks while a backoff step is waited out
CONNECT_BOUND = 0.25  # a TCP connect not accepted within this counts as unreachable
ANSWER_BOUND = 0.25  # a server that has not answered within this counts as unreachable
RESOLVE_TTL = 1.0  # a host name is looked up again after this long
# What a knock sends: PostgreSQL's SSLRequest (length 8, code 80877103); MySQL speaks first.
HELLO = {"postgres": struct.pack("!ii", 8, 80877103), "mysql": b""}
FOLLOW_UPS = 4  # quick attempts after the port came back, FOLLOW_FIRST * 2**k apart
FOLLOW_FIRST = 0.1  # at most about one handshake per supervisor per 100 ms (a fleet)
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
    if len(getattr(dsn, "hosts", ())) > 1:
        return ()  # several hosts: which one to knock on is the driver's choice, not ours
    host = getattr(dsn, "host", None)
    if not isinstance(host, str) or not host or host.startswith("/") or "," in host:
        return ()
    settings: Mapping[str, Any] = getattr(dsn, "options", None) or {}
    extra: Mapping[str, Any] = getattr(options, "connect_kwargs", None) or {}
    if _ROUTING & (set(settings) | set(extra)):
        return ()
    port = dsn.port or DEFAULT_PORTS[dsn.backend]
    return ((host.strip("[]"), int(port)),)


def hello_for(backend: Any) -> bytes:
    """What a knock on ``backend``'s server sends first (empty: the server speaks first)."""
    return HELLO.get(getattr(getattr(backend, "dsn", None), "backend", None) or "", b"")


_resolved: dict[tuple[str, int], tuple[float, list[tuple[int, Any]]]] = {}


async def _resolve(host: str, port: int) -> list[tuple[int, Any]]:
    """(family, sockaddr) of ``host``: an IP literal without a trip to the resolver; a name
    resolved at most once per ``RESOLVE_TTL`` (a knock every 25 ms must not queue a lookup
    every 25 ms on the executor while DNS is slow or down)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            socket.inet_pton(family, host)
            return [(family, (host, port))]
    loop = asyncio.get_running_loop()
    cached = _resolved.get((host, port))
    if cached is not None and cached[0] > loop.time():
        return cached[1]
    seen: list[tuple[int, Any]] = []
    _resolved[(host, port)] = (loop.time() + RESOLVE_TTL, seen)  # one lookup at a time
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return seen
    for family, _, _, _, address in infos:
        if (family, address) not in seen:
            seen.append((family, address))
    if len(_resolved) > 256:
        _resolved.clear()
    return seen


_shared: dict[tuple[str, int, bytes], tuple[float, asyncio.Future[bool | None]]] = {}


async def shared_knock(host: str, port: int, hello: bytes = b"") -> tuple[bool | None, bool]:
    """``knock``, shared by every supervisor of the process knocking on the same server: a
    knock started less than ``KNOCK_INTERVAL`` ago (or still under way) answers for all, so
    that a hundred supervisors of one process make one knock, not a hundred. The knock runs
    in its first caller's task (no task of its own to outlive a closing supervisor); if that
    caller is cancelled, the others get None (cannot tell). Returns the answer and whether
    this caller sent the knock."""
    loop = asyncio.get_running_loop()
    key = (host, port, hello)
    now = loop.time()
    recent = _shared.get(key)
    if recent is not None and now - recent[0] < KNOCK_INTERVAL and recent[1].get_loop() is loop:
        # Shielded: one waiter cancelled (its supervisor closing) must not touch the others'.
        return await asyncio.shield(recent[1]), False
    future: asyncio.Future[bool | None] = loop.create_future()
    if len(_shared) > 256:
        _shared.clear()
    _shared[key] = (now, future)
    up: bool | None = None
    try:
        up = await knock(host, port, hello)
        return up, True
    finally:
        if not future.done():
            future.set_result(up)


async def knock(host: str, port: int, hello: bytes = b"") -> bool | None:
    """Whether the server at ``host:port`` answers (see the module docstring), trying each
    address the name resolves to; None when it does not resolve (cannot tell)."""
    addresses = await _resolve(host, port)
    if not addresses:
        return None
    for family, address in addresses:
        if await _knock_one(family, address, hello):
            return True
    return False


async def _knock_one(family: int, address: Any, hello: bytes) -> bool:
    loop = asyncio.get_running_loop()
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False  # out of descriptors: cannot tell, and no shortcut taken
    try:
        sock.setblocking(False)
        async with asyncio.timeout(CONNECT_BOUND):
            await loop.sock_connect(sock, address)
        if hello:
            await loop.sock_sendall(sock, hello)
        async with asyncio.timeout(ANSWER_BOUND):
            # One byte: 'S'/'N' to an SSLRequest, the start of a greeting; b"" is a close.
            return bool(await loop.sock_recv(sock, 1))
    except (OSError, TimeoutError):
        return False  # refused, reset, unreachable, or no answer in time
    finally:
        with contextlib.suppress(OSError):
            # A reset, not a FIN: no TIME_WAIT for every knock, and the server drops it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def _refused(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it wraps) is a TCP connection refused, reset or aborted."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, ConnectionRefusedError | ConnectionResetError | ConnectionAbortedError):
            return True
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return False


class Reach:
    """The knocking between attempts of one backend (its Monitor's)."""

    __slots__ = ("_down", "_follow", "_jitter", "_rng", "addresses", "hello", "knocks")

    def __init__(
        self,
        addresses: tuple[tuple[str, int], ...],
        hello: bytes = b"",
        jitter: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.addresses = addresses
        self.hello = hello  # what a knock sends first (see HELLO)
        self.knocks = 0  # knocks sent (not those shared with another), for tests and figures
        self._jitter = jitter  # the backoff's: spreads a fleet's quick attempts
        self._rng = rng or random.Random()
        self._down = False  # the last knock found nobody there
        self._follow: int | None = None  # quick attempts made since the port came back

    def reset(self) -> None:
        """Connected again: the next outage starts from scratch."""
        self._down = False
        self._follow = None

    def failed(self, exc: BaseException) -> None:
        """An attempt failed with ``exc``. Refused or reset before the server said anything:
        the port is not really back (a knock misjudged a slow proxy's reset), so no quick
        attempts; knock again."""
        if self._follow is not None and _refused(exc):
            self._follow = None
            self._down = True

    async def wait(self, delay: float) -> None:
        """Wait ``delay`` seconds (a backoff step), or less: until the port comes back, or
        until the next quick attempt after it came back. Without addresses, a plain sleep."""
        if not self.addresses or delay <= 0:
            await asyncio.sleep(delay)  # always yields, even at zero delay
            return
        if self._follow is not None:
            if self._follow < FOLLOW_UPS:
                # The port is open: no knocking (each knock would cost the server a process
                # now), only the next quick attempt, spread like the backoff's.
                quick = FOLLOW_FIRST * 2**self._follow
                quick *= 1.0 + self._rng.uniform(-self._jitter, self._jitter)
                self._follow += 1
                await asyncio.sleep(min(delay, quick))
                return
            self._follow = None  # the backoff alone from here
        loop = asyncio.get_running_loop()
        deadline = loop.time() + delay
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
                self._down = True
            elif up and self._down:
                self._down = False
                self._follow = 0
                return  # the port came back: attempt now
            else:
                # It answers (the handshake failed for another reason), or the name does not
                # resolve: the step as the backoff set it, without knocking again.
                await asyncio.sleep(max(0.0, deadline - loop.time()))
                return
            await asyncio.sleep(max(0.0, min(deadline, now + KNOCK_INTERVAL) - loop.time()))

    async def _knock_any(self) -> bool | None:
        """True if any address is reachable; False if none is; None if none could tell."""
        seen: bool | None = None
        for host, port in self.addresses:
            up, sent = await shared_knock(host, port, self.hello)
            self.knocks += sent
            if up:
                return True
            if up is False:
                seen = False
        return seen
