"""FaultProxy against a local asyncio echo server: every mode, switch, counter and cleanup."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from harness.polling import until
from resilientdb.testing import FaultProxy, ProxyMode
from resilientdb.testing.proxy import ProxyStats

SILENCE = 0.3  # how long "no reply" has to last to count as a hang

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Connect = Callable[[FaultProxy], Awaitable[Streams]]


class _EchoProtocol(asyncio.Protocol):
    def __init__(self, server: EchoServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.server.accepted += 1
        self.server.transports.add(transport)

    def data_received(self, data: bytes) -> None:
        self.server.received += data
        self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.transports.discard(self.transport)


class EchoServer:
    """The proxy's target: echoes bytes back and records what it saw."""

    def __init__(self) -> None:
        self.accepted = 0
        self.received = b""
        self.transports: set[asyncio.Transport] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _EchoProtocol(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def drop_all(self) -> None:
        for transport in list(self.transports):
            transport.close()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for transport in list(self.transports):
            transport.abort()
        await asyncio.sleep(0)  # let connection_lost run before the loop goes away


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Open client connections to a proxy; all are closed at teardown."""
    writers: list[asyncio.StreamWriter] = []

    async def _connect(fault_proxy: FaultProxy) -> Streams:
        reader, writer = await asyncio.open_connection(*fault_proxy.address)
        writers.append(writer)
        return reader, writer

    yield _connect
    for writer in writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def roundtrip(streams: Streams, payload: bytes, timeout: float = 2.0) -> bytes:
    reader, writer = streams
    writer.write(payload)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)


async def assert_silent(streams: Streams, payload: bytes = b"ping") -> None:
    """Send, get no reply within SILENCE, and find the socket still open."""
    reader, writer = streams
    writer.write(payload)
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(100), SILENCE)
    assert not reader.at_eof()
    assert not writer.is_closing()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes | type[OSError]:
    """What a client sees when the proxy drops it: b"" for EOF, or the error class."""
    try:
        return await asyncio.wait_for(reader.read(100), 2.0)
    except ConnectionResetError:
        return ConnectionResetError


async def refused_outcome(fault_proxy: FaultProxy, connect: Connect) -> object:
    """Connect and read; the RST may already arrive while connecting."""
    try:
        reader, _ = await connect(fault_proxy)
    except ConnectionResetError:
        return ConnectionResetError
    return await read_until_closed(reader)


def new_tasks(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks started since ``before``, leaving out the echo server's own accept tasks."""
    return {
        task
        for task in asyncio.all_tasks() - before
        if task.get_coro().__qualname__ != "BaseSelectorEventLoop._accept_connection2"  # type: ignore[union-attr]
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- pass ---------------------------------------------------------------------


async def test_pass_forwards_both_ways(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    streams = await connect(proxy)
    assert await roundtrip(streams, b"hello") == b"hello"
    assert await roundtrip(streams, b"again") == b"again"
    assert echo.received == b"helloagain"
    assert proxy.mode is ProxyMode.PASS
    assert proxy.stats == ProxyStats(
        connection_attempts=1, active_connections=1, bytes_up=10, bytes_down=10
    )


async def test_pass_forwards_large_payload_in_order(proxy: FaultProxy, connect: Connect) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB: many chunks, exercises backpressure
    assert await roundtrip(await connect(proxy), payload) == payload
    assert proxy.stats.bytes_up == proxy.stats.bytes_down == len(payload)


async def test_client_eof_is_forwarded_and_connection_ends(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    reader, writer = await connect(proxy)
    writer.write(b"last words")
    writer.write_eof()
    # The echo server closes on EOF; the reply still arrives, then EOF.
    assert await asyncio.wait_for(reader.read(), 2.0) == b"last words"
    await until(lambda: proxy.stats.active_connections == 0)
    await until(lambda: not echo.transports)


async def test_unreachable_target_closes_client(connect: Connect) -> None:
    async with FaultProxy("127.0.0.1", free_port()) as proxy:
        assert await refused_outcome(proxy, connect) in (b"", ConnectionResetError)
        assert proxy.connection_attempts == 1
        await until(lambda: proxy.stats.active_connections == 0)


# -- refuse -------------------------------------------------------------------


async def test_refuse_resets_new_connections_without_contacting_target(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    proxy.refuse()
    assert proxy.mode is ProxyMode.REFUSE
    for _ in range(2):
        assert await refused_outcome(proxy, connect) is ConnectionResetError
    assert echo.accepted == 0
    assert proxy.stats == ProxyStats(connection_attempts=2, refused=2)


async def test_refuse_keeps_existing_connections(proxy: FaultProxy, connect: Connect) -> None:
    streams = await connect(proxy)
    assert await roundtrip(streams, b"before") == b"before"
    proxy.refuse()
    assert await roundtrip(streams, b"after") == b"after"
    proxy.pass_through()
    assert await roundtrip(await connect(proxy), b"new") == b"new"
    assert proxy.stats.refused == 0
    assert proxy.connection_attempts == 2


# -- blackhole ----------------------------------------------------------------


async def test_blackhole_holds_existing_connection_then_heals(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    streams = await connect(proxy)
    assert await roundtrip(streams, b"one") == b"one"
    proxy.blackhole()
    await assert_silent(streams, b"two")
    assert echo.received == b"one"  # held in the proxy, never delivered
    proxy.pass_through()
    # Like a healed partition: what was held arrives, in order.
    assert await asyncio.wait_for(streams[0].readexactly(3), 2.0) == b"two"
    assert await roundtrip(streams, b"three") == b"three"


async def test_blackhole_holds_replies_already_on_their_way(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    proxy.set_latency(0.1)
    streams = await connect(proxy)
    streams[1].write(b"request")
    # The request reaches the server, the reply is delayed; blackhole it in flight.
    await until(lambda: echo.received == b"request")
    proxy.blackhole()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(streams[0].read(100), SILENCE)
    assert proxy.stats.bytes_down == 0


async def test_blackhole_hides_the_server_closing(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    streams = await connect(proxy)
    assert await roundtrip(streams, b"hi") == b"hi"
    proxy.blackhole()
    echo.drop_all()
    await until(lambda: not echo.transports)
    await assert_silent(streams)
    proxy.pass_through()
    # Healing delivers the held EOF.
    assert await read_until_closed(streams[0]) in (b"", ConnectionResetError)


async def test_blackhole_accepts_new_connections_without_upstream(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    proxy.blackhole()
    assert proxy.mode is ProxyMode.BLACKHOLE
    streams = await connect(proxy)
    await assert_silent(streams, b"hello")
    assert echo.accepted == 0
    assert proxy.stats == ProxyStats(connection_attempts=1, active_connections=1)
    proxy.pass_through()
    # Connections made during the partition are relayed once it heals.
    assert await asyncio.wait_for(streams[0].readexactly(5), 2.0) == b"hello"
    assert await roundtrip(streams, b"more") == b"more"
    assert echo.accepted == 1


async def test_leaving_blackhole_for_refuse_resets_connections_made_during_it(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    old = await connect(proxy)
    proxy.blackhole()
    reader, _ = await connect(proxy)
    proxy.refuse()
    assert await read_until_closed(reader) is ConnectionResetError
    assert await roundtrip(old, b"still here") == b"still here"
    assert echo.accepted == 1
    assert proxy.stats.refused == 1
    assert proxy.stats.active_connections == 1


# -- reset --------------------------------------------------------------------


async def test_reset_kills_every_live_connection(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    first = await connect(proxy)
    second = await connect(proxy)
    assert await roundtrip(first, b"a") == b"a"
    assert await roundtrip(second, b"b") == b"b"
    proxy.blackhole()
    third = await connect(proxy)  # held, never relayed: reset all the same
    assert proxy.reset() == 3
    for reader, _ in (first, second, third):
        assert await read_until_closed(reader) is ConnectionResetError
    assert proxy.stats.resets == 3
    assert proxy.stats.active_connections == 0
    await until(lambda: not echo.transports)  # upstream side closed too
    proxy.pass_through()
    assert await roundtrip(await connect(proxy), b"fresh") == b"fresh"
    assert proxy.reset() == 1
    assert proxy.stats.resets == 4


async def test_reset_with_no_connections_returns_zero(proxy: FaultProxy) -> None:
    assert proxy.reset() == 0
    assert proxy.stats.resets == 0


# -- latency ------------------------------------------------------------------


async def test_latency_delays_each_direction(proxy: FaultProxy, connect: Connect) -> None:
    streams = await connect(proxy)
    started = time.monotonic()
    await roundtrip(streams, b"warm")
    assert time.monotonic() - started < 0.1

    proxy.set_latency(0.1)
    assert proxy.latency == 0.1
    started = time.monotonic()
    assert await roundtrip(streams, b"slow") == b"slow"
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 0.45, elapsed

    proxy.set_latency(0)
    started = time.monotonic()
    await roundtrip(streams, b"fast")
    assert time.monotonic() - started < 0.1


async def test_latency_pipelines_chunks_in_order(proxy: FaultProxy, connect: Connect) -> None:
    proxy.set_latency(0.05)
    reader, writer = await connect(proxy)
    started = time.monotonic()
    for i in range(10):
        writer.write(b"%d," % i)
        await writer.drain()
        await asyncio.sleep(0.005)  # separate chunks
    expected = b"".join(b"%d," % i for i in range(10))
    assert await asyncio.wait_for(reader.readexactly(len(expected)), 2.0) == expected
    # Ten chunks each way but the delay is not paid per chunk in sequence.
    assert time.monotonic() - started < 0.4


# -- lifecycle ----------------------------------------------------------------


async def test_stop_closes_everything_and_leaves_no_tasks(
    echo: EchoServer, connect: Connect
) -> None:
    before = asyncio.all_tasks()
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    relayed = await connect(proxy)
    assert await roundtrip(relayed, b"x") == b"x"
    held = await connect(proxy)
    proxy.blackhole()
    blackholed = await connect(proxy)
    held[1].write(b"held")
    await until(lambda: proxy.stats.active_connections == 3)
    running = new_tasks(before)
    assert running  # it did run tasks, all named
    assert all(task.get_name().startswith("FaultProxy[") for task in running)

    await proxy.stop()

    assert not new_tasks(before)
    for reader, _ in (relayed, held, blackholed):
        assert await read_until_closed(reader) in (b"", ConnectionResetError)
    assert proxy.stats.active_connections == 0
    await until(lambda: not echo.transports)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(*proxy.address)
    await proxy.stop()  # idempotent


async def test_stop_right_after_connects_leaks_nothing(echo: EchoServer, connect: Connect) -> None:
    before = asyncio.all_tasks()
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    clients = await asyncio.gather(*(connect(proxy) for _ in range(5)))
    await proxy.stop()  # some relays have not even started yet
    assert not new_tasks(before)
    for reader, _ in clients:
        assert await read_until_closed(reader) in (b"", ConnectionResetError)
    gc.collect()  # an unclosed socket would now raise ResourceWarning under -W error


async def test_stop_before_healed_relays_ran_closes_their_sockets(
    echo: EchoServer, connect: Connect
) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    proxy.blackhole()
    clients = [await connect(proxy) for _ in range(3)]
    await until(lambda: proxy.stats.active_connections == 3)
    proxy.pass_through()  # schedules relay tasks...
    await proxy.stop()  # ...that are cancelled before they ever run
    for reader, _ in clients:
        assert await read_until_closed(reader) in (b"", ConnectionResetError)
    assert echo.accepted == 0
    gc.collect()  # an unclosed socket would now raise ResourceWarning under -W error


async def test_cancelled_stop_can_be_finished(echo: EchoServer, connect: Connect) -> None:
    before = asyncio.all_tasks()
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    assert await roundtrip(await connect(proxy), b"x") == b"x"
    stopping = asyncio.create_task(proxy.stop())
    await asyncio.sleep(0)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await proxy.stop()
    assert not new_tasks(before)


async def test_restart_after_stop(echo: EchoServer, connect: Connect) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    with pytest.raises(RuntimeError):
        _ = proxy.port
    async with proxy:
        with pytest.raises(RuntimeError):
            await proxy.start()
        assert proxy.address == ("127.0.0.1", proxy.port)
        assert "127.0.0.1" in repr(proxy)
    async with proxy:
        assert await roundtrip(await connect(proxy), b"back") == b"back"


async def test_mode_set_before_start_applies(echo: EchoServer, connect: Connect) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    proxy.mode = "refuse"
    async with proxy:
        assert await refused_outcome(proxy, connect) is ConnectionResetError
    assert proxy.stats.refused == 1


async def test_listen_port_is_honoured(echo: EchoServer) -> None:
    port = free_port()
    async with FaultProxy("127.0.0.1", echo.port, listen_port=port) as proxy:
        assert proxy.port == port


# -- counters and validation ----------------------------------------------------


async def test_reset_stats_zeroes_counters_but_not_the_gauge(
    proxy: FaultProxy, connect: Connect
) -> None:
    streams = await connect(proxy)
    await roundtrip(streams, b"data")
    proxy.refuse()
    assert await refused_outcome(proxy, connect) is ConnectionResetError
    assert proxy.stats == ProxyStats(
        connection_attempts=2, refused=1, active_connections=1, bytes_up=4, bytes_down=4
    )
    proxy.reset_stats()
    assert proxy.stats == ProxyStats(active_connections=1)
    assert proxy.connection_attempts == 0


def test_mode_is_a_str_enum() -> None:
    assert ProxyMode("blackhole") is ProxyMode.BLACKHOLE
    assert isinstance(ProxyMode.PASS, str)
    assert json.dumps([ProxyMode.PASS]) == '["pass"]'
    assert f"{ProxyMode.REFUSE}" == "refuse"


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"target_host": ""}, "target_host"),
        ({"target_host": 127}, "target_host"),
        ({"target_port": 0}, "target_port"),
        ({"target_port": 65536}, "target_port"),
        ({"target_port": "5432"}, "target_port"),
        ({"target_port": True}, "target_port"),
        ({"listen_host": ""}, "listen_host"),
        ({"listen_port": -1}, "listen_port"),
        ({"listen_port": 5432.0}, "listen_port"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs: dict[str, object], name: str) -> None:
    args: dict[str, object] = {"target_host": "127.0.0.1", "target_port": 5432, **kwargs}
    with pytest.raises(ValueError, match=name):
        FaultProxy(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [-0.1, float("nan"), float("inf"), "1", True])
def test_set_latency_rejects_bad_values(seconds: object) -> None:
    proxy = FaultProxy("127.0.0.1", 5432)
    with pytest.raises(ValueError, match="seconds"):
        proxy.set_latency(seconds)  # type: ignore[arg-type]
    assert proxy.latency == 0


def test_unknown_mode_is_rejected() -> None:
    proxy = FaultProxy("127.0.0.1", 5432)
    with pytest.raises(ValueError, match="mode"):
        proxy.mode = "drop"
    assert proxy.mode is ProxyMode.PASS
