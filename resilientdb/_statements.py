"""What one statement does to a transaction, as the server sees it: which statement really
runs (MariaDB's ``SET STATEMENT ... FOR``), which end or commit the transaction (COMMIT,
ROLLBACK, and MySQL/MariaDB's implicit commits), which are applied in parts.

Used by the replay verdict (``_replay.py``); statements come from ``_sql.readings``.
"""

from __future__ import annotations

from ._sql import CLOSE, COMMA, OPEN, WORD, Statement

__all__ = ["effective", "ends_transaction", "in_parts"]

# MySQL/MariaDB statements that never commit implicitly (everything else may: DDL, LOCK
# TABLES, START TRANSACTION, SET autocommit, CALL of a procedure that commits...).
_MYSQL_KEEPS_TRANSACTION = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE", "WITH", "VALUES", "TABLE", "SHOW",
     "DESCRIBE", "DESC", "EXPLAIN", "SAVEPOINT", "RELEASE", "DO", "HANDLER", "SET"}
)  # fmt: skip


def effective(st: Statement, family: str) -> Statement | None:
    """The statement that really runs: MariaDB's ``SET STATEMENT var = value [, ...] FOR
    stmt`` runs ``stmt`` (a CALL, DDL that commits implicitly...); None when no ``FOR`` ends
    the settings (unreadable: assume the worst)."""
    if family != "mysql" or st.leading != "SET" or st.word_after(1) != "STATEMENT":
        return st
    depth = 0
    for k in range(st.start + 2, len(st.tokens)):
        tok = st.tokens[k]
        if tok == OPEN:
            depth += 1
        elif tok == CLOSE:
            depth -= 1
        elif depth == 0 and tok == (WORD, "FOR") and k + 1 < len(st.tokens):
            return Statement(st.tokens, k + 1)
    return None


def in_parts(st: Statement, family: str) -> bool:
    """One statement that the server applies in parts, so that a failure can leave some of
    it done: MySQL/MariaDB's DROP or RENAME of several tables (each is its own DDL), and
    PostgreSQL's CONCURRENTLY (which commits its own steps; a failure leaves an invalid
    index behind)."""
    toks = st.tokens
    if family == "postgresql":
        return (WORD, "CONCURRENTLY") in toks
    if family == "mysql" and st.leading in ("DROP", "RENAME"):
        depth = 0
        for tok in toks[st.start :]:
            depth += tok == OPEN
            depth -= tok == CLOSE
            if depth == 0 and tok == COMMA:
                return True
    return False


def ends_transaction(st: Statement, family: str) -> bool:
    lead = st.leading
    if lead is None:
        return True
    if family == "mysql":
        if lead == "SET":
            # SET autocommit commits when it turns it on; SET PASSWORD and SET DEFAULT ROLE
            # (account management) commit implicitly.
            second = st.word_after(1)
            if second == "PASSWORD" or (second, st.word_after(2)) == ("DEFAULT", "ROLE"):
                return True
            return any(t == (WORD, "AUTOCOMMIT") for t in st.tokens)
        if lead == "ROLLBACK":
            return not _rolls_back_to_savepoint(st)
        return lead not in _MYSQL_KEEPS_TRANSACTION
    if lead in ("COMMIT", "END", "ABORT"):
        return True
    if lead == "ROLLBACK":
        return not _rolls_back_to_savepoint(st)
    return lead == "PREPARE" and st.word_after(1) == "TRANSACTION"


def _rolls_back_to_savepoint(st: Statement) -> bool:
    """``ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`` keeps the transaction open."""
    second = st.word_after(1)
    if second in ("WORK", "TRANSACTION"):
        second = st.word_after(2)
    return second == "TO"
