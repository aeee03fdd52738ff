"""Portable named parameters, and the one function that turns any query into driver SQL.

``Query("SELECT * FROM users WHERE id = :id", id=5)`` is written once for every backend and
converted, just before it runs, to the driver's own paramstyle: ``$1`` (asyncpg), ``%s``
(aiomysql), ``?`` (aiosqlite). Why an object and not ``fetch(sql, id=5)`` or a dict as the
argument: a plain string keeps going to the driver untouched, in its own paramstyle, and
nothing can be taken for the other. A dict is a legitimate positional value on every driver
(a JSON column, SQLite's own named parameters); keyword arguments are taken by ``timeout=``
and ``idempotent=``; a ``:name`` in a plain string may be SQLite's own parameter or a slice
of a PostgreSQL array. Only a ``Query`` is converted, and only its text.

The conversion reads the text in the backend's dialect, with the same rules as the replay
verdict (``_sql.py``): string literals (PostgreSQL's ``E'...'``, and plain literals under
``standard_conforming_strings`` on and off; MySQL's backslash escapes, ``ANSI_QUOTES`` and
``NO_BACKSLASH_ESCAPES``), comments (``--``, ``/* */`` nested on PostgreSQL, ``#`` on
MySQL), quoted identifiers (``"..."``, backticks, SQLite's ``[...]``) and PostgreSQL dollar
quotes are never touched; ``::`` is a cast. A ``:name`` right after a letter, digit or
``_`` (``arr[lo:hi]``) is not a parameter; ``\\:`` in code writes a plain colon. When
the server settings would make a literal end at different places (a backslash in a plain
literal), the readings must agree on every parameter, or the query is refused: a parameter
guessed wrong would bind a value into the wrong place.

A name used twice binds the same value. A name without a value, a value without a name, a
driver-native placeholder in the text (``$1``, SQLite's ``?``) and an unterminated literal
or comment raise ``ValueError`` before anything is sent. On MySQL every ``%`` is doubled
when the driver formats the text (PyMySQL reads ``%`` everywhere, even in a literal).

:func:`prepare` is called once at the top of every query method (``Database``,
``Transaction``): plain strings pass through on one type check; a ``Query`` is converted
here; a SQLAlchemy statement is compiled by ``_sqlalchemy`` (imported only when one is
passed). The replay rules then judge the SQL that really runs.
"""

from __future__ import annotations

import functools
import re
import sys
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from . import _sql
from ._sql import _DOLLAR_TAG, _LITE_WORD, _MY_WORD, _PG_WORD, _mysql_dash_comment

if TYPE_CHECKING:
    from sqlalchemy.sql.base import Executable

    QueryLike: TypeAlias = "str | Query | Executable"
    """What the query methods take (SQLAlchemy only matters to a type checker)."""

__all__ = ["Query", "QueryLike", "prepare"]

_NAME = re.compile(r"[^\W\d]\w*")
_PG_NATIVE = re.compile(r"\$[0-9]")
_LITE_NATIVE = re.compile(r"[$@][A-Za-z0-9_]")
_STYLES = {"postgresql": "$", "mysql": "%s", "sqlite": "?"}


class Query:
    """A query with named parameters, written once for every backend.

    ``Query("SELECT * FROM users WHERE team = :team AND age > :age", team="a", age=30)`` or
    ``Query(sql, {"team": "a", "age": 30})`` (for names that are not Python identifiers).
    Pass it where a query goes: ``await db.fetch(Query(...))``, ``tx.execute(Query(...))``;
    for ``executemany`` give the text alone and one mapping per row:
    ``db.executemany(Query("INSERT INTO t VALUES (:a, :b)"), [{"a": 1, "b": 2}, ...])``.
    """

    __slots__ = ("params", "sql")

    sql: str
    params: Mapping[str, Any]

    def __init__(self, sql: str, params: Mapping[str, Any] | None = None, /, **kw: Any) -> None:
        if not isinstance(sql, str):
            raise TypeError(f"Query(sql, ...): sql must be a str, not {type(sql).__name__}")
        if params is not None and not isinstance(params, Mapping):
            raise TypeError(
                f"Query(sql, params): params must be a mapping of names to values, not "
                f"{type(params).__name__} (or give the values as keyword arguments)"
            )
        values = dict(params or {})
        clash = values.keys() & kw.keys()
        if clash:
            raise TypeError(f"Query(): {_names(clash)} given both in the mapping and by keyword")
        values.update(kw)
        bad = [k for k in values if not isinstance(k, str) or not _NAME.fullmatch(k)]
        if bad:
            raise ValueError(f"Query(): {bad!r}: a parameter name is letters, digits and _")
        self.sql = sql
        self.params = MappingProxyType(values)

    def __repr__(self) -> str:
        # The values stay out: they may be secrets, and reprs end up in logs.
        return f"Query({self.sql!r}, names={sorted(self.params)!r})"


def prepare(
    query: Any, args: tuple[Any, ...], family: str, *, many: bool = False
) -> tuple[str, tuple[Any, ...]]:
    """``(sql, args)`` to hand the driver of ``family`` for ``query``.

    A ``str`` passes through untouched; a :class:`Query` is converted; a SQLAlchemy statement
    is compiled with the backend's dialect. ``many``: ``args`` is ``(rows,)`` as
    ``executemany`` takes it, and comes back the same shape.
    """
    if type(query) is str:
        return query, args
    return _prepare(query, args, family, many)


def _prepare(
    query: Any, args: tuple[Any, ...], family: str, many: bool
) -> tuple[str, tuple[Any, ...]]:
    if isinstance(query, Query):
        return _convert(query, args, family, many)
    if isinstance(query, str):  # a str subclass: the driver's SQL all the same
        return query, args
    if "sqlalchemy" in sys.modules and any(
        # A SQLAlchemy class, or the application's subclass of one (a custom construct).
        c.__module__.startswith("sqlalchemy.")
        for c in type(query).__mro__
    ):
        from . import _sqlalchemy  # only when a statement needs it

        return _sqlalchemy.compile_statement(query, args, family, many)
    raise TypeError(
        f"a query is a str (the driver's own SQL), a resilientdb.Query (named parameters) or "
        f"a SQLAlchemy statement, not {type(query).__name__}"
    )


class _Plan(NamedTuple):
    """A Query text converted for one family: the SQL, and the name behind each value."""

    sql: str  # `%` as written
    sql_formatted: str  # MySQL: `%` doubled, for a driver that formats the text
    names: tuple[str, ...]  # one per value passed, in order
    distinct: frozenset[str]


def _convert(
    query: Query, args: tuple[Any, ...], family: str, many: bool
) -> tuple[str, tuple[Any, ...]]:
    plan = _plan(query.sql, family)
    if many:
        if query.params:
            raise TypeError(
                "executemany(Query(sql), rows): give the values in the rows (one mapping "
                "each), not in the Query"
            )
        (rows,) = args
        if isinstance(rows, Mapping | str | bytes) or not isinstance(rows, Sequence):
            raise TypeError("executemany(Query(sql), rows): rows is a list of mappings")
        converted = [_values(plan, row, query.sql, k) for k, row in enumerate(rows)]
        return plan.sql_formatted, (converted,)
    if args:
        raise TypeError(
            "a Query carries its own values: Query(sql, name=value); extra positional "
            f"arguments ({len(args)}) would be ambiguous"
        )
    values = _values(plan, query.params, query.sql, None)
    return (plan.sql_formatted if values else plan.sql), values


def _values(plan: _Plan, given: Any, sql: str, row: int | None) -> tuple[Any, ...]:
    where = "" if row is None else f" (row {row})"
    if not isinstance(given, Mapping):
        raise TypeError(f"executemany(Query(sql), rows): row {row} is not a mapping")
    if given.keys() != plan.distinct:
        missing = plan.distinct - given.keys()
        unused = given.keys() - plan.distinct
        parts = []
        if missing:
            parts.append(f"no value for {_names(missing)}")
        if unused:
            parts.append(f"{_names(unused)} given but not used in the text")
        raise ValueError(f"Query {sql[:80]!r}{where}: {'; '.join(parts)}")
    return tuple(given[name] for name in plan.names)


def _names(names: Any) -> str:
    return ", ".join(f":{n}" for n in sorted(names))


@functools.lru_cache(maxsize=512)
def _plan(sql: str, family: str) -> _Plan:
    """Convert ``sql`` once per text and family (a service sends the same texts again)."""
    if family not in _STYLES:
        raise ValueError(f"named parameters (Query) are not supported for {family!r} backends")
    found: list[list[_Mark] | ValueError] = []
    for backslashes in _readings(sql, family):
        try:
            found.append(_scan(sql, family, backslashes))
        except ValueError as exc:  # unreadable in this reading only, or in all of them
            found.append(exc)
    marks = found[0]
    if isinstance(marks, ValueError) and all(isinstance(m, ValueError) for m in found):
        raise marks
    if isinstance(marks, ValueError) or any(other != marks for other in found[1:]):
        raise ValueError(
            f"Query {sql[:80]!r}: a backslash in a literal makes it end at different places "
            f"depending on the server's settings, so the parameters cannot be placed surely; "
            f"pass that text as a parameter instead"
        )
    style = _STYLES[family]
    numbers: dict[str, int] = {}
    names: list[str] = []
    plain: list[str] = []
    formatted: list[str] = []
    pos = 0
    for start, end, name in marks:
        text = sql[pos:start]
        plain.append(text)
        formatted.append(text.replace("%", "%%") if family == "mysql" else text)
        if name is None:  # `\:`
            plain.append(":")
            formatted.append(":")
        else:
            if family == "postgresql":
                number = numbers.setdefault(name, len(numbers) + 1)
                if number == len(names) + 1:
                    names.append(name)
                placeholder = f"${number}"
            else:
                names.append(name)
                placeholder = style
            plain.append(placeholder)
            formatted.append(placeholder)
        pos = end
    plain.append(sql[pos:])
    formatted.append(sql[pos:].replace("%", "%%") if family == "mysql" else sql[pos:])
    return _Plan("".join(plain), "".join(formatted), tuple(names), frozenset(names))


# Per family, whether backslashes escape in '...' and in "...", for each server setting that
# changes it: PostgreSQL's standard_conforming_strings on and off; MySQL by default, with
# ANSI_QUOTES ("..." is a name) and with NO_BACKSLASH_ESCAPES. The first is the default.
_BACKSLASHES = {
    "postgresql": ((False, False), (True, False)),
    "mysql": ((True, True), (True, False), (False, False)),
    "sqlite": ((False, False),),
}


def _readings(sql: str, family: str) -> tuple[tuple[bool, bool], ...]:
    """The readings to make: one when no backslash can change where a literal ends."""
    every = _BACKSLASHES[family]
    return every if "\\" in sql else every[:1]


_Mark = tuple[int, int, str | None]  # where, and the name (None: an escaped colon)
_PG_EOL = re.compile(r"[\n\r]")
_EOL = re.compile(r"\n")


def _scan(sql: str, family: str, backslashes: tuple[bool, bool]) -> list[_Mark]:
    """The parameters of ``sql`` in one reading; raises on what cannot be read surely."""
    pg, my, lite = family == "postgresql", family == "mysql", family == "sqlite"
    word = _PG_WORD if pg else _MY_WORD if my else _LITE_WORD
    marks: list[_Mark] = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "'" or c == '"' or (c == "`" and not pg):
            i = _skip_quoted(sql, i, c, backslashes[c == '"'] if c != "`" else False)
        elif c == "[" and lite:
            end = sql.find("]", i + 1)
            if end < 0:
                raise _unterminated(sql, i, "[identifier]")
            i = end + 1
        elif (
            c == "-" and sql.startswith("-", i + 1) and (not my or _mysql_dash_comment(sql, i))
        ) or (c == "#" and my):
            eol = (_PG_EOL if pg else _EOL).search(sql, i)
            i = n if eol is None else eol.end()
        elif c == "/" and sql.startswith("*", i + 1):
            if my and (sql.startswith("!", i + 2) or sql[i + 2 : i + 4].upper() == "M!"):
                i += 3  # MySQL runs what an executable comment holds: read it as SQL
            else:
                i = _skip_comment(sql, i, nested=pg, open_ok=lite)
        elif c == ":":
            if sql.startswith(":", i + 1):
                i += 2  # a PostgreSQL cast (or a SQLite `::` in a variable name)
                continue
            m = _NAME.match(sql, i + 1)
            if m is not None and not (i and (sql[i - 1].isalnum() or sql[i - 1] in "_$")):
                marks.append((i, m.end(), m.group()))
                i = m.end()
            else:
                i += 1
        elif c == "\\" and sql.startswith(":", i + 1):
            marks.append((i, i + 2, None))
            i += 2
        elif pg and c == "$":
            if m := _DOLLAR_TAG.match(sql, i):
                end = sql.find(m.group(), m.end())
                if end < 0:
                    raise _unterminated(sql, i, "dollar quote")
                i = end + len(m.group())
            elif _PG_NATIVE.match(sql, i):
                raise _native(sql, i)
            else:
                i += 1
        elif lite and (c == "?" or _LITE_NATIVE.match(sql, i)):
            raise _native(sql, i)
        elif m := word.match(sql, i):
            i = m.end()
            if pg and m.group() in ("E", "e") and sql.startswith("'", i):
                i = _skip_quoted(sql, i, "'", True)
        else:
            i += 1
    return marks


def _skip_quoted(sql: str, start: int, quote: str, backslash: bool) -> int:
    """The index after the quoted text opened at ``start`` (doubled quotes escape)."""
    end = _sql._skip_quoted(sql, start, quote, backslash)
    if end < 0:
        raise _unterminated(sql, start, "quote")
    return end


def _skip_comment(sql: str, start: int, *, nested: bool, open_ok: bool) -> int:
    """The index after the block comment opened at ``start``; SQLite lets one run to the end."""
    end = _sql._skip_block_comment(sql, start, nested=nested)
    if end < 0:
        if open_ok:
            return len(sql)
        raise _unterminated(sql, start, "comment")
    return end


def _unterminated(sql: str, at: int, what: str) -> ValueError:
    return ValueError(f"Query {sql[:80]!r}: unterminated {what} at offset {at}")


def _native(sql: str, at: int) -> ValueError:
    return ValueError(
        f"Query {sql[:80]!r}: {sql[at : at + 3]!r} at offset {at} is the driver's own "
        f"placeholder; in a Query write every parameter as :name"
    )
