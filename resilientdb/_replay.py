"""Statement classification and the replay decision (DESIGN.md section 4).

When a connection dies after a request may have reached the server, replaying it is safe only
if running it twice does no harm. ``may_replay`` makes that decision; ``is_read_only`` supplies
the default for callers who did not say ``idempotent=``. Getting it wrong in one direction
applies a write twice; in the other it costs one ``OutcomeUnknown``. Every doubt therefore
answers "not read-only".

What counts as read-only, by the statement's leading keyword (case-insensitive, after any
whitespace, comments and opening parentheses):

* ``SELECT``, ``SHOW``, ``VALUES``, ``TABLE``;
* ``WITH ...`` with no data-modifying part: PostgreSQL lets a CTE body be INSERT, UPDATE,
  DELETE or MERGE, and every dialect lets WITH lead an INSERT/UPDATE/DELETE/MERGE/REPLACE
  INTO. Each of these spells one of those words outside ``FOR [NO KEY] UPDATE`` and
  ``replace(...)``, so finding one anywhere in the statement answers False;
* ``EXPLAIN`` / ``DESCRIBE`` / ``DESC`` without ANALYZE (which runs the statement). A
  PostgreSQL option list may turn it off explicitly (``ANALYZE false``, ``off`` or ``0``);
  any other mention of ANALYZE/ANALYSE answers False.

``SELECT ... INTO`` creates a table (PostgreSQL) or writes a file or a variable (MySQL), so
``INTO`` anywhere answers False. Locking clauses (``FOR UPDATE``/``FOR SHARE``) are fine:
a replay runs in autocommit and the lock goes with it. Several statements separated by ``;``
are read-only only if each is; no statement at all (empty text, only comments) is not.
Everything else (INSERT, CALL, DO, COPY, SET, PRAGMA, BEGIN, CREATE, LOCK, ...) is not.

Words count only as SQL code: never inside string literals, quoted identifiers, PostgreSQL
dollar quotes or comments. Where those end depends on the dialect, and the text reaches the
driver untouched, so it is read the way each server might read it:

* PostgreSQL: ``'...'`` without backslash escapes (with them for ``E'...'``, and in a
  second reading for ``standard_conforming_strings=off``), ``$tag$...$tag$`` (``$1`` is a
  parameter), nested ``/* */``;
* MySQL/MariaDB, by default and with ANSI_QUOTES or NO_BACKSLASH_ESCAPES: backslash escapes,
  ``#`` comments, ``--`` a comment only before a space or control character; an executable
  ``/*! */`` or ``/*M! */`` comment answers False;
* SQLite: ``[identifiers]`` and ``$name(...)``-style variables, which may swallow quotes.

Backticks quote identifiers in every reading: PostgreSQL has no built-in operator with a
backtick, so text holding one fails there before anything in it runs. A NUL character, or an
unterminated quote or comment where a statement may run, answers False.

In each reading the statements run in order until one that cannot start a statement at all
(its first token after any ``(`` is punctuation, or a SQLite variable): the server rejects
it and stops there (PostgreSQL rejects the whole text). That is what PostgreSQL and SQLite
make of a leading MySQL ``# comment``, and MySQL of the ``*/`` left over from a nested
``/* /* */ */``. The text is read-only when no reading may run a write and at least one
runs a read.

Consequences worth knowing: ``'it\\'s'`` and ``$$it's$$`` are False (the readings disagree
on where the literal ends), as are dollar quotes holding ``;`` or INTO, SQLite
``[identifiers]`` and unquoted column names that spell a write keyword, ``EXPLAIN`` of a
write even without ANALYZE, and a leading ``/* nested /* comment */ text */`` (MySQL reads
``text */ SELECT`` as a statement).

Side effects inside a SELECT (``nextval()``, ``pg_advisory_lock()``, ``GET_LOCK()``, a
volatile user function) cannot be seen in the text: callers pass ``idempotent=False`` for
those. The scan walks the text once per reading with anchored or forward-only patterns, so it
is O(n) and never raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal, NamedTuple, TypeAlias

__all__ = ["is_read_only", "may_replay"]

_Token: TypeAlias = tuple[str, str]  # (kind, text); a word's text is upper-cased
_WORD, _PUNCT, _LITERAL, _VARIABLE = "word", "punct", "literal", "variable"
_LIT: _Token = (_LITERAL, "")
_VAR: _Token = (_VARIABLE, "")  # SQLite's $x @x :x #x
_OPEN: _Token = (_PUNCT, "(")
_CLOSE: _Token = (_PUNCT, ")")
_COMMA: _Token = (_PUNCT, ",")
_END: _Token = (_PUNCT, ";")
_UNSAFE: _Token = ("unsafe", "")

_READ_ONLY_STARTS = frozenset({"SELECT", "SHOW", "VALUES", "TABLE", "WITH"})
_EXPLAIN_STARTS = frozenset({"EXPLAIN", "DESCRIBE", "DESC"})
_DATA_MODIFYING = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE"})
_ANALYZE = frozenset({"ANALYZE", "ANALYSE"})
_FALSE = frozenset({"FALSE", "OFF", "0"})  # PostgreSQL's defGetBoolean

_ASCII_SPACE = re.compile(r"[ \t\n\r\f\v]+")
_ANY_SPACE = re.compile(r"\s+")
_PG_EOL = re.compile(r"[\n\r]")
_EOL = re.compile(r"\n")
# PostgreSQL: `$` continues an identifier; a number ends before letters or `$` (`1$$x$$` is
# the number 1 and a dollar quote).
_PG_WORD = re.compile(r"[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*|[0-9][0-9_]*")
# MySQL: whether a non-ASCII space separates words depends on the connection's charset, so
# it does (more words only ever finds more keywords).
_MY_WORD = re.compile(r"(?:[A-Za-z0-9_$]|[^\x00-\x7f\s])+")
# SQLite: `$x` is a variable, `x$` a word.
_LITE_WORD = re.compile(r"[A-Za-z0-9_\x80-\U0010ffff][A-Za-z0-9_$\x80-\U0010ffff]*")
_LITE_ID_CHARS = re.compile(r"[A-Za-z0-9_$\x80-\U0010ffff]+")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z0-9_\x80-\U0010ffff]*)?\$")
_NESTED_COMMENT = re.compile(r"/\*|\*/")
_LITE_VAR_PAREN_END = re.compile(r"[ \t\n\v\f\r)]")
_QUOTE_STOPS = {
    (quote, backslash): re.compile("[" + re.escape(quote) + ("\\\\" if backslash else "") + "]")
    for quote in "'\"`"
    for backslash in (False, True)
}


class _Dialect(NamedTuple):
    """One way of reading SQL text: where its words, literals and comments end."""

    family: str  # "postgresql", "mysql" or "sqlite"
    word: re.Pattern[str]
    space: re.Pattern[str]
    line_end: re.Pattern[str]
    sq_backslash: bool  # backslash escapes in '...'
    dq_backslash: bool  # backslash escapes in "..."


# The last three differ from the first three only in backslash escapes.
_DIALECTS = (
    _Dialect("postgresql", _PG_WORD, _ASCII_SPACE, _PG_EOL, False, False),
    _Dialect("mysql", _MY_WORD, _ANY_SPACE, _EOL, True, True),
    _Dialect("sqlite", _LITE_WORD, _ASCII_SPACE, _EOL, False, False),
    _Dialect("postgresql", _PG_WORD, _ASCII_SPACE, _PG_EOL, True, False),  # legacy strings
    _Dialect("mysql", _MY_WORD, _ANY_SPACE, _EOL, True, False),  # ANSI_QUOTES
    _Dialect("mysql", _MY_WORD, _ANY_SPACE, _EOL, False, False),  # NO_BACKSLASH_ESCAPES
)


def is_read_only(sql: str) -> bool:
    """True when every statement in `sql` is read-only by its leading keyword.

    The rules, and why they err towards False, are in this module's docstring. Never raises.
    """
    if not isinstance(sql, str) or "\x00" in sql:  # a NUL ends the text early for some drivers
        return False
    runs_a_read = False
    for dialect in _DIALECTS if "\\" in sql else _DIALECTS[:3]:
        outcome = _outcome(sql, dialect)
        if outcome == "may write":
            return False
        runs_a_read = runs_a_read or outcome == "reads"
    return runs_a_read


def may_replay(*, unsent: bool, sql: str | None, idempotent: bool | None) -> bool:
    """The replay decision for an operation whose connection was lost.

    unsent: the failure provably happened before the request reached the wire -> always True.
    idempotent True -> True; idempotent False -> False (even for a SELECT) unless unsent;
    idempotent None -> is_read_only(sql) (sql None -> False).
    """
    if unsent:
        return True
    if idempotent is not None:
        return bool(idempotent)
    return sql is not None and is_read_only(sql)


def _outcome(sql: str, dialect: _Dialect) -> Literal["reads", "nothing", "may write"]:
    """What a server of `dialect` would run: only reads, nothing at all, or maybe a write.

    Stops reading early where the answer is known, so a long INSERT costs little.
    """
    outcome: Literal["reads", "nothing"] = "nothing"
    tokens: list[_Token] = []
    start = 0  # where the leading keyword is (or will be) in `tokens`
    for token in _tokens(sql, dialect):
        if token == _UNSAFE:
            return "may write"
        if token != _END:
            if len(tokens) == start:
                if token == _OPEN:
                    start += 1
                elif token[0] in (_PUNCT, _VARIABLE):
                    return outcome  # no statement starts so: the server rejects it and stops
                elif token[0] != _WORD:
                    return "may write"  # MariaDB might take a quoted identifier for a label
                elif token[1] not in _READ_ONLY_STARTS and token[1] not in _EXPLAIN_STARTS:
                    return "may write"
            tokens.append(token)
        elif start < len(tokens):
            if not _statement_is_read_only(tokens, start, dialect.family):
                return "may write"
            outcome = "reads"
            tokens, start = [], 0
        elif tokens:
            return outcome  # nothing but "(": rejected as above
    return outcome


def _tokens(sql: str, d: _Dialect) -> Iterator[_Token]:
    """The tokens of `sql` as `d` reads it, with _END after each statement.

    Comments vanish; literals and quoted identifiers become opaque tokens; words are
    upper-cased (ASCII only: Python upper-cases the long s of ``"\\u017felect"`` to
    ``"SELECT"``, no server does). An unterminated literal or comment, or a MySQL
    executable comment, yields _UNSAFE and ends the stream.
    """
    pg, my, lite = d.family == "postgresql", d.family == "mysql", d.family == "sqlite"
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace() and (m := d.space.match(sql, i)):
            i = m.end()
        elif m := d.word.match(sql, i):
            i = m.end()
            word = m.group()
            if pg and word in ("E", "e") and sql.startswith("'", i):
                i = _skip_quoted(sql, i, "'", backslash=True)
                yield _LIT
            else:
                yield (_WORD, word.upper() if word.isascii() else word)
        elif (
            c == "-" and sql.startswith("-", i + 1) and (not my or _mysql_dash_comment(sql, i))
        ) or (c == "#" and my):
            m = d.line_end.search(sql, i)
            i = n if m is None else m.end()
        elif c == "/" and sql.startswith("*", i + 1):
            if my and (sql.startswith("!", i + 2) or sql[i + 2 : i + 4].upper() == "M!"):
                i = -1  # MySQL runs the text of /*! */ and MariaDB that of /*M! */
            else:
                i = _skip_block_comment(sql, i, nested=pg)
        elif c in "'\"`":
            backslash = d.sq_backslash if c == "'" else d.dq_backslash if c == '"' else False
            i = _skip_quoted(sql, i, c, backslash)
            yield _LIT
        elif c == "[" and lite:
            end = sql.find("]", i + 1)
            i = -1 if end < 0 else end + 1
            yield _LIT
        elif c == "$" and pg and (m := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(m.group(), m.end())
            i = -1 if end < 0 else end + len(m.group())
            yield _LIT
        elif c in "$@:#" and lite:
            i = _skip_sqlite_variable(sql, i)
            yield _VAR
        else:
            yield _END if c == ";" else (_PUNCT, c)
            i += 1
        if i < 0:
            yield _UNSAFE
            return
    yield _END


def _mysql_dash_comment(sql: str, i: int) -> bool:
    """MySQL reads ``--`` as a comment only before a space or control character (or the end)."""
    after = sql[i + 2 : i + 3]
    return after <= " " or after == "\x7f"


def _skip_quoted(sql: str, start: int, quote: str, backslash: bool) -> int:
    """The index after the literal opened at `start` (doubled quotes escape), or -1."""
    stops = _QUOTE_STOPS[quote, backslash]
    pos = start + 1
    while (m := stops.search(sql, pos)) is not None:
        k = m.start()
        if sql[k] == "\\" or sql.startswith(quote, k + 1):
            pos = k + 2
        else:
            return k + 1
    return -1


def _skip_block_comment(sql: str, start: int, *, nested: bool) -> int:
    """The index after the comment opened at `start`, or -1 when it never closes."""
    if not nested:
        end = sql.find("*/", start + 2)
        return -1 if end < 0 else end + 2
    depth, pos = 1, start + 2
    while depth:
        m = _NESTED_COMMENT.search(sql, pos)
        if m is None:
            return -1
        depth += 1 if m.group() == "/*" else -1
        pos = m.end()
    return pos


def _skip_sqlite_variable(sql: str, start: int) -> int:
    """The index after a SQLite ``$ @ : #`` variable, as sqlite3GetToken() scans it.

    ``$name(...)`` runs to the next space or ``)`` whatever it holds, quotes included.
    """
    pos, named = start + 1, False
    while True:
        m = _LITE_ID_CHARS.match(sql, pos)
        if m:
            pos, named = m.end(), True
        if named and sql.startswith("(", pos):
            m = _LITE_VAR_PAREN_END.search(sql, pos + 1)
            return len(sql) if m is None else m.end() if m.group() == ")" else m.start()
        if not sql.startswith("::", pos):
            return pos
        pos += 2


def _statement_is_read_only(tokens: list[_Token], start: int, family: str) -> bool:
    """Judge one statement whose leading keyword is ``tokens[start]``."""
    first = tokens[start][1]
    if first in _EXPLAIN_STARTS:
        if not _explain_runs_nothing(tokens, start + 1):
            return False
    elif first not in _READ_ONLY_STARTS:
        return False
    # Only PostgreSQL nests a data-modifying statement in a query (a CTE, itself only allowed
    # at the top of a WITH). Elsewhere such words can only matter after WITH; skipping them
    # keeps `SELECT $$ delete $$` (words to MySQL) read-only.
    scan_dml = family == "postgresql" or first == "WITH"
    for k, (kind, text) in enumerate(tokens):
        if kind != _WORD:
            continue
        if text == "INTO":
            return False
        if scan_dml and text in _DATA_MODIFYING and not _is_lock_or_function(tokens, k):
            return False
    return True


def _is_lock_or_function(tokens: list[_Token], k: int) -> bool:
    """True for the UPDATE of ``FOR [NO KEY] UPDATE`` and the REPLACE of ``replace(...)``."""
    if tokens[k][1] == "REPLACE":
        return tokens[k + 1 : k + 2] == [_OPEN]
    if tokens[k][1] == "UPDATE":
        before = [text if kind == _WORD else "" for kind, text in tokens[max(0, k - 3) : k]]
        return before[-1:] == ["FOR"] or before == ["FOR", "NO", "KEY"]
    return False


def _explain_runs_nothing(tokens: list[_Token], j: int) -> bool:
    """False when EXPLAIN's options (`tokens` from `j`) ask it to run the statement."""
    if tokens[j : j + 1] == [_OPEN]:  # PostgreSQL's (option [value], ...)
        options: list[list[_Token]] = [[]]
        depth = 1
        j += 1
        while depth:
            if j == len(tokens):
                return False
            token = tokens[j]
            j += 1
            if token == _OPEN:
                depth += 1
            elif token == _CLOSE:
                depth -= 1
            if depth == 1 and token == _COMMA:
                options.append([])
            elif depth:
                options[-1].append(token)
        for option in options:
            if not option or option[0][0] != _WORD:
                return False  # ("analyze") is an option too
            if option[0][1] in _ANALYZE:
                if len(option) != 2 or option[1][0] != _WORD or option[1][1] not in _FALSE:
                    return False
            elif _mentions_analyze(option):
                return False
    return not _mentions_analyze(tokens[j:])


def _mentions_analyze(tokens: list[_Token]) -> bool:
    return any(kind == _WORD and text in _ANALYZE for kind, text in tokens)
