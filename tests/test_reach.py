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
from harness.servers import MariaDBServer, PostgresServer
from resilientdb import Backoff, State, events
from resilientdb._reach import HELLO, Reach, hello_for, knock, shared_knock, tcp_addresses
from resilientdb.config import parse_dsn, with_host
from resilientdb.testing import FaultProxy
from tests.handles import Recorder, adapter, supervised

PG_HELLO = HELLO["postgres"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Listener:
    """A TCP server on loopback: ``pg`` answers an SSLRequest with b"N", ``greet`` speaks
    first (MySQL), ``silent`` accepts and never answers, ``hangup`` accepts and closes."""

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
        try:
            if self.behaviour == "greet":
                writer.write(b"hello")
            elif self.behaviour == "pg":
                if await reader.readexactly(8) == PG_HELLO:
                    writer.write(b"N")
            elif self.behaviour == "hangup":
                return
            await reader.read()  # until the knock goes away
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.fixture
async def pg_like() -> AsyncIterator[tuple[Listener, int]]:
    listener = Listener("pg")
    port = await listener.start()
    yield listener, port
    await listener.stop()


async def test_knock_tells_an_answer_from_refused_reset_closed_and_silent(
    pg_like: tuple[Listener, int],
) -> None:
    listener, port = pg_like
    assert await knock("127.0.0.1", port, PG_HELLO) is True  # PostgreSQL: b"N"
    assert listener.accepted == 1
    # A name: every address it resolves to is tried (::1 may come first, and refuse).
    assert await knock("localhost", port, PG_HELLO) is True
    assert await knock("localhost", port, PG_HELLO) is True  # from the lookup cache
    assert listener.accepted == 3
    for behaviour, expected in (("greet", True), ("hangup", False), ("silent", False)):
        other = Listener(behaviour)
        try:
            assert await knock("127.0.0.1", await other.start()) is expected, behaviour
            assert other.accepted == 1
        finally:
            await other.stop()
    assert await knock("127.0.0.1", free_port()) is False  # refused
    assert await knock("no-such-host.invalid", 5432) is None  # cannot tell


async def test_knock_through_a_fault_proxy(pg_like: tuple[Listener, int]) -> None:
    _, port = pg_like
    async with FaultProxy("127.0.0.1", port) as proxy:
        assert await knock(proxy.host, proxy.port, PG_HELLO) is True
        proxy.blackhole()  # a partition: accepted, never answered
        assert await knock(proxy.host, proxy.port, PG_HELLO) is False
        proxy.refuse()
        assert await knock(proxy.host, proxy.port, PG_HELLO) is False
        assert proxy.stats.refused == 2  # the held one (blackhole) and the knock
    async with FaultProxy("127.0.0.1", free_port()) as proxy:  # to a port nobody serves
        assert await knock(proxy.host, proxy.port, PG_HELLO) is False
        assert proxy.connection_attempts == 1


async def test_knock_on_real_servers(pg: PostgresServer, mariadb: MariaDBServer) -> None:
    pg_dsn, my_dsn = parse_dsn(pg.dsn()), parse_dsn(mariadb.dsn())
    assert await knock(pg.host, pg.port, hello_for(type("B", (), {"dsn": pg_dsn})())) is True
    assert await knock(mariadb.host, mariadb.port, hello_for(type("B", (), {"dsn": my_dsn})()))
    assert await knock(pg.host, pg.port, b"") is False  # PostgreSQL waits for the client


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
    assert tcp_addresses(Backend("postgresql://u@h1:5432,h2:5433/x")) == ()  # several hosts
    assert tcp_addresses(Backend("postgresql://u@/x?host=h1,h2&port=5432,5433")) == ()
    assert tcp_addresses(Backend("mysql://u@h1:3306,h2:3306/x")) == ()
    assert tcp_addresses(object()) == ()
    assert hello_for(Backend("postgresql://u@h/x")) == PG_HELLO
    assert hello_for(Backend("mysql://u@h/x")) == b""
    assert hello_for(object()) == b""


async def test_a_step_is_not_shortened_while_the_server_answers(
    pg_like: tuple[Listener, int],
) -> None:
    """A server that answers but fails the handshake keeps the backoff's pace, and is
    knocked on once per step (an answered knock costs PostgreSQL a process)."""
    listener, port = pg_like
    reach = Reach((("127.0.0.1", port),), PG_HELLO)
    started = time.monotonic()
    await reach.wait(0.3)
    assert time.monotonic() - started >= 0.29
    assert reach.knocks == 1 and listener.accepted == 1


async def test_a_step_ends_when_the_port_comes_back() -> None:
    port = free_port()
    reach = Reach((("127.0.0.1", port),), PG_HELLO)
    listener = Listener("pg")
    waiting = asyncio.create_task(reach.wait(30.0))
    try:
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert reach.knocks >= 2  # refused, refused, ...
        await listener.start(port)
        async with asyncio.timeout(10):  # far below the 30 s step
            await waiting
        assert listener.accepted >= 1
    finally:
        waiting.cancel()
        await listener.stop()


def test_only_a_refusal_at_the_tcp_level_ends_the_quick_attempts() -> None:
    reach = Reach((("127.0.0.1", 1),))
    reach._follow = 1
    reach.failed(RuntimeError("the database system is starting up"))
    assert reach._follow == 1  # the server spoke: it is there
    wrapped = RuntimeError("cannot connect")
    wrapped.__cause__ = ConnectionResetError(104, "reset by peer")
    reach.failed(wrapped)
    assert reach._follow is None and reach._down  # knock again


async def test_quick_attempts_after_the_port_came_back_then_the_backoff() -> None:
    """After the port came back the server may still be starting up: a few quick steps
    (100, 200, 400, 800 ms), without knocks, then the backoff's own step again."""
    reach = Reach((("127.0.0.1", free_port()),))
    reach._follow = 0  # as right after the port came back
    started = time.monotonic()
    for _ in range(4):
        await reach.wait(30.0)
    assert time.monotonic() - started < 10  # 1.5 s in all, not 4 x 30 s
    assert reach.knocks == 0
    waiting = asyncio.create_task(reach.wait(30.0))
    await asyncio.sleep(0.3)
    assert not waiting.done()  # the 30 s step, knocking on a closed port
    assert reach.knocks >= 2
    waiting.cancel()


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


async def test_supervisors_of_one_process_share_a_knock(pg_like: tuple[Listener, int]) -> None:
    """A hundred supervisors knocking on the same server make one knock, not a hundred; the
    knocking one cancelled, the others get "cannot tell" and nothing is left running."""
    listener, port = pg_like
    results = await asyncio.gather(*(shared_knock("127.0.0.1", port, PG_HELLO) for _ in range(50)))
    assert all(up is True for up, _ in results)
    assert sum(sent for _, sent in results) == 1 and listener.accepted == 1

    silent = Listener("silent")
    quiet = await silent.start()
    try:
        first = asyncio.create_task(shared_knock("127.0.0.1", quiet, PG_HELLO))
        await asyncio.sleep(0)  # the first one is knocking
        others = [asyncio.create_task(shared_knock("127.0.0.1", quiet, PG_HELLO)) for _ in range(3)]
        await asyncio.sleep(0.05)
        first.cancel()
        assert [await o for o in others] == [(None, False)] * 3
        with pytest.raises(asyncio.CancelledError):
            await first
        # The knock's socket was closed with it: the server's side of it ends too.
        await until(lambda: asyncio.all_tasks() == {asyncio.current_task()}, timeout=2)
        assert silent.accepted == 1
    finally:
        await silent.stop()
