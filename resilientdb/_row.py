"""One row shape for every backend, the same as asyncpg's ``Record``.

``row[0]``, ``row["name"]``, ``dict(row)``, ``len(row)``, iteration over values, ``keys()``,
``values()``, ``items()``, ``get()``. The column-name index is built once per result set and
shared by its rows, so a row costs one tuple and one pointer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["Row", "make_rows"]


class Row:
    """A result row (the MySQL and SQLite adapters' equivalent of asyncpg's Record)."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: tuple[Any, ...]) -> None:
        self._index = index
        self._values = values

    def __getitem__(self, key: int | str | slice) -> Any:
        if isinstance(key, str):
            try:
                return self._values[self._index[key]]
            except KeyError:
                raise KeyError(key) from None
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        # Like asyncpg's Record: iteration gives values; dict(row) goes through keys().
        return iter(self._values)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values and list(self._index) == list(other._index)
        if isinstance(other, tuple):
            return self._values == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def __repr__(self) -> str:
        body = " ".join(f"{k}={v!r}" for k, v in zip(self._index, self._values, strict=False))
        return f"<Row {body}>"

    def keys(self) -> Iterator[str]:
        """Column names, in order."""
        return iter(self._index)

    def values(self) -> Iterator[Any]:
        """Column values, in order."""
        return iter(self._values)

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` pairs, in order."""
        return zip(self._index, self._values, strict=False)

    def get(self, key: str, default: Any = None) -> Any:
        """The value of column ``key``, or ``default``."""
        i = self._index.get(key)
        return default if i is None else self._values[i]


def make_rows(columns: Sequence[str], records: Sequence[Sequence[Any]]) -> list[Row]:
    """Rows sharing one name index. A repeated column name keeps its first position."""
    index: dict[str, int] = {}
    for i, name in enumerate(columns):
        index.setdefault(name, i)
    return [Row(index, tuple(r)) for r in records]
