"""The COPY methods of ``Database`` and of the transaction handle (PostgreSQL only).

Same arguments as asyncpg's methods of the same names, plus ``timeout=`` (the whole call) and,
on ``Database``, ``idempotent=``. The replay rules are in ``_copy.py``. Inside a transaction
nothing is replayed: a lost connection raises ``TransactionLost`` (the server rolled back).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ._copy import Sink, Source, require_postgres, run_copy
from ._leases import deadline_after
from ._params import prepare

if TYPE_CHECKING:
    from ._engine import Engine
    from ._transaction import Transaction

__all__ = ["CopyMethods", "TransactionCopy"]

# The format options asyncpg accepts, by method (checked before anything is sent).
_OUT_OPTIONS = frozenset(
    {"format", "oids", "delimiter", "null", "header", "quote", "escape", "force_quote"}
    | {"encoding"}
)
_IN_OPTIONS = _OUT_OPTIONS | {"freeze", "force_not_null", "force_null"}


def _check_options(op: str, options: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(
            f"{op}() got unexpected keyword arguments {', '.join(unknown)}; the COPY options "
            f"are {', '.join(sorted(allowed))}"
        )


def _table_kw(columns: Iterable[str] | None, schema_name: str | None) -> dict[str, Any]:
    return {"columns": None if columns is None else list(columns), "schema_name": schema_name}


class CopyMethods:
    """``Database``'s COPY methods."""

    __slots__ = ()
    _engine: Engine

    async def copy_records_to_table(
        self,
        table_name: str,
        *,
        records: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        where: str | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
    ) -> str:
        """Load ``records`` (an iterable or async iterable of row tuples) into
        ``table_name`` with binary COPY; returns the command tag (``"COPY 1000"``).

        A write: replayed when nothing was sent, or with ``idempotent=True`` when ``records``
        is a collection (a list, a tuple) that can be read again; otherwise a connection lost
        mid-COPY raises ``OutcomeUnknown``. PostgreSQL only (``NotSupported`` elsewhere).
        """
        engine = self._engine
        require_postgres(engine, "copy_records_to_table")
        kw = {**_table_kw(columns, schema_name), "where": where}
        if (tx := engine.joined()) is not None:
            return await tx.copy_records_to_table(
                table_name, records=records, timeout=timeout, **kw
            )

        async def call(conn: Any, bound: float | None, given: Any) -> Any:
            return await conn.copy_records_to_table(table_name, records=given, timeout=bound, **kw)

        result: str = await run_copy(
            engine,
            "copy_records_to_table",
            call,
            timeout=timeout,
            idempotent=idempotent,
            source=Source(records, records=True),
        )
        return result

    async def copy_to_table(
        self,
        table_name: str,
        *,
        source: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        where: str | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
        **options: Any,
    ) -> str:
        """Load ``source`` (a path, a file-like object, bytes, or an async iterable of bytes)
        into ``table_name`` with COPY ... FROM STDIN; ``options`` are asyncpg's (``format``,
        ``delimiter``, ``header``, ...). Returns the command tag.

        A write: replayed when nothing was sent, or with ``idempotent=True`` when the source
        can be read again (a path, bytes, a seekable file: rewound to where it was).
        """
        engine = self._engine
        require_postgres(engine, "copy_to_table")
        _check_options("copy_to_table", options, _IN_OPTIONS)
        kw = {**_table_kw(columns, schema_name), "where": where, **options}
        if (tx := engine.joined()) is not None:
            return await tx.copy_to_table(table_name, source=source, timeout=timeout, **kw)

        async def call(conn: Any, bound: float | None, given: Any) -> Any:
            return await conn.copy_to_table(table_name, source=given, timeout=bound, **kw)

        result: str = await run_copy(
            engine,
            "copy_to_table",
            call,
            timeout=timeout,
            idempotent=idempotent,
            source=Source(source, records=False),
        )
        return result

    async def copy_from_query(
        self,
        query: Any,
        *args: Any,
        output: Any,
        timeout: float | None = None,
        idempotent: bool | None = None,
        **options: Any,
    ) -> str:
        """Write the result of ``query`` to ``output`` (a path, a file-like object, or an
        async callable taking bytes) with COPY ... TO STDOUT. Returns the command tag.

        A read, replayed after a lost connection unless ``idempotent=False`` or the query may
        write, and never so that ``output`` receives a byte twice: a path is rewritten, a
        seekable file rewound and truncated; otherwise ``CopyInterrupted`` once bytes were
        delivered.
        """
        engine = self._engine
        require_postgres(engine, "copy_from_query")
        _check_options("copy_from_query", options, _OUT_OPTIONS)
        # A Query or a SQLAlchemy select() is converted like any query; the replay rules and
        # asyncpg see the driver's SQL.
        query, args = prepare(query, args, engine.backend.facts.family)
        if (tx := engine.joined()) is not None:
            return await tx.copy_from_query(query, *args, output=output, timeout=timeout, **options)
        sink = Sink(output)

        async def call(conn: Any, bound: float | None, _: Any) -> Any:
            sink.delivered = 0
            return await conn.copy_from_query(
                query, *args, output=sink.output, timeout=bound, **options
            )

        result: str = await run_copy(
            engine,
            "copy_from_query",
            call,
            timeout=timeout,
            idempotent=idempotent,
            sink=sink,
            query=query,
        )
        return result

    async def copy_from_table(
        self,
        table_name: str,
        *,
        output: Any,
        columns: Sequence[str] | None = None,
        schema_name: str | None = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
        **options: Any,
    ) -> str:
        """Write the rows of ``table_name`` to ``output`` (see ``copy_from_query``)."""
        engine = self._engine
        require_postgres(engine, "copy_from_table")
        _check_options("copy_from_table", options, _OUT_OPTIONS)
        kw = {**_table_kw(columns, schema_name), **options}
        if (tx := engine.joined()) is not None:
            return await tx.copy_from_table(table_name, output=output, timeout=timeout, **kw)
        sink = Sink(output)

        async def call(conn: Any, bound: float | None, _: Any) -> Any:
            sink.delivered = 0
            return await conn.copy_from_table(table_name, output=sink.output, timeout=bound, **kw)

        result: str = await run_copy(
            engine, "copy_from_table", call, timeout=timeout, idempotent=idempotent, sink=sink
        )
        return result


class TransactionCopy:
    """The transaction handle's COPY methods: on its connection, never replayed."""

    __slots__ = ()

    async def copy_records_to_table(self, table_name: str, *, records: Any, **kw: Any) -> str:
        """``Database.copy_records_to_table`` inside the transaction."""
        _check_options("copy_records_to_table", _rest(kw), frozenset())
        return await _in_tx(self, "copy_records_to_table", table_name, records=records, **kw)

    async def copy_to_table(self, table_name: str, *, source: Any, **kw: Any) -> str:
        """``Database.copy_to_table`` inside the transaction."""
        _check_options("copy_to_table", _rest(kw), _IN_OPTIONS)
        return await _in_tx(self, "copy_to_table", table_name, source=source, **kw)

    async def copy_from_query(self, query: Any, *args: Any, output: Any, **kw: Any) -> str:
        """``Database.copy_from_query`` inside the transaction."""
        handle: Any = self
        tx: Transaction = handle
        query, args = prepare(query, args, tx._engine.backend.facts.family)
        _check_options("copy_from_query", _rest(kw), _OUT_OPTIONS)
        return await _in_tx(self, "copy_from_query", query, *args, output=output, **kw)

    async def copy_from_table(self, table_name: str, *, output: Any, **kw: Any) -> str:
        """``Database.copy_from_table`` inside the transaction."""
        _check_options("copy_from_table", _rest(kw), _OUT_OPTIONS)
        return await _in_tx(self, "copy_from_table", table_name, output=output, **kw)


def _rest(kw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if k not in ("columns", "schema_name", "where", "timeout")}


async def _in_tx(handle: Any, op: str, *args: Any, **kw: Any) -> str:
    tx: Transaction = handle
    engine = tx._engine
    require_postgres(engine, op)
    tx._check()
    tx.note_sent("copy", "COPY")  # a load writes; even a copy-out's query may
    conn = engine.backend.raw(tx._conn)
    method: Callable[..., Any] = getattr(conn, op)
    # The driver's timeout misses the statements it prepares on its own (see run_copy).
    deadline = deadline_after(kw.get("timeout"))  # (a bad timeout: ValueError, nothing sent)
    try:
        async with asyncio.timeout_at(deadline):
            result: str = await method(*args, **kw)
    except Exception as exc:
        # "COPY" for the statement-text rules: one statement that never ends a transaction.
        await tx._after_error(exc, op, "COPY")
        raise
    return result
