"""What a statement may do, as far as the text tells: the facts the replay rules decide by.

When a connection dies after a request may have reached the server, replaying it is safe only
if running it twice does no harm; when a deadlock or lock wait timeout interrupts it, only a
single statement was rolled back whole; inside a transaction, some statements commit or end
it. :func:`verdict` reads the text in its backend's dialect (``_sql.py``) and answers all
three. Getting it wrong in one direction applies a write twice; in the other it costs one
``OutcomeUnknown``. Every doubt therefore answers "may write".

Read-only, by the statement's leading keyword (after whitespace, comments and opening
parentheses): ``SELECT``, ``SHOW``, ``VALUES``, ``TABLE``; ``WITH ...`` with no
data-modifying part (INSERT, UPDATE, DELETE, MERGE or REPLACE anywhere outside
``FOR [NO KEY] UPDATE`` and ``replace(...)`` answers "may write"); ``EXPLAIN`` / ``DESCRIBE``
/ ``DESC`` without ANALYZE (which runs the statement; a PostgreSQL option list may turn it
off explicitly). ``INTO`` anywhere answers "may write" (``SELECT ... INTO`` creates a table or
writes a file or variable). Locking clauses are fine: a replay runs in autocommit and the
lock goes with it. Several statements are read-only only if each is; no statement at all is
not. Everything else (INSERT, CALL, DO, COPY, SET, PRAGMA, BEGIN, CREATE, LOCK, ...) is not.

A read-only statement must also call only functions known not to write (``_builtins.py``):
an allow-listed built-in; on PostgreSQL, otherwise, a function none of whose overloads is
VOLATILE, which the caller looks up in ``pg_proc`` (the verdict lists the names); on
MySQL/MariaDB and SQLite nothing else. A call by a quoted name, MariaDB's ``NEXT VALUE FOR``
and the functions of ``_builtins.NEVER`` are writes. PostgreSQL operators are listed too:
one implemented by a VOLATILE function makes the statement a write.

The text reaches the driver untouched, so it is read the way the backend's server might read
it under each setting that changes the reading (``_sql.py``). The statement is read-only when
no reading may run a write and at least one runs a read. A NUL character answers "may write".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ._builtins import HARMLESS, NEVER, NOT_CALLS
from ._sql import CLOSE, COMMA, LITERAL, OPEN, OPERATOR, PUNCT, WORD, Statement, Token, readings
from ._statements import effective, ends_transaction, in_parts

__all__ = [
    "Verdict",
    "begins_with_commit",
    "is_commit",
    "is_read_only",
    "may_replay",
    "opens_first",
    "reads_after_opening",
    "verdict",
]

_READ_ONLY_STARTS = frozenset({"SELECT", "SHOW", "VALUES", "TABLE", "WITH"})
_EXPLAIN_STARTS = frozenset({"EXPLAIN", "DESCRIBE", "DESC"})
_DATA_MODIFYING = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE"})
_ANALYZE = frozenset({"ANALYZE", "ANALYSE"})
_FALSE = frozenset({"FALSE", "OFF", "0"})  # PostgreSQL's defGetBoolean
# Statements that run other statements, each of which may commit on its own (a procedure in
# autocommit mode, a DO block with COMMIT): never "one statement" for a lost race.
_COMPOUND = frozenset({"CALL", "DO", "EXECUTE", "BEGIN"})


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a statement text may do, read in one dialect."""

    read_only: bool
    """No reading may write, provided every name in ``lookup`` (and every operator in
    ``operators``) is found harmless in the server's catalog."""
    lookup: frozenset[str] = frozenset()
    """PostgreSQL functions called whose volatility decides (lower-case names)."""
    operators: frozenset[str] = frozenset()
    """PostgreSQL operators used (a user may implement one with a VOLATILE function)."""
    single: bool = False
    """Exactly one statement in every reading, and not one that runs others (CALL, DO): a
    deadlock or lock wait timeout rolled all of it back."""
    atomic: bool = False
    """When it fails, nothing of it stays applied: a single statement, or (PostgreSQL, which
    runs a text in one implicit transaction) several with no COMMIT, ROLLBACK, CALL or DO."""
    ends_transaction: bool = True
    """Inside a transaction, may commit or end it: COMMIT/ROLLBACK/END in any dialect, and on
    MySQL/MariaDB any statement that commits implicitly (DDL, LOCK TABLES, ...)."""
    locks: bool = False
    """Has a locking clause (FOR UPDATE/SHARE, LOCK IN SHARE MODE)."""
    runs: bool = True
    """Some reading runs a statement at all (False: empty, only comments, or rejected)."""


_MAY_WRITE = Verdict(read_only=False)


@functools.lru_cache(maxsize=256)
def verdict(sql: str, family: str) -> Verdict:
    """The verdict on ``sql`` read as ``family`` (``"postgresql"``, ``"mysql"``, ``"sqlite"``).

    Never raises: anything unreadable answers "may write", "several statements" and "may end
    a transaction".
    """
    if not isinstance(sql, str) or "\x00" in sql:
        return _MAY_WRITE
    read_only, runs, single, ends, locks = True, False, True, False, False
    compound = False
    lookup: set[str] = set()
    operators: set[str] = set()
    for reading in readings(sql, family):
        if reading.unsafe:
            return _MAY_WRITE
        single = single and len(reading.statements) == 1
        for whole in reading.statements:
            runs = True
            st = effective(whole, family)
            if st is None:
                return _MAY_WRITE
            lead = st.leading
            compound = compound or lead is None or lead in _COMPOUND or in_parts(st, family)
            ends = ends or ends_transaction(st, family)
            locks = locks or _locks(st)
            if not read_only:
                continue  # still reading on for `single` and `ends`
            calls = _calls(st, family)
            if calls is None or not _statement_is_read_only(st, family):
                read_only = False
                continue
            lookup |= calls
            operators.update(text for kind, text in st.tokens if kind == OPERATOR)
    read_only = read_only and runs
    single = single and not compound
    return Verdict(
        read_only=read_only,
        lookup=frozenset(lookup) if read_only else frozenset(),
        operators=frozenset(operators) if read_only else frozenset(),
        single=single,
        atomic=single or (family == "postgresql" and runs and not (compound or ends)),
        ends_transaction=ends,
        locks=locks,
        runs=runs,
    )


def is_read_only(sql: str, family: str | None = None) -> bool:
    """True when ``sql`` is read-only without any catalog lookup.

    ``family`` None reads it in every dialect (read-only in all three). Never raises.
    """
    if family is not None:
        v = verdict(sql, family)
        return v.read_only and not v.lookup
    # In every dialect: none may write (a dialect that runs nothing at all is fine, its server
    # rejects the text) and at least one runs a read.
    reads = False
    for fam in ("postgresql", "mysql", "sqlite"):
        v = verdict(sql, fam)
        if v.runs and (not v.read_only or v.lookup):
            return False
        reads = reads or v.read_only
    return reads


def may_replay(*, unsent: bool, sql: str | None, idempotent: bool | None) -> bool:
    """The replay decision for an operation whose connection was lost, from the text alone.

    unsent: the failure provably happened before the request reached the wire -> always True.
    idempotent True -> True; idempotent False -> False (even for a SELECT) unless unsent;
    idempotent None -> is_read_only(sql) in every dialect (sql None -> False).
    """
    if unsent:
        return True
    if idempotent is not None:
        return bool(idempotent)
    return sql is not None and is_read_only(sql)


def opens_first(sql: str, family: str) -> bool:
    """``sql`` starts by opening a transaction (BEGIN, START TRANSACTION, MySQL's SET
    autocommit) and no later statement may commit: run outside a transaction and left open,
    nothing of it was committed."""
    for reading in readings(sql, family):
        if reading.unsafe or not reading.statements:
            return False
        first = effective(reading.statements[0], family)
        rest = [effective(st, family) for st in reading.statements[1:]]
        if first is None or first.leading not in ("BEGIN", "START", "SET"):
            return False
        if first.leading == "SET" and not ends_transaction(first, family):
            return False
        for st in rest:
            if st is None or ends_transaction(st, family):
                return False
            if family != "mysql" and st.leading in ("BEGIN", "START"):
                return False
    return True


def reads_after_opening(sql: str, family: str) -> bool:
    """Every statement after the first is a plain read (no function whose volatility would
    need the catalog): a text that opened a transaction and only read in it lost nothing when
    that transaction is rolled back."""
    for reading in readings(sql, family):
        if reading.unsafe:
            return False
        for whole in reading.statements[1:]:
            st = effective(whole, family)
            if st is None or not _statement_is_read_only(st, family) or _calls(st, family) != set():
                return False
    return True


def is_commit(sql: str, family: str) -> bool:
    """``sql`` is one COMMIT (or PostgreSQL's END): the statement whose answer says whether
    the transaction committed."""
    return verdict(sql, family).single and begins_with_commit(sql, family)


def begins_with_commit(sql: str, family: str) -> bool:
    """``sql`` starts with COMMIT (or PostgreSQL's END) in some reading: in a PostgreSQL
    transaction that has failed, that COMMIT is answered ROLLBACK whatever follows it."""
    return any(
        bool(r.statements) and r.statements[0].leading in ("COMMIT", "END")
        for r in readings(sql, family)
    )


def _locks(st: Statement) -> bool:
    toks = st.tokens
    for k, tok in enumerate(toks[:-1]):
        if tok == (WORD, "FOR") and toks[k + 1] in ((WORD, "UPDATE"), (WORD, "SHARE")):
            return True
        if tok == (WORD, "FOR") and toks[k + 1 : k + 3] == [(WORD, "NO"), (WORD, "KEY")]:
            return True
        if tok == (WORD, "LOCK") and toks[k + 1] == (WORD, "IN"):
            return True
    return False


def _calls(st: Statement, family: str) -> set[str] | None:
    """Names to look up in the catalog (PostgreSQL), or None when a call is a write."""
    toks = st.tokens
    closes = _matching_parens(toks)
    lookup: set[str] = set()
    harmless = HARMLESS[family]
    for k in range(st.start + 1, len(toks) - 1):  # the leading keyword is no call: EXPLAIN (
        kind, text = toks[k]
        if toks[k + 1] != OPEN:
            if family == "mysql" and (kind, text, toks[k + 1]) == (WORD, "NEXT", (WORD, "VALUE")):
                return None  # MariaDB: NEXT VALUE FOR seq
            continue
        if kind == LITERAL:
            return None  # a call by a quoted name: nothing vouches for it
        if kind != WORD or text in NOT_CALLS:
            continue
        prev = toks[k - 1]
        if prev == (WORD, "AS") or (prev == (PUNCT, ":") and toks[k - 2] == prev):
            continue  # a type with a modifier (CAST, ::) or an alias's column list
        if _names_cte(toks, closes.get(k + 1)):
            continue
        name = text.lower() if text.isascii() else text
        qualifier = None
        if prev == (PUNCT, "."):
            before = toks[k - 2]
            qualifier = before[1].lower() if before[0] == WORD else "?"
        if name in NEVER:
            return None
        if name in harmless and (qualifier is None or qualifier == "pg_catalog"):
            continue
        if family != "postgresql":
            return None  # MySQL and SQLite user functions may do anything
        lookup.add(name)
    return lookup


def _matching_parens(toks: list[Token]) -> dict[int, int]:
    """Index of each "(" -> index of its ")" (unclosed ones are absent); one pass."""
    stack: list[int] = []
    closes: dict[int, int] = {}
    for i, tok in enumerate(toks):
        if tok == OPEN:
            stack.append(i)
        elif tok == CLOSE and stack:
            closes[stack.pop()] = i
    return closes


def _names_cte(toks: list[Token], close: int | None) -> bool:
    """``name (cols) AS [NOT] [MATERIALIZED] (``: a WITH clause names a query, no call."""
    if close is None:
        return False
    after = toks[close + 1 : close + 5]
    if not after or after[0] != (WORD, "AS"):
        return False
    rest = [t for t in after[1:] if t not in ((WORD, "NOT"), (WORD, "MATERIALIZED"))]
    return bool(rest) and rest[0] == OPEN


def _statement_is_read_only(st: Statement, family: str) -> bool:
    """Judge one statement by its leading keyword and the words in it."""
    tokens, start = st.tokens, st.start
    first = st.leading
    if first in _EXPLAIN_STARTS:
        if not _explain_runs_nothing(tokens, start + 1):
            return False
    elif first not in _READ_ONLY_STARTS:
        return False
    # Only PostgreSQL nests a data-modifying statement in a query (a CTE, itself only allowed
    # at the top of a WITH). Elsewhere such words can only matter after WITH; skipping them
    # keeps MySQL's string function INSERT(...) read-only.
    scan_dml = family == "postgresql" or first == "WITH"
    for k, (kind, text) in enumerate(tokens):
        if kind != WORD:
            continue
        if text == "INTO":
            return False
        if scan_dml and text in _DATA_MODIFYING and not _is_lock_or_function(tokens, k):
            return False
    return True


def _is_lock_or_function(tokens: list[Token], k: int) -> bool:
    """True for the UPDATE of ``FOR [NO KEY] UPDATE`` and the REPLACE of ``replace(...)``."""
    if tokens[k][1] == "REPLACE":
        return tokens[k + 1 : k + 2] == [OPEN]
    if tokens[k][1] == "UPDATE":
        before = [text if kind == WORD else "" for kind, text in tokens[max(0, k - 3) : k]]
        return before[-1:] == ["FOR"] or before == ["FOR", "NO", "KEY"]
    return False


def _explain_runs_nothing(tokens: list[Token], j: int) -> bool:
    """False when EXPLAIN's options (`tokens` from `j`) ask it to run the statement."""
    if tokens[j : j + 1] == [OPEN]:  # PostgreSQL's (option [value], ...)
        options: list[list[Token]] = [[]]
        depth = 1
        j += 1
        while depth:
            if j == len(tokens):
                return False
            token = tokens[j]
            j += 1
            if token == OPEN:
                depth += 1
            elif token == CLOSE:
                depth -= 1
            if depth == 1 and token == COMMA:
                options.append([])
            elif depth:
                options[-1].append(token)
        for option in options:
            if not option or option[0][0] != WORD:
                return False  # ("analyze") is an option too
            if option[0][1] in _ANALYZE:
                if len(option) != 2 or option[1][0] != WORD or option[1][1] not in _FALSE:
                    return False
            elif _mentions_analyze(option):
                return False
    return not _mentions_analyze(tokens[j:])


def _mentions_analyze(tokens: list[Token]) -> bool:
    return any(kind == WORD and text in _ANALYZE for kind, text in tokens)
