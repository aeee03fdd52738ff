"""What the server's catalog said about function volatility, remembered for a short while.

Only a replay decision asks (never the hot path): after a lost reply, a SELECT that calls a
function that is not a known harmless built-in is replayed only if the catalog says no
overload of it is VOLATILE. Many callers often lose their connections at once with the same
statement, so answers are kept for ``TTL`` seconds and only for the connection generation
they were read in: a reconnect may reach another server (a failover), where they may differ.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

__all__ = ["Catalog"]

TTL = 60.0


class Catalog:
    """Cached answers: per function name, harmless or not; the VOLATILE operators."""

    __slots__ = ("_functions", "_generation", "_operators")

    def __init__(self) -> None:
        self._generation = -1
        self._functions: dict[str, tuple[bool, float]] = {}
        self._operators: tuple[frozenset[str], float] | None = None

    def _fresh(self, generation: int) -> None:
        if generation != self._generation:
            self._generation = generation
            self._functions.clear()
            self._operators = None

    def known(
        self, generation: int, names: Iterable[str]
    ) -> tuple[dict[str, bool], frozenset[str] | None] | None:
        """Cached answers for every one of ``names`` (and the operators, when known), or None
        when a name must be looked up."""
        self._fresh(generation)
        now = time.monotonic()
        found: dict[str, bool] = {}
        for name in names:
            entry = self._functions.get(name)
            if entry is None or now - entry[1] > TTL:
                return None
            found[name] = entry[0]
        ops = self._operators
        return found, None if ops is None or now - ops[1] > TTL else ops[0]

    def remember(
        self,
        generation: int,
        names: Iterable[str],
        harmless: frozenset[str],
        volatile_operators: frozenset[str],
    ) -> None:
        """Store what one lookup of ``names`` answered."""
        self._fresh(generation)
        now = time.monotonic()
        for name in names:
            self._functions[name] = (name in harmless, now)
        self._operators = (volatile_operators, now)


def operators_harmless(used: Iterable[str], volatile: frozenset[str] | None) -> bool:
    """Whether none of the operator runs ``used`` may contain a VOLATILE operator.

    ``volatile`` None (never looked up): built-in operators are assumed; the read-only guard
    of the replay still refuses a write the statement tries."""
    if not volatile:
        return True
    return not any(v in run for run in used for v in volatile)
