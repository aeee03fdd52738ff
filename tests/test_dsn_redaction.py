"""A password never shows, whatever characters it holds; DSNs that cannot be parsed one way
only are refused, with the percent-encoding that makes them unambiguous."""

from __future__ import annotations

import string
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilientdb import BackendConfig, ConfigurationError, Supervisor
from resilientdb.config import parse_dsn, redact

AMBIGUOUS = [
    # (dsn, password, the encoding the message must name)
    ("postgresql://u:12#ab@host/db", "12#ab", "%23"),
    ("postgresql://u:ab/cd@host/db", "ab/cd", "%2F"),
    ("postgresql://u:12/cd@host/db", "12/cd", "%2F"),
    ("mysql://u:a?b@h/db", "a?b", "%3F"),
    ("mysql://u:pa?ss/wo#rd@h:3306/db", "pa?ss/wo#rd", "%23"),
    ("postgresql://u:p@ss@host/db", "p@ss", "%40"),
    ("postgresql://u:secret@host/db#frag", "secret", "%23"),
    ("postgresql://u:secret@host/db?application_name=me@there", "secret", "%40"),
]


@pytest.mark.parametrize(("dsn", "password", "encoding"), AMBIGUOUS)
def test_ambiguous_dsn_is_refused_without_showing_the_password(
    dsn: str, password: str, encoding: str
) -> None:
    for build in (parse_dsn, Supervisor, BackendConfig):
        with pytest.raises(ConfigurationError) as info:
            build(dsn)
        message = str(info.value)
        assert password not in message, message
        assert "percent-encode" in message and encoding in message, message
        assert "***" in message  # the DSN is shown, redacted


@pytest.mark.parametrize(("dsn", "password", "encoding"), AMBIGUOUS)
def test_redact_hides_a_password_with_delimiters(dsn: str, password: str, encoding: str) -> None:
    assert password not in redact(dsn)


def test_redact_of_ambiguous_dsns_keeps_the_user_and_host() -> None:
    assert redact("postgresql://u:12#ab@host/db") == "postgresql://u:***@host/db"
    assert redact("postgresql://u:ab/cd@host/db") == "postgresql://u:***@host/db"
    assert redact("mysql://u:a?b@h/db") == "mysql://u:***@h/db"
    assert redact("u:secret@host/db") == "u:***@host/db"  # no scheme: still hidden
    assert redact("POSTGRESQL://u:x/y@h/db") == "POSTGRESQL://u:***@h/db"


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://app:pw@db:5432/app", "postgresql://app:***@db:5432/app"),
        (
            "postgres://app:p%23w@db/app?sslmode=require",
            "postgres://app:***@db/app?sslmode=require",
        ),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("postgresql://app:pw@[::1]:5432/app", "postgresql://app:***@[::1]:5432/app"),
        ("postgresql://:pw@db/app", "postgresql://:***@db/app"),
        (
            "mysql://u:pw@h/db?password=x&charset=utf8",
            "mysql://u:***@h/db?password=***&charset=utf8",
        ),
        ("postgresql://db/app?sslpassword=x", "postgresql://db/app?sslpassword=***"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        ("sqlite:////abs/x.db", "sqlite:////abs/x.db"),
        ("sqlite:///:memory:", "sqlite:///:memory:"),
        ("sqlite:///dir/a:b@c.db?mode=ro", "sqlite:///dir/a:b@c.db?mode=ro"),
        ("not a url at all", "not a url at all"),
    ],
)
def test_well_formed_dsns_redact_as_before(dsn: str, expected: str) -> None:
    assert redact(dsn) == expected


def test_sqlite_urls_still_parse() -> None:
    assert parse_dsn("sqlite:///x.db").path == "x.db"
    assert parse_dsn("sqlite:////abs/x.db").path == "/abs/x.db"
    assert parse_dsn("sqlite:///:memory:").path == ":memory:"
    assert parse_dsn("sqlite:///dir/a@b.db").path == "dir/a@b.db"
    assert parse_dsn("sqlite:///x%23y.db").path == "x#y.db"
    with pytest.raises(ConfigurationError, match="%23"):
        parse_dsn("sqlite:///x#y.db")  # was silently the file 'x'


def test_percent_encoded_delimiters_parse_to_the_real_password() -> None:
    d = parse_dsn("postgresql://u%3Ax:12%23a%2Fb%3Fc%40d@host:5432/db")
    assert (d.user, d.password, d.host, d.port) == ("u:x", "12#a/b?c@d", "host", 5432)


# --- property: no password of printable characters ever shows ------------------------------------

# Every generated password holds one of these: they appear in no DSN skeleton below and in no
# message, so a leak of any part around them is seen even where repr() escapes the rest, and
# a password that merely happens to spell part of the skeleton ("ql:", "/db") is no false alarm.
MARKERS = "~^`|$"
_chars = st.sampled_from(list(string.printable) + list("#/?@:") * 6)
_passwords = st.builds(
    lambda a, m, b: a + m + b, st.text(_chars, max_size=12), st.sampled_from(MARKERS),
    st.text(_chars, max_size=12),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(password=_passwords, scheme=st.sampled_from(["postgresql", "mysql"]))
def test_no_password_ever_shows(password: str, scheme: str) -> None:
    port = 5432 if scheme == "postgresql" else 3306
    dsn = f"{scheme}://u:{password}@h:{port}/db"
    texts = [redact(dsn)]
    assert texts[0] == f"{scheme}://u:***@h:{port}/db"
    try:
        parsed = parse_dsn(dsn)
    except ConfigurationError as exc:
        texts.append(str(exc))
    else:
        texts += [str(parsed), repr(parsed), repr(BackendConfig(dsn))]
    for text in texts:
        assert password not in text, text
        assert not set(MARKERS) & set(text), text


# --- the command line --------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "resilientdb.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_with_an_unencoded_hash_in_the_password() -> None:
    proc = run_cli("check", "postgresql://u:12#ab@127.0.0.1:1/db", "--timeout", "2")
    assert proc.returncode == 2, proc.stderr
    assert "12#ab" not in proc.stdout + proc.stderr
    assert "%23" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["check", "wait", "watch"])
def test_argument_errors_never_print_the_password(command: str) -> None:
    dsn = "postgresql://u:Sup3r-secret@127.0.0.1:1/db"
    proc = run_cli(command, dsn, dsn)  # one too many: argparse names the extra argument
    assert proc.returncode == 2
    assert "Sup3r-secret" not in proc.stdout + proc.stderr
