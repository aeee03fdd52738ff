"""COPY on PostgreSQL through the gate: bulk loads in (``copy_records_to_table``,
``copy_to_table``) and results out (``copy_from_query``, ``copy_from_table``).

The replay rules are the engine's (``_engine.py``), with what is particular to a COPY:

* an attempt that provably sent nothing (acquire failed, the driver's closed check) is made
  again, as for any call: the source has not been read and the output not written;
* copy-in is a write, but the server applies nothing of a COPY before the end of its data
  has been sent, and the driver sends the COPY statement just before it starts reading the
  source. A source the failed attempt never touched (the connection died before the COPY was
  sent, say while the driver read the table's column types) or provably did not read to its
  end (a list or tuple, whose iterator tells how many rows are left; a file, whose reads are
  seen) applied nothing: the call is replayed when the source can be read again (or was never
  touched), else ``DatabaseUnavailable`` says that nothing was applied. Otherwise the COPY may
  have been applied: replayed only when the caller passed ``idempotent=True`` *and* the source
  can be read again from its start (a collection of records, a path, a buffer, a seekable
  file, rewound to where it was); else ``OutcomeUnknown`` with the driver's error chained. A
  COPY is one statement: when the server rejects it (a constraint, a bad row) nothing of it
  was written, and the driver's error is raised unchanged;
* copy-out is a read (``copy_from_query`` unless its text may write: ``COPY (INSERT ...
  RETURNING ...) TO``), replayed after a lost connection unless ``idempotent=False``, with one
  more condition: the caller never receives the same bytes twice. A path is opened afresh
  (truncated) by each attempt; a seekable file is rewound to where it was and truncated; a
  callable, or a file that cannot seek, that has already received bytes cannot be taken back,
  so the call raises ``CopyInterrupted`` (its ``delivered`` counts the bytes) instead.
"""

from __future__ import annotations

import asyncio
import operator
import os
from collections.abc import AsyncIterable, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from ._leases import deadline_after
from ._redact import describe
from ._replay import verdict
from ._states import State
from .backends.base import ErrorKind
from .errors import CopyInterrupted, DatabaseUnavailable, NotSupported

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
    """What a copy-in reads: whether (and how) it can be read again from its start, and what
    the failed attempt did with it.

    The driver sends the COPY statement and then starts reading the source; the server applies
    nothing until the source has been read to its end (then the end of the data is sent). So
    the driver is given a thin wrapper, per attempt, that records when reading began and, where
    that costs nothing per row, whether it reached the end: a source never touched means the
    COPY was never sent, and one not read to its end means nothing of the COPY was applied.
    """

    __slots__ = ("_file", "_given", "_start", "_wrapper", "why_not")

    def __init__(self, source: Any, records: bool) -> None:
        self._given = source
        self._file: Any = None
        self._start = 0
        self._wrapper: _Tracked | None = None
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

    def for_attempt(self) -> Any:
        """What to give the driver for the next attempt (a file rewound first)."""
        if self._file is not None:
            self._file.seek(self._start)
        given = self._given
        wrapper: _Tracked | None = None
        if isinstance(given, AsyncIterable):
            wrapper = _AsyncRecords(given)
        elif hasattr(given, "read") and not _is_path(given):
            wrapper = _File(given)
        elif not _is_path(given) and not isinstance(given, bytearray | memoryview):
            wrapper = _Records(given)
        self._wrapper = wrapper
        return given if wrapper is None else wrapper

    def may_be_applied(self) -> bool:
        """Whether the failed attempt may have applied anything (False: provably nothing)."""
        w = self._wrapper
        return w is None or (w.touched and w.finished() is not False)

    @property
    def touched(self) -> bool:
        """The driver began reading it (a source of unknown kind counts as read)."""
        return self._wrapper is None or self._wrapper.touched


_EXACT_ITERATORS = frozenset({type(iter([])), type(iter(())), type(iter(range(0)))})


class _Tracked:
    __slots__ = ("_end", "touched")

    def __init__(self) -> None:
        self.touched = False  # reading began: the COPY statement was sent
        self._end: bool | None = None  # False: provably not read to its end

    def finished(self) -> bool | None:
        """True: read to its end; False: provably not; None: unknown."""
        return self._end


class _Records(_Tracked):
    """An iterable of records; iteration is the original's (no cost per row)."""

    __slots__ = ("_it", "_records")

    def __init__(self, records: Any) -> None:
        super().__init__()
        self._records = records
        self._it: Any = None

    def __iter__(self) -> Any:
        self.touched = True
        self._it = iter(self._records)
        return self._it

    def finished(self) -> bool | None:
        # A list's, tuple's or range's iterator knows exactly how many items it has left;
        # another iterator's hint may be a guess, which must not decide a replay.
        if type(self._it) not in _EXACT_ITERATORS:
            return None
        return operator.length_hint(self._it) == 0


class _AsyncRecords(_Tracked):
    """An async iterable; iteration is the original's."""

    __slots__ = ("_records",)

    def __init__(self, records: Any) -> None:
        super().__init__()
        self._records = records

    def __aiter__(self) -> Any:
        self.touched = True
        return self._records.__aiter__()


class _File(_Tracked):
    """A file-like source: its reads are counted (one per 512 kB chunk)."""

    __slots__ = ("_file",)

    def __init__(self, file: Any) -> None:
        super().__init__()
        self._file = file

    def read(self, size: int = -1) -> Any:
        self.touched = True
        if self._end is None:
            self._end = False
        data = self._file.read(size)
        if not data:
            self._end = True
        return data


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
    call: Callable[[Any, float | None, Any], Awaitable[Any]],
    *,
    timeout: float | None,
    idempotent: bool | None,
    source: Source | None = None,
    sink: Sink | None = None,
    query: str | None = None,
) -> Any:
    """``await call(conn, command_timeout, given)`` through the gate with the COPY replay rules
    (see the module docstring): ``source`` for a copy-in (``given`` is what the driver reads),
    ``sink`` for a copy-out (``query``: the text of ``copy_from_query``)."""
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
            given = None if source is None else source.for_attempt()
            # The driver's timeout does not reach the statements it prepares on its own (the
            # column types of copy_records_to_table, copy_from_query's arguments): the
            # deadline bounds the whole attempt.
            async with asyncio.timeout_at(deadline):
                result = await call(backend.raw(conn), command_timeout, given)
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
    if source is not None and not source.may_be_applied():
        # The COPY was never sent, or its data never reached its end: nothing was applied.
        if source.touched and source.why_not is not None:
            raise engine.final(
                DatabaseUnavailable(
                    f"backend {engine.name!r}: {op} lost its connection before the end of its "
                    f"data, so nothing of it was applied; not replayed: {source.why_not}"
                ),
                tried,
                exc,
            )
    elif source is not None:  # a write that may have been applied
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
