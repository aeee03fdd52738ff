"""The Row shape of the MySQL and SQLite adapters: a tuple of a per-column-list subclass."""

from __future__ import annotations

import pickle

import pytest

from resilientdb import Row
from resilientdb._row import make_rows, row_type


def test_a_row_is_the_tuple_of_its_values_with_asyncpg_record_api() -> None:
    row = make_rows(["id", "name"], [(1, "a")])[0]
    assert isinstance(row, Row) and isinstance(row, tuple)
    assert row == (1, "a") and hash(row) == hash((1, "a"))
    assert (row != (1, "a")) is False  # __ne__ as well as __eq__
    assert row[0] == row["id"] == 1 and row[-1] == "a" and row[0:1] == (1,)
    assert "name" in row and "a" not in row  # names, as asyncpg's Record
    assert dict(row) == {"id": 1, "name": "a"} and list(row) == [1, "a"]
    assert list(row.items()) == [("id", 1), ("name", "a")] and list(row.values()) == [1, "a"]
    assert row.get("missing", 7) == 7 and repr(row) == "<Row id=1 name='a'>"
    with pytest.raises(KeyError, match="missing"):
        row["missing"]


def test_rows_compare_names_too_and_a_repeated_name_keeps_its_first_position() -> None:
    a = make_rows(["x", "y"], [(1, 2)])[0]
    b = make_rows(["x", "z"], [(1, 2)])[0]
    assert a != b and a == make_rows(["x", "y"], [(1, 2)])[0]
    dup = make_rows(["n", "n"], [(1, 2)])[0]
    assert dup["n"] == 1 and len(dup) == 2


def test_one_class_per_column_list_and_rows_survive_pickling() -> None:
    assert row_type(["a", "b"]) is row_type(("a", "b"))
    assert row_type(["a", "b"]) is not row_type(["b", "a"])
    row = make_rows(["a", "b"], [(1, None)])[0]
    back = pickle.loads(pickle.dumps(row))
    assert back == row and back["b"] is None and isinstance(back, Row)


def test_the_class_cache_is_bounded() -> None:
    for i in range(1_200):
        row_type([f"c{i}"])
    from resilientdb import _row

    assert len(_row._types) <= _row._CACHE_LIMIT
