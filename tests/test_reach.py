"""Knocking on the server's port between reconnect attempts (``resilientdb._reach``): a server
that comes back is reconnected to at once, not at the end of the backoff step, and the
handshakes stay on the backoff schedule."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator

import pytest

from harness.polling import until
from harness.servers import PostgresServer
from resilientdb import Backoff, State, events
from resilientdb._reach import Reach, knock, tcp_addresses
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy
from tests.handles import Recorder, adapter, supervised


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Listener:
    """A TCP server on loopback that accepts and stays silent, or greets, or hangs up."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.accepted = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.behaviour == "greet":
            writer.write(b"hello")
        if self.behaviour == "hangup":
            writer.close()
            return
        await reader.read()  # until the knock goes away
        writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def silent() -> AsyncIterator[tuple[Listener, int]]:
    listener = Listener("silent")
    port = await listener.start()
    yield listener, port
    await listener.stop()


async def test_knock_tells_open_from_closed_reset_and_hung_up(
    silent: tuple[Listener, int],
) -> None:
    listener, port = silent
    assert await knock("127.0.0.1", port) is True  # accepted, silent: a PostgreSQL
    assert listener.accepted == 1
    greeter = Listener("greet")
    try:
        assert await knock("127.0.0.1", await greeter.start()) is True  # a MySQL greeting
    finally:
        await greeter.stop()
    hangup = Listener("hangup")
    try:
        assert await knock("127.0.0.1", await hangup.start()) is False  # nothing behind it
        assert hangup.accepted == 1
    finally:
        await hangup.stop()
    assert await knock("127.0.0.1", free_port()) is False  # refused
    assert await knock("no-such-host.invalid", 5432) is None  # cannot tell


async def test_knock_through_a_fault_proxy(silent: tuple[Listener, int]) -> None:
    _, port = silent
    async with FaultProxy("127.0.0.1", port) as proxy:
        assert await knock(proxy.host, proxy.port) is True
        proxy.refuse()
        assert await knock(proxy.host, proxy.port) is False
        assert proxy.stats.refused == 1
    dead = free_port()
    async with FaultProxy("127.0.0.1", dead) as proxy:  # passing, to a port nobody serves
        assert await knock(proxy.host, proxy.port) is False
        assert proxy.connection_attempts == 1


def test_tcp_addresses_only_for_one_plain_tcp_address() -> None:
    class Backend:
        def __init__(self, url: str, **kwargs: object) -> None:
            self.dsn = parse_dsn(url)
            self.options = type("O", (), {"connect_kwargs": kwargs})()

    assert tcp_addresses(Backend("postgresql://u@db.example:6000/x")) == (("db.example", 6000),)
    assert tcp_addresses(Backend("postgresql://u@10.0.0.1/x")) == (("10.0.0.1", 5432),)
    assert tcp_addresses(Backend("mysql://u@10.0.0.1/x")) == (("10.0.0.1", 3306),)
    assert tcp_addresses(Backend("mysql://u@[::1]:3307/x")) == (("::1", 3307),)
    assert tcp_addresses(Backend("postgresql:///x?host=/tmp")) == ()
    assert tcp_addresses(Backend("postgresql://u@db/x", host="other")) == ()
    assert tcp_addresses(Backend("mysql://u@db/x?unix_socket=/tmp/s")) == ()
    assert tcp_addresses(Backend("sqlite:///tmp/x.db")) == ()
    assert tcp_addresses(object()) == ()


async def test_a_step_is_not_shortened_while_the_port_stays_open(
    silent: tuple[Listener, int],
) -> None:
    """A server that accepts TCP but fails the handshake keeps the backoff's pace."""
    listener, port = silent
    reach = Reach((("127.0.0.1", port),))
    started = time.monotonic()
    await reach.wait(0.3)
    assert time.monotonic() - started >= 0.29
    assert reach.knocks >= 3 and listener.accepted >= 3


async def test_a_step_ends_when_the_port_comes_back() -> None:
    port = free_port()
    reach = Reach((("127.0.0.1", port),))
    listener = Listener("silent")
    waiting = asyncio.create_task(reach.wait(30.0))
    try:
        await asyncio.sleep(0.2)
        assert not waiting.done()
        knocks = reach.knocks
        assert knocks >= 2  # refused, refused, ...
        await listener.start(port)
        async with asyncio.timeout(10):  # far below the 30 s step
            await waiting
        assert listener.accepted >= 1
        # Then quick follow-ups (the server may still be starting up): 25 ms, 50 ms, ...
        started = time.monotonic()
        await reach.wait(30.0)
        await reach.wait(30.0)
        assert time.monotonic() - started < 10
    finally:
        waiting.cancel()
        await listener.stop()


async def test_follow_ups_stop_when_the_port_goes_away_again(
    silent: tuple[Listener, int],
) -> None:
    listener, port = silent
    reach = Reach((("127.0.0.1", port),))
    reach._down = True  # as after refused knocks
    await reach.wait(30.0)  # the port is open: returns at once
    await listener.stop()  # gone again
    waiting = asyncio.create_task(reach.wait(0.6))
    started = time.monotonic()
    await waiting
    assert time.monotonic() - started >= 0.55  # back to the backoff's step, not 25 ms


async def test_recovery_follows_the_knock_not_the_backoff(pg: PostgresServer) -> None:
    """Through a FaultProxy that refuses, then passes: the supervisor reconnects as soon as
    a knock gets through, long before its 5 s backoff step, with no extra handshake."""
    async with FaultProxy(pg.host, pg.port) as proxy:
        dsn = with_host(parse_dsn(pg.dsn()), proxy.host, proxy.port)
        sup = supervised(
            dsn, min_size=1, max_size=2, backoff=Backoff(initial=5.0, maximum=5.0, jitter=0)
        )
        async with sup:
            rec = Recorder(sup)
            assert await sup.db.fetchval("SELECT 1") == 1
            proxy.refuse()
            proxy.reset()
            with pytest.raises(Exception):  # noqa: B017 - whatever the lost connection raised
                await sup.db.fetchval("SELECT 1", timeout=0.5)
            await until(lambda: sup.state is State.RECONNECTING, timeout=10)
            await asyncio.sleep(0.3)
            refused = proxy.stats.refused
            assert refused >= 3  # the knocks (and the failed check), refused by the proxy
            proxy.pass_through()
            healed = time.monotonic()
            async with asyncio.timeout(4.0):  # the backoff alone would take 5 s
                assert await sup.db.fetchval("SELECT 1") == 1
            assert time.monotonic() - healed < 4.0
            await rec.settle()
            reconnected = rec.of(events.Reconnected)
            assert len(reconnected) == 1
            # Every handshake of the outage: the failed check, then the probe that succeeded
            # (as many as the backoff alone would have made, only sooner).
            assert reconnected[0].attempts == 2
            assert adapter(sup).opened
