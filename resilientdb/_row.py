"""One row shape for every backend, the same as asyncpg's ``Record``.

``row[0]``, ``row["name"]``, ``dict(row)``, ``len(row)``, iteration over values, ``keys()``,
``values()``, ``items()``, ``get()``.

A row is a tuple of its values, of a subclass of :class:`Row` made once per set of column
names (and cached) that carries the name index as a class attribute: building a row is then
the C tuple constructor, with no Python call per row, which is what a 10,000-row fetch pays.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

__all__ = ["Row", "make_rows", "row_type"]

_CACHE_LIMIT = 512  # distinct column lists kept; past it the cache starts again


class Row(tuple[Any, ...]):
    """A result row (the MySQL and SQLite adapters' equivalent of asyncpg's Record)."""

    __slots__ = ()
    _index: ClassVar[dict[str, int]] = {}
    _names: ClassVar[tuple[str, ...]] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            try:
                key = self._index[key]
            except KeyError:
                raise KeyError(key) from None
        return tuple.__getitem__(self, key)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return tuple.__eq__(self, other) and self._names == other._names
        if isinstance(other, tuple):
            return tuple.__eq__(self, other)
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        body = " ".join(f"{k}={v!r}" for k, v in zip(self._index, self, strict=False))
        return f"<Row {body}>"

    def __reduce__(self) -> tuple[Any, ...]:
        # The class is made at run time: pickle the names and values, not the class.
        return (_rebuild, (self._names, tuple(self)))

    def keys(self) -> Iterator[str]:
        """Column names, in order."""
        return iter(self._index)

    def values(self) -> Iterator[Any]:
        """Column values, in order."""
        return tuple.__iter__(self)

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` pairs, in order."""
        return zip(self._index, self, strict=False)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of column ``key``, or ``default``."""
        i = self._index.get(key)
        return default if i is None else tuple.__getitem__(self, i)


_types: dict[tuple[str, ...], type[Row]] = {}


def row_type(columns: Sequence[str]) -> type[Row]:
    """The Row class of a result with these column names (``cls(values)`` makes a row).

    A repeated column name keeps its first position, as in asyncpg."""
    names = tuple(columns)
    cls = _types.get(names)
    if cls is None:
        index: dict[str, int] = {}
        for i, name in enumerate(names):
            index.setdefault(name, i)
        cls = type("Row", (Row,), {"__slots__": (), "_index": index, "_names": names})
        cls.__module__ = Row.__module__
        cls.__qualname__ = "Row"
        if len(_types) >= _CACHE_LIMIT:
            _types.clear()  # an application with endless distinct column lists
        _types[names] = cls
    return cls


def make_rows(columns: Sequence[str], records: Sequence[Sequence[Any]]) -> list[Row]:
    """Rows sharing one name index, built by the C tuple constructor."""
    return list(map(row_type(columns), records))


def _rebuild(names: tuple[str, ...], values: tuple[Any, ...]) -> Row:
    return row_type(names)(values)
