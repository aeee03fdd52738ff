"""The per-connection plumbing of FaultProxy: one accepted client and its upstream."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass

_CHUNK = 64 * 1024
# Bounds what one direction holds in memory while blackholed or delayed; past
# it the proxy stops reading, so the sender's kernel buffers fill up as they
# would behind a real partition.
_QUEUE_CHUNKS = 64
_LINGER_RST = struct.pack("ii", 1, 0)

# What a direction's queue carries: (due time, chunk); b"" is EOF, None a reset.
_Item = tuple[float, bytes | None]


class _PeerReset(Exception):
    """A peer reset its side; raised late so a blackhole can hold it back."""


def _set_rst_on_close(sock: socket.socket) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    if sock.fileno() != -1:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)


@dataclass(eq=False, slots=True)
class _Connection:
    """One accepted client connection and, once relayed, its upstream."""

    ident: int
    sock: socket.socket
    client: asyncio.StreamWriter | None = None
    upstream: asyncio.StreamWriter | None = None
    task: asyncio.Task[None] | None = None
    started: bool = False  # the relay task has run, and so owns the socket
    aborted: bool = False

    def abort(self, *, rst: bool) -> None:
        """Drop the connection now, synchronously; idempotent."""
        if self.aborted:
            return
        self.aborted = True
        if rst:
            _set_rst_on_close(self.sock)
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        if self.task is not None:
            self.task.cancel()
        # A relay task that never ran cannot close the socket it was given.
        if self.task is None or not self.started:
            self.sock.close()

    async def aclose(self, *, rst: bool) -> None:
        """Close both sides and wait until their transports are gone."""
        if rst:
            _set_rst_on_close(self.sock)
        writers = [w for w in (self.upstream, self.client) if w is not None]
        for writer in writers:
            (writer.transport.abort if rst else writer.close)()
        if self.client is None:
            self.sock.close()
        try:
            for writer in writers:
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except asyncio.CancelledError:
            # A graceful close can wait forever on a peer that does not read.
            for writer in writers:
                writer.transport.abort()
            raise
