"""``exactly_once=True``: one non-idempotent statement, run so that a lost reply resolves.

Outside a transaction, a write whose reply is lost is ``OutcomeUnknown``: the statement
committed on its own, and nothing records whether it did. With ``exactly_once=True`` the
statement runs inside a transaction of its own through ``run_in_transaction`` with
``resolve=True``: the transaction learns its id before COMMIT, and a lost COMMIT is answered
by the server (``_outcomes.py``): committed, the call returns the statement's result; rolled
back, the statement runs again; anything else, ``OutcomeUnknown``. A connection lost before
COMMIT rolled the statement back: it runs again. The cost is the transaction's BEGIN, the id
and COMMIT: three round trips more than the statement alone.

Inside this task's open transaction the statement simply joins it: that transaction's COMMIT
decides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _outcomes, _tx_block

if TYPE_CHECKING:
    from ._engine import Engine

__all__ = ["run_once"]


async def run_once(
    engine: Engine,
    op: str,
    query: str,
    args: tuple[Any, ...],
    timeout: float | None,
    idempotent: bool | None,
    column: int = 0,
) -> Any:
    """Run ``op`` once, in a transaction of its own whose lost COMMIT is resolved."""
    if idempotent is not None:
        raise ValueError(
            "exactly_once=True and idempotent= contradict each other: exactly_once runs the "
            "statement so that it is applied once; drop one of them"
        )
    if not _outcomes.supports(engine):
        raise ValueError(
            f"backend {engine.name!r}: exactly_once=True needs a backend that can tell what "
            f"became of a lost COMMIT (PostgreSQL, or outcome_markers=True on MySQL/MariaDB "
            f"and SQLite)"
        )

    async def statement(tx: Any) -> Any:
        if column:
            return await tx.fetchval(query, *args, column=column)
        return await getattr(tx, op)(query, *args)

    joined = engine.joined()
    if joined is not None:
        return await statement(joined)
    return await _tx_block.run_in_transaction(
        engine,
        statement,
        (),
        retries=engine.options.max_replays,
        idempotent=False,
        timeout=timeout,
        isolation=None,
        readonly=False,
        resolve=True,
    )
