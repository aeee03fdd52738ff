"""Reading SQL text the way a server would: statements, words, literals, calls, operators.

The replay rules (``_replay.py``) judge a statement by what it may run, so they need to know
where its words, literals and comments end, and that depends on the dialect. The text reaches
the driver untouched, so it is read the way the backend's server might read it, once per
server setting that changes the reading:

* PostgreSQL: ``'...'`` without backslash escapes (with them for ``E'...'``, and in a
  second reading for ``standard_conforming_strings=off``), ``$tag$...$tag$`` (``$1`` is a
  parameter), nested ``/* */``; operator characters run together into one operator token;
* MySQL/MariaDB, by default and with ANSI_QUOTES or NO_BACKSLASH_ESCAPES: backslash escapes,
  ``#`` comments, ``--`` a comment only before a space or control character; an executable
  ``/*! */`` or ``/*M! */`` comment makes the text unsafe (anything may run);
* SQLite: ``[identifiers]`` and ``$name(...)``-style variables, which may swallow quotes.

Backticks quote identifiers in every reading. Readings that differ only in backslash escapes
are made only when the text holds a backslash. An unterminated quote or comment makes a
reading unsafe.

In each reading the statements run in order until one that cannot start a statement at all
(its first token after any ``(`` is punctuation, an operator or a SQLite variable): the
server rejects it and stops there. That is what PostgreSQL and SQLite make of a leading MySQL
``# comment``, and MySQL of the ``*/`` left over from a nested ``/* /* */ */``.

The scan walks the text once per reading with anchored or forward-only patterns: O(n), and it
never raises.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple, TypeAlias

__all__ = ["FAMILIES", "Reading", "Statement", "readings"]

Token: TypeAlias = tuple[str, str]  # (kind, text); a word's text is upper-cased (ASCII only)
WORD, PUNCT, LITERAL, VARIABLE, OPERATOR = "word", "punct", "literal", "variable", "operator"
LIT: Token = (LITERAL, "")
VAR: Token = (VARIABLE, "")  # SQLite's $x @x :x #x
OPEN: Token = (PUNCT, "(")
CLOSE: Token = (PUNCT, ")")
COMMA: Token = (PUNCT, ",")
END: Token = (PUNCT, ";")
UNSAFE: Token = ("unsafe", "")

FAMILIES = ("postgresql", "mysql", "sqlite")

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
# PostgreSQL's operator characters (scan.l `op_chars`); a run stops before a comment start.
_PG_OPERATOR = re.compile(r"(?:[~!@#^&|`?+*%<>=]|-(?!-)|/(?!\*))+")
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


# Per family: the default reading first, then those a server setting may switch to; the
# latter differ only in backslash escapes.
_READINGS: dict[str, tuple[_Dialect, ...]] = {
    "postgresql": (
        _Dialect("postgresql", _PG_WORD, _ASCII_SPACE, _PG_EOL, False, False),
        _Dialect("postgresql", _PG_WORD, _ASCII_SPACE, _PG_EOL, True, False),  # legacy strings
    ),
    "mysql": (
        _Dialect("mysql", _MY_WORD, _ANY_SPACE, _EOL, True, True),
        _Dialect("mysql", _MY_WORD, _ANY_SPACE, _EOL, True, False),  # ANSI_QUOTES
        _Dialect("mysql", _MY_WORD, _ANY_SPACE, _EOL, False, False),  # NO_BACKSLASH_ESCAPES
    ),
    "sqlite": (_Dialect("sqlite", _LITE_WORD, _ASCII_SPACE, _EOL, False, False),),
}


class Statement(NamedTuple):
    """One statement of a reading: its tokens, and where its leading keyword is."""

    tokens: list[Token]
    start: int  # tokens[start] is the leading keyword (after any opening parentheses)

    @property
    def leading(self) -> str | None:
        """The leading keyword, upper-cased; None when the statement starts with a quoted
        name (MariaDB may take it for a label: anything may follow)."""
        kind, text = self.tokens[self.start]
        return text if kind == WORD else None

    def word_after(self, k: int) -> str | None:
        """The word at ``start + k``, or None."""
        i = self.start + k
        if i < len(self.tokens) and self.tokens[i][0] == WORD:
            return self.tokens[i][1]
        return None


class Reading(NamedTuple):
    """What a server of one setting would run: statements in order, or anything at all."""

    statements: list[Statement]
    unsafe: bool  # an unterminated literal or comment, or MySQL executable comment


def readings(sql: str, family: str) -> list[Reading]:
    """Every way a server of ``family`` may read ``sql`` (see the module docstring)."""
    dialects = _READINGS[family]
    if "\\" not in sql:
        dialects = dialects[:1]
    return [_read(sql, d) for d in dialects]


def _read(sql: str, dialect: _Dialect) -> Reading:
    statements: list[Statement] = []
    tokens: list[Token] = []
    start = 0  # where the leading keyword is (or will be) in `tokens`
    for token in _tokens(sql, dialect):
        if token == UNSAFE:
            return Reading(statements, True)
        if token != END:
            if len(tokens) == start:
                if token == OPEN:
                    start += 1
                elif token[0] in (PUNCT, VARIABLE, OPERATOR):
                    return Reading(statements, False)  # the server rejects it and stops
            tokens.append(token)
        elif start < len(tokens):
            statements.append(Statement(tokens, start))
            tokens, start = [], 0
        elif tokens:
            return Reading(statements, False)  # nothing but "(": rejected as above
    return Reading(statements, False)


def _tokens(sql: str, d: _Dialect) -> Iterator[Token]:
    """The tokens of `sql` as `d` reads it, with END after each statement.

    Comments vanish; literals and quoted identifiers become opaque tokens; words are
    upper-cased (ASCII only: Python upper-cases the long s of ``"\\u017felect"`` to
    ``"SELECT"``, no server does). An unterminated literal or comment, or a MySQL
    executable comment, yields UNSAFE and ends the stream.
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
                yield LIT
            else:
                yield (WORD, word.upper() if word.isascii() else word)
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
            yield LIT
        elif c == "[" and lite:
            end = sql.find("]", i + 1)
            i = -1 if end < 0 else end + 1
            yield LIT
        elif c == "$" and pg and (m := _DOLLAR_TAG.match(sql, i)):
            end = sql.find(m.group(), m.end())
            i = -1 if end < 0 else end + len(m.group())
            yield LIT
        elif c in "$@:#" and lite:
            i = _skip_sqlite_variable(sql, i)
            yield VAR
        elif pg and (m := _PG_OPERATOR.match(sql, i)):
            i = m.end()
            yield (OPERATOR, m.group())
        else:
            yield END if c == ";" else (PUNCT, c)
            i += 1
        if i < 0:
            yield UNSAFE
            return
    yield END


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
