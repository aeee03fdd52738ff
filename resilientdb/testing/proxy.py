"""FaultProxy: an asyncio TCP proxy that injects network faults into a test.

Point the application at ``proxy.address`` instead of the database, then switch modes::

    async with FaultProxy("127.0.0.1", pg_port) as proxy:
        proxy.blackhole()       # partition: requests hang, nothing errors
        proxy.pass_through()    # heal
        proxy.reset()           # kill every connection with a TCP RST

``pass`` forwards bytes both ways, each chunk delayed by ``set_latency()``; a
target that cannot be reached gets the client connection reset. ``refuse``
accepts new connections and resets them at once without contacting the
target, as a closed port would; existing connections keep working.
``blackhole`` is a partition: new connections are accepted and held open with
no upstream, and existing ones stop forwarding in both directions, EOFs and
resets included, so a client waiting for a reply never gets one and never sees
an error. Bytes read meanwhile are held in the proxy.

Leaving ``blackhole`` heals the partition as TCP retransmission would: held
bytes are delivered in order and connections carry on. Connections accepted
during the blackhole are then relayed to the target if the new mode is
``pass``, and reset (counted as refused) if it is ``refuse``.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import math
import socket
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

__all__ = ["FaultProxy", "ProxyMode", "ProxyStats"]

from ._relay import _CHUNK, _QUEUE_CHUNKS, _Connection, _Item, _PeerReset, _set_rst_on_close

log = logging.getLogger(__name__)


class ProxyMode(enum.StrEnum):
    """What the proxy does with connections; a ``str`` so it prints as itself."""

    PASS = "pass"
    REFUSE = "refuse"
    BLACKHOLE = "blackhole"


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """A snapshot of the proxy's counters, taken by ``FaultProxy.stats``.

    ``connection_attempts`` counts every accepted client connection in any
    mode; ``refused`` those reset by ``refuse`` mode; ``resets`` those killed by
    ``reset()``; ``active_connections`` is a gauge of open client connections;
    ``bytes_up`` / ``bytes_down`` count bytes delivered to the target / client.
    """

    connection_attempts: int = 0
    refused: int = 0
    resets: int = 0
    active_connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class FaultProxy:
    """A TCP proxy to ``target_host:target_port`` that can refuse, blackhole,
    reset and delay connections on demand.

    Construct it anywhere; ``start()`` (or ``async with``) binds the listening
    socket, and ``stop()`` closes the listener and every connection and waits
    for every task the proxy created. It may be started again after a stop.
    Mode, latency and counters can be changed at any time, also before start.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        _check_host("target_host", target_host)
        _check_port("target_port", target_port, lowest=1)
        _check_host("listen_host", listen_host)
        _check_port("listen_port", listen_port, lowest=0)
        self._target_host = target_host
        self._target_port = target_port
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._mode = ProxyMode.PASS
        self._latency = 0.0
        self._listener: socket.socket | None = None
        self._bound: tuple[str, int] | None = None
        self._flowing: asyncio.Event | None = None  # set unless blackholed
        self._accept_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._conns: set[_Connection] = set()
        self._ids = itertools.count(1)
        self._attempts = self._refused = self._resets = 0
        self._bytes_up = self._bytes_down = 0

    def __repr__(self) -> str:
        listen = ":".join(map(str, self._bound)) if self._bound else "(not started)"
        target = f"{self._target_host}:{self._target_port}"
        return f"<FaultProxy {listen} -> {target} mode={self._mode.value}>"

    async def start(self) -> None:
        """Bind the listening socket and start accepting connections."""
        if self._listener is not None:
            raise RuntimeError("FaultProxy is already started")
        loop = asyncio.get_running_loop()
        host, port = self._listen_host, self._listen_port
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, *_, sockaddr = infos[0]
        listener = socket.create_server(sockaddr, family=family, backlog=128)
        listener.setblocking(False)
        self._listener = listener
        self._bound = (self._listen_host, listener.getsockname()[1])
        self._flowing = asyncio.Event()
        if self._mode is not ProxyMode.BLACKHOLE:
            self._flowing.set()
        self._accept_task = self._spawn(self._accept_loop(listener), "accept")

    async def stop(self) -> None:
        """Close the listener and every connection (FIN, not RST); wait for every task.

        Idempotent. If cancelled, everything is closed and every task cancelled
        already; calling ``stop()`` again waits for them to finish.
        """
        if self._accept_task is not None:
            self._accept_task.cancel()
            self._accept_task = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for conn in list(self._conns):
            conn.abort(rst=False)
        self._conns.clear()
        for task in self._tasks:
            # Cancelling twice would interrupt a relay's own cleanup.
            if not task.cancelling():
                task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks))

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def host(self) -> str:
        """The host the proxy listens on."""
        return self._listen_host

    @property
    def port(self) -> int:
        """The port actually bound; raises ``RuntimeError`` before ``start()``."""
        if self._bound is None:
            raise RuntimeError("FaultProxy is not started: the port is not bound yet")
        return self._bound[1]

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` for clients to connect to."""
        return (self.host, self.port)

    @property
    def mode(self) -> ProxyMode:
        """The current ``ProxyMode``; assign a mode or its string to switch."""
        return self._mode

    @mode.setter
    def mode(self, mode: ProxyMode | str) -> None:
        try:
            new = ProxyMode(mode)
        except ValueError:
            raise ValueError(f"mode must be one of {[m.value for m in ProxyMode]}") from None
        old, self._mode = self._mode, new
        if self._flowing is not None:
            if new is ProxyMode.BLACKHOLE:
                self._flowing.clear()
            else:
                self._flowing.set()
        if old is ProxyMode.BLACKHOLE and new is not ProxyMode.BLACKHOLE:
            for conn in [c for c in self._conns if c.task is None]:
                if new is ProxyMode.PASS:
                    self._relay_later(conn)
                else:
                    self._conns.discard(conn)
                    self._refused += 1
                    conn.abort(rst=True)

    def pass_through(self) -> None:
        """Forward traffic (and heal a blackhole)."""
        self.mode = ProxyMode.PASS

    def refuse(self) -> None:
        """Reset new connections at once; existing ones keep working.

        Over loopback the client may see the reset while connecting or on its first read.
        """
        self.mode = ProxyMode.REFUSE

    def blackhole(self) -> None:
        """Partition the network: hold every byte, keep every socket open."""
        self.mode = ProxyMode.BLACKHOLE

    def reset(self) -> int:
        """Reset every live connection now and return how many were reset.

        The client gets a TCP RST; the target sees its connection closed.
        """
        conns = list(self._conns)
        self._conns.clear()
        for conn in conns:
            conn.abort(rst=True)
        self._resets += len(conns)
        return len(conns)

    @property
    def latency(self) -> float:
        """Seconds added to every chunk forwarded, in each direction."""
        return self._latency

    def set_latency(self, seconds: float) -> None:
        """Delay each chunk read from now on by ``seconds`` (0 disables), keeping order.

        Chunks are pipelined, so this adds latency without limiting throughput.
        """
        number = isinstance(seconds, int | float) and not isinstance(seconds, bool)
        if not number or not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
        self._latency = float(seconds)

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return ProxyStats(
            connection_attempts=self._attempts,
            refused=self._refused,
            resets=self._resets,
            active_connections=len(self._conns),
            bytes_up=self._bytes_up,
            bytes_down=self._bytes_down,
        )

    @property
    def connection_attempts(self) -> int:
        """Client connections accepted so far, in any mode."""
        return self._attempts

    def reset_stats(self) -> None:
        """Zero the counters; ``active_connections`` is a gauge and stays."""
        self._attempts = self._refused = self._resets = 0
        self._bytes_up = self._bytes_down = 0

    def _spawn(self, coro: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        name = f"FaultProxy[{self._bound[1] if self._bound else '-'}] {what}"
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("%s crashed", task.get_name(), exc_info=exc)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:
                # EMFILE and friends: keep serving once descriptors free up.
                log.warning("FaultProxy accept failed: %s", exc)
                await asyncio.sleep(0.05)
                continue
            self._attempts += 1
            if self._mode is ProxyMode.REFUSE:
                self._refused += 1
                _set_rst_on_close(sock)
                sock.close()
                continue
            conn = _Connection(next(self._ids), sock)
            self._conns.add(conn)
            if self._mode is ProxyMode.PASS:
                self._relay_later(conn)
            # In blackhole mode the socket is just held: no task, no reads.

    def _relay_later(self, conn: _Connection) -> None:
        conn.task = self._spawn(self._relay(conn), f"conn#{conn.ident}")

    async def _relay(self, conn: _Connection) -> None:
        conn.started = True
        rst = False
        try:
            try:
                client_reader, conn.client = await asyncio.open_connection(sock=conn.sock)
                up_reader, conn.upstream = await asyncio.open_connection(
                    self._target_host, self._target_port
                )
            except OSError as exc:
                # RST is the closest a proxy can get to "connection refused".
                log.debug("FaultProxy conn#%d: cannot relay: %s", conn.ident, exc)
                rst = True
                return
            up_q: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
            down_q: asyncio.Queue[_Item] = asyncio.Queue(_QUEUE_CHUNKS)
            name = f"FaultProxy[{self.port}] conn#{conn.ident}"
            try:
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(self._read(client_reader, up_q), name=f"{name} read-up")
                    tg.create_task(self._write(up_q, conn.upstream, True), name=f"{name} up")
                    tg.create_task(self._read(up_reader, down_q), name=f"{name} read-down")
                    tg.create_task(self._write(down_q, conn.client, False), name=f"{name} down")
            except* (OSError, _PeerReset):
                rst = True
        finally:
            self._conns.discard(conn)
            await conn.aclose(rst=rst)

    async def _read(self, reader: asyncio.StreamReader, queue: asyncio.Queue[_Item]) -> None:
        loop = asyncio.get_running_loop()
        end: bytes | None = b""
        try:
            while data := await reader.read(_CHUNK):
                await queue.put((loop.time() + self._latency, data))
        except OSError:
            end = None
        # The end of the stream is queued like data, so latency and a
        # blackhole delay it too.
        await queue.put((loop.time() + self._latency, end))

    async def _write(
        self, queue: asyncio.Queue[_Item], writer: asyncio.StreamWriter, up: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        flowing = self._flowing
        assert flowing is not None, "relays only run after start()"
        while True:
            due, data = await queue.get()
            if (delay := due - loop.time()) > 0:
                await asyncio.sleep(delay)
            # Checked after the delay so nothing slips out once blackholed.
            await flowing.wait()
            if data is None:
                raise _PeerReset
            if not data:
                # Half-close, like TCP: the other direction keeps flowing.
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            if up:
                self._bytes_up += len(data)
            else:
                self._bytes_down += len(data)
            await writer.drain()


def _check_host(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_port(name: str, value: object, *, lowest: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= 65535:
        raise ValueError(f"{name} must be an integer in {lowest}..65535, got {value!r}")
