"""The Python-side column defaults of a SQLAlchemy ``insert()`` / ``update()``.

SQLAlchemy's compiler leaves a bind parameter for each column whose ``default=`` (on INSERT) or
``onupdate=`` (on UPDATE) is computed in Python, and its execution context fills them in just
before each execution. Statements here are compiled and handed to the driver without that
context, so that parameter would otherwise go out as NULL: an INSERT would lose the default,
every UPDATE would overwrite the ``onupdate`` column with NULL. :func:`with_defaults` does what
the execution context does, per call (per row for ``executemany``): a scalar is taken as is, a
callable is called (with a small context that answers ``get_current_parameters()``, for
context-sensitive defaults). A default SQLAlchemy would fetch with a query of its own (a SQL
expression or a sequence it pre-executes) cannot be computed here: refused before anything is
sent, never NULL in its place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["with_defaults"]


class _Context:
    """What a context-sensitive default (``default=lambda ctx: ...``) may ask of SQLAlchemy's
    execution context: the statement's parameters, and the column being computed."""

    __slots__ = ("compiled", "current_column", "current_parameters")

    def __init__(self, compiled: Any, parameters: dict[str, Any]) -> None:
        self.compiled = compiled
        self.current_parameters = parameters
        self.current_column: Any = None

    def get_current_parameters(self, isolate_multiinsert_groups: bool = True) -> dict[str, Any]:
        """The parameters of the statement; of the row being computed, for a multi-row
        ``insert().values([...])`` (as SQLAlchemy's own context answers)."""
        parameters, column = self.current_parameters, self.current_column
        state = self.compiled.compile_state
        if not (
            isolate_multiinsert_groups
            and getattr(state, "isinsert", False)
            and getattr(state, "_has_multi_parameters", False)
        ):
            return parameters
        if column._is_multiparam_column:
            index = column.index + 1
            row = {column.original.key: parameters[column.key]}
        else:
            index = 0
            row = {column.key: parameters[column.key]}
        row.update((k, parameters[f"{k}_m{index}"]) for k in state._dict_parameters)
        return row


def with_defaults(compiled: Any, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` completed with the values of the Python-side defaults ``compiled`` needs."""
    full: dict[str, Any] = compiled.construct_params(dict(params) if params else None)
    key_of = compiled._within_exec_param_key_getter
    if compiled.insert_prefetch:
        columns, which = compiled.insert_prefetch, "default"
    else:
        columns, which = compiled.update_prefetch, "onupdate"
    context = _Context(compiled, full)
    for column in columns:
        key = key_of(column)
        default = getattr(column, which)
        if default is None:
            continue
        if getattr(default, "is_sentinel", False):
            full[key] = 0  # SQLAlchemy numbers the rows of one execution: here, one row
        elif getattr(default, "is_scalar", False):
            full[key] = default.arg
        elif getattr(default, "is_callable", False):
            context.current_column = column
            full[key] = default.arg(context)
        else:
            raise TypeError(
                f"column {column.name!r}: its {which}= ({type(default).__name__}) is computed "
                f"by SQLAlchemy with a query of its own before the statement, which resilientdb "
                f"does not run; give the value explicitly (nothing was sent)"
            )
    return full
