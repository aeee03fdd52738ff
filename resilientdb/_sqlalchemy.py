"""SQLAlchemy Core statements: compiled with the backend's dialect, run like any SQL.

Imported by ``_params.prepare`` only when a SQLAlchemy object is passed as a query, so the
core never imports SQLAlchemy (it is the optional ``sqlalchemy`` extra). The dialect is the
one SQLAlchemy itself uses over the same driver: ``postgresql+asyncpg`` (``$1``, with casts),
``mysql+aiomysql`` (``%s``), ``sqlite+aiosqlite`` (``?``). ``IN`` lists (expanding
parameters) are rendered for the values of the call, and the types' bind processors (JSON,
Enum, DateTime on SQLite...) applied, as SQLAlchemy's own execution does. Rows come back
from the driver as resilientdb's ``Row``: no result processing (a SQLite DateTime column
reads as the string it is stored as). The table's Python-side column defaults
(``default=``, ``onupdate=``) are computed for each call as SQLAlchemy's execution computes
them (``_sqlalchemy_defaults``): the compiler leaves them to the execution.

The compiled text is what the replay rules judge: an ``insert()`` / ``update()`` /
``delete()`` compiles to a statement that begins with its verb (with or without
``RETURNING``), which is never read-only.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine.interfaces import Dialect
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from . import _sqlalchemy_defaults as _defaults

__all__ = ["compile_statement"]


@functools.cache
def _dialect(family: str) -> Dialect:
    # The dialects import no driver until a connection is made; they are only compiled with.
    # The paramstyle is each driver's own, named rather than left to the dialect's default.
    if family == "postgresql":
        from sqlalchemy.dialects.postgresql.asyncpg import dialect as pg

        return pg(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]
    if family == "mysql":
        from sqlalchemy.dialects.mysql.aiomysql import dialect as my

        return my(paramstyle="format")
    if family == "sqlite":
        from sqlalchemy.dialects.sqlite.aiosqlite import dialect as lite

        return lite(paramstyle="qmark")
    raise ValueError(f"SQLAlchemy statements are not supported for {family!r} backends")


def compile_statement(
    statement: Any, args: tuple[Any, ...], family: str, many: bool
) -> tuple[str, tuple[Any, ...]]:
    """``(sql, args)`` for the driver of ``family``; see :func:`_params.prepare`.

    Values: those bound in the statement, or one mapping (``execute(insert(t), {...})``);
    for ``executemany``, one mapping per row.
    """
    if not isinstance(statement, Executable) or not isinstance(statement, ClauseElement):
        raise TypeError(
            f"{type(statement).__name__} is not a SQLAlchemy statement that can be executed "
            f"(select(), insert(), update(), delete(), text(), ...)"
        )
    if many:
        (rows,) = args
        if isinstance(rows, Mapping | str | bytes) or not isinstance(rows, Sequence):
            raise TypeError("executemany(statement, rows): rows is a list of mappings")
        for k, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise TypeError(f"executemany(statement, rows): row {k} is not a mapping")
        keys = list(rows[0]) if rows else None
        compiled = _compile(statement, family, keys)
        if not rows:
            return _text(compiled, family, many=True), ([],)
        sql = ""
        values = []
        for k, row in enumerate(rows):
            if k and row.keys() != rows[0].keys():
                # The statement was compiled for the first row's columns: another would be
                # silently dropped, or a missing one sent as a default.
                raise ValueError(
                    f"executemany(statement, rows): row {k} has other keys than row 0 "
                    f"({sorted(row)} != {sorted(rows[0])})"
                )
            text, row_values = _expand(compiled, family, row, many=True)
            if sql and text != sql:
                raise ValueError(
                    "executemany(statement, rows): the rows compile to different SQL (an IN "
                    "list of another length, other columns); run them one by one"
                )
            sql = text
            values.append(row_values)
        return sql, (values,)
    if len(args) > 1 or (args and not isinstance(args[0], Mapping)):
        raise TypeError(
            "a SQLAlchemy statement takes its values bound in it, or one mapping: "
            "db.execute(insert(t), {'name': 'x'})"
        )
    params = dict(args[0]) if args else None
    compiled = _compile(statement, family, list(params) if params else None)
    return _expand(compiled, family, params, many=False)


def _compile(statement: Any, family: str, keys: list[str] | None) -> Any:
    """A SQLCompiler, or for DDL (``CreateTable``...) a compiler whose text is all there is."""
    if keys is None:
        return statement.compile(dialect=_dialect(family))  # DDL takes no column_keys
    return statement.compile(dialect=_dialect(family), column_keys=keys)


def _expand(
    compiled: Any, family: str, params: Mapping[str, Any] | None, *, many: bool
) -> tuple[str, tuple[Any, ...]]:
    if not isinstance(compiled, SQLCompiler):
        return _text(compiled, family, many=many), ()
    if compiled.insert_prefetch or compiled.update_prefetch:
        params = _defaults.with_defaults(compiled, params)
    state = compiled.construct_expanded_state(dict(params) if params is not None else None)
    processors: dict[str, Any] = {**compiled._bind_processors, **state.processors}
    values = tuple(
        processors[name](value) if name in processors else value
        for name, value in zip(state.positiontup or (), state.positional_parameters, strict=True)
    )
    sql = state.statement
    if family == "mysql" and not values and not many:
        # The format paramstyle doubles every `%`; the driver formats (and undoubles) the text
        # only when there are values to put in.
        sql = sql.replace("%%", "%")
    return sql, values


def _text(compiled: Any, family: str, *, many: bool) -> str:
    sql: str = compiled.string
    if family == "mysql" and not many:
        sql = sql.replace("%%", "%")  # doubled for the format paramstyle, DDL included
    return sql
