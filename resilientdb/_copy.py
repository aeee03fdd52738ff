"""COPY on PostgreSQL through the gate: bulk loads in (``copy_records_to_table``,
``copy_to_table``) and results out (``copy_from_query``, ``copy_from_table``).

The replay rules are the engine's (``_engine.py``), with what is particular to a COPY:

* an attempt that provably sent nothing (acquire failed, the driver's closed check) is made
  again, as for any call: the source has not been read and the output not written;
* copy-in is a write: once the COPY may have reached the server, it is replayed only when the
  caller passed ``idempotent=True`` *and* the source can be read again from its start (a
  collection of records, a path, a bytes-like object, a seekable file, rewound to where it
  was); otherwise ``OutcomeUnknown`` with the driver's error chained. A COPY is one statement:
  when the server rejects it (a constraint, a bad row) nothing of it was written, and the
  driver's error is raised unchanged;
* copy-out is a read (``copy_from_query`` unless its text may write: ``COPY (INSERT ...
  RETURNING ...) TO``), replayed after a lost connection unless ``idempotent=False``, with one
  more condition: the caller never receives the same bytes twice. A path is opened afresh
  (truncated) by each attempt; a seekable file is rewound to where it was and truncated; a
  callable, or a file that cannot seek, that has already received bytes cannot be taken back,
  so the call raises ``CopyInterrupted`` (its ``delivered`` counts the bytes) instead.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from ._leases import deadline_after
from ._redact import describe
from ._replay import verdict
from ._states import State
from .backends.base import ErrorKind
from .errors import CopyInterrupted, NotSupported

if TYPE_CHECKING:
    from ._engine import Engine
    from ._leases import Attempts

__all__ = ["Sink", "Source", "require_postgres", "run_copy"]


def require_postgres(engine: Engine, what: str) -> None:
    """Raise ``NotSupported`` (nothing sent) unless the backend is PostgreSQL."""
    family = engine.backend.facts.family
    if family != "postgresql":
        raise NotSupported(
            f"backend {engine.name!r} is {family}: {what} is available on PostgreSQL only "
            f"(nothing was sent)"
        )


class Source:
    """What a copy-in reads, and whether (and how) it can be read again from its start."""

    __slots__ = ("_file", "_start", "why_not")

    def __init__(self, source: Any, records: bool) -> None:
        self._file: Any = None
        self._start = 0
        self.why_not: str | None = None  # None: a replay can read it again from its start
        if records:
            # A collection can be iterated again; an iterator or async iterable cannot.
            if isinstance(source, AsyncIterable) or not isinstance(source, Collection):
                self.why_not = "its records are an iterator, which cannot be read again"
            return
        if _is_path(source) or isinstance(source, bytearray | memoryview):
            return
        if hasattr(source, "read"):
            if _seekable(source):
                self._file, self._start = source, source.tell()
            else:
                self.why_not = "its source is a file that cannot seek back"
            return
        self.why_not = "its source is an iterator, which cannot be read again"

    def rewind(self) -> None:
        """Before a replay: put a file back where the first attempt found it."""
        if self._file is not None:
            self._file.seek(self._start)


class Sink:
    """The caller's output for a copy-out, counted, and rewound before a replay."""

    __slots__ = ("_file", "_start", "_write", "delivered", "output")

    def __init__(self, output: Any) -> None:
        self.delivered = 0  # bytes handed to the caller's output by the current attempt
        self._file: Any = None
        self._start = 0
        self._write: Callable[[bytes], Awaitable[Any]] | None = None
        self.output: Any = output  # what the driver is given
        if _is_path(output):
            return  # the driver opens it for writing (truncating) at each attempt
        if hasattr(output, "write"):
            loop = asyncio.get_running_loop()
            if _seekable(output):
                self._file, self._start = output, output.tell()

            async def write_file(data: bytes) -> None:
                # As the driver does for a file: the write may block, so it runs in a thread.
                await loop.run_in_executor(None, output.write, data)

            self._write = write_file
        elif callable(output):
            self._write = output
        else:
            raise TypeError(
                f"output must be a path, a file-like object or an async callable taking "
                f"bytes, not {type(output).__name__}"
            )
        self.output = self._counted

    async def _counted(self, data: bytes) -> None:
        assert self._write is not None
        self.delivered += len(data)
        await self._write(data)

    def rewind(self, op: str, exc: BaseException, backend: str) -> None:
        """Before a replay: take back what the failed attempt wrote, or raise
        ``CopyInterrupted`` when that is impossible."""
        if self.delivered == 0:
            return
        if self._file is None:
            raise CopyInterrupted(
                f"backend {backend!r}: {op} lost its connection ({describe(exc)}) after "
                f"{self.delivered} bytes had reached the output, which cannot be rewound; "
                f"not replayed, so that no byte is delivered twice (the output is partial)",
                self.delivered,
            ) from exc
        self._file.seek(self._start)
        self._file.truncate()
        self.delivered = 0


def _is_path(obj: Any) -> bool:
    # bytes too: the driver reads them as a file name (os.fspath accepts them).
    return isinstance(obj, str | bytes | os.PathLike)


def _callers_io(exc: BaseException, conn: Any) -> bool:
    """An error of the caller's own file or callable, not of the connection: an OSError that
    is no socket error, while the connection is still open."""
    if not isinstance(exc, OSError) or isinstance(exc, ConnectionError | TimeoutError):
        return False
    try:
        return not conn.is_closed()
    except Exception:
        return False


def _seekable(f: Any) -> bool:
    try:
        return bool(f.seekable()) and isinstance(f.tell(), int)
    except Exception:
        return False


async def run_copy(
    engine: Engine,
    op: str,
    call: Callable[[Any, float | None], Awaitable[Any]],
    *,
    timeout: float | None,
    idempotent: bool | None,
    source: Source | None = None,
    sink: Sink | None = None,
    query: str | None = None,
) -> Any:
    """``await call(conn, command_timeout)`` through the gate with the COPY replay rules (see
    the module docstring): ``source`` for a copy-in, ``sink`` for a copy-out (``query``: the
    text of ``copy_from_query``)."""
    opts, gate, backend = engine.options, engine.gate, engine.backend
    deadline = deadline_after(timeout)
    tried: Attempts | None = None
    while True:
        if gate.state is not State.CONNECTED:
            await engine.pass_gate(deadline, tried)
        generation = engine.monitor.generation
        acquire_timeout: float | None = opts.acquire_timeout
        command_timeout: float | None = None  # None: the connection's command_timeout
        if deadline is not None:
            acquire_timeout = engine.bound(opts.acquire_timeout, deadline)
            command_timeout = engine.bound(opts.command_timeout, deadline)
        try:
            cm = backend.acquire(acquire_timeout)
            conn = await cm.__aenter__()
        except Exception as exc:
            tried = tried or engine._attempts(deadline)
            engine.acquire_failed(exc, generation, deadline, op, tried)
            await engine.pause(op, tried, exc)
            continue
        try:
            if source is not None:
                source.rewind()
            result = await call(backend.raw(conn), command_timeout)
        except Exception as exc:
            if _callers_io(exc, conn):
                # The caller's file failed (not found, disk full): nothing of a copy-in was
                # applied, and the connection may be mid-COPY: closed, not reported.
                backend.discard(conn)
                await engine.release_after_failure(cm, exc, deadline)
                raise engine.final(exc, tried) from None
            kind = engine.classify_sent(exc, conn)
            await engine.release_after_failure(cm, exc, deadline)
            tried = tried or engine._attempts(deadline)
            _decide(engine, exc, kind, generation, op, idempotent, tried, source, sink, query)
            await engine.pause(op, tried, exc)
            continue
        except BaseException as exc:
            # Cancelled: given back in the background (see Engine.run).
            engine.monitor.release_later(cm.__aexit__(type(exc), exc, exc.__traceback__))
            raise
        await engine.release(cm, generation, op, deadline)
        return result


def _decide(
    engine: Engine,
    exc: Exception,
    kind: ErrorKind,
    generation: int,
    op: str,
    idempotent: bool | None,
    tried: Attempts,
    source: Source | None,
    sink: Sink | None,
    query: str | None,
) -> None:
    """Raise the call's final error, or return to replay it."""
    if kind is not ErrorKind.CONNECTION:
        # One statement, rolled back whole by the server: nothing of this attempt applied.
        raise engine.final(exc, tried)
    monitor = engine.monitor
    if isinstance(exc, TimeoutError):
        monitor.report_suspect(generation, exc, op)
    else:
        monitor.report_lost(generation, exc, op)
    if engine.backend.unsent(exc):
        return  # nothing sent: the source was not read, the output not written
    tried.replays += 1
    if source is not None:  # a write
        if idempotent is not True:
            raise engine.unknown(op, exc, "a COPY into a table is a write")
        if source.why_not is not None:
            raise engine.unknown(op, exc, source.why_not)
        tried.applied = tried.applied or exc
    else:
        if idempotent is False:
            raise engine.unknown(op, exc, "idempotent=False forbids replaying it")
        if query is not None and idempotent is not True:
            v = verdict(query, "postgresql")
            if not v.read_only or v.lookup:
                raise engine.unknown(op, exc, "its query may write")
        if sink is not None:
            sink.rewind(op, exc, engine.name)
    engine._within_budget(op, tried, exc)
